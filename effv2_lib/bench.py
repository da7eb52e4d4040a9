"""Training throughput per stage size: our EfficientNetV2-CIFAR against torchvision's blocks.

Progressive learning pays off because small images train faster (Tan & Le 2021, Section 4,
Table 2: a smaller training size allows more images per second). This benchmark measures
training images per second (forward, backward, SGD step on random data, with
`effv2_lib.runtime.train_throughput`) at each stage size of the CIFAR schedule, for

* ours: `effv2_lib.model.build_model(name)`, and
* torchvision: the same stage table fed to ``torchvision.models.efficientnet.EfficientNet`` as
  FusedMBConvConfig / MBConvConfig rows (same head width, BatchNorm eps 1e-3, stochastic depth),
  with the stem stride set to ours (1 for CIFAR) after construction, since torchvision's stem
  always has stride 2.

Both networks have the same parameters and layers, so the ratio shows what our block
implementation costs or saves against torchvision's. It is a benchmark, not a test: figures
depend on the machine and nothing here asserts a speed.

Run::

    python -m effv2_lib.bench                              # GPU: batch 512, bf16, channels_last
    python -m effv2_lib.bench --device cpu --sizes 16 32   # CPU: small batch, a few steps
    python -m effv2_lib.bench --compile --json bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._cli import int_at_least, one_line_errors, output_path
from .model import MODEL_SPECS, EfficientNetV2, build_model
from .runtime import count_parameters, hardware, pick_device, train_throughput

__all__ = ["torchvision_equivalent", "CompiledForward", "run_bench", "main"]


def torchvision_equivalent(model: EfficientNetV2, stochastic_depth_prob: float = 0.1) -> nn.Module:
    """torchvision's EfficientNet built from `model`'s stage table, stem stride matched."""
    from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig

    if not isinstance(model, EfficientNetV2):
        raise TypeError(f"model must be an EfficientNetV2, got {type(model).__name__}")
    spec = model.spec
    rows = [(FusedMBConvConfig if s.block == "fused" else MBConvConfig)(
        s.expand_ratio, s.kernel_size, s.stride, s.in_channels, s.out_channels, s.num_layers)
        for s in spec.stages]
    network = EfficientNet(rows, dropout=model.classifier[0].p, stochastic_depth_prob=stochastic_depth_prob,
                           num_classes=model.classifier[1].out_features,
                           norm_layer=partial(nn.BatchNorm2d, eps=1e-3), last_channel=spec.head_channels)
    stem_conv = network.features[0][0]  # Conv2dNormActivation -> its Conv2d, built with stride 2
    stem_conv.stride = (spec.stem_stride, spec.stem_stride)
    return network


class CompiledForward(nn.Module):
    """Wraps a model so that its forward is torch.compile'd on first use (after any deepcopy)."""

    def __init__(self, model: nn.Module, mode: str = "default") -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.compiled = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            self.compiled = torch.compile(self.model, mode=self.mode, dynamic=False)
        return self.compiled(x)


def run_bench(model_name: str = "cifar", sizes: tuple[int, ...] = (16, 20, 24, 28, 32), *,
              batch_size: int = 512, steps: int = 20, warmup: int = 5, device: str | torch.device | None = None,
              bf16: bool = False, channels_last: bool = False, compile: bool = False,
              print_rows: bool = True) -> dict[str, Any]:
    """Measure both networks at every size; returns the figures (see `main` for the JSON)."""
    if model_name not in ("cifar", "cifar-tiny"):
        raise ValueError(f"model_name must be 'cifar' or 'cifar-tiny' (stem stride 1, CIFAR sizes), got {model_name!r}")
    device = pick_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    ours = build_model(model_name, num_classes=10, stochastic_depth_prob=0.1)
    theirs = torchvision_equivalent(ours, stochastic_depth_prob=0.1)
    params = {"ours": count_parameters(ours), "torchvision": count_parameters(theirs)}
    if compile and warmup < 1:
        raise ValueError("compile needs warmup >= 1 (the compilation happens in the first step)")
    networks = {"ours": ours, "torchvision": theirs}
    if compile:
        networks = {name: CompiledForward(net) for name, net in networks.items()}
    rows = []
    if print_rows:
        print(f"{'size':>5} {'ours img/s':>12} {'torchvision img/s':>18} {'ratio':>7}" +
              ("  compile s (ours / tv)" if compile else ""), flush=True)
    for size in sizes:
        row: dict[str, Any] = {"size": size}
        for name, network in networks.items():
            started = time.perf_counter()
            rate = train_throughput(network, size, batch_size=batch_size, steps=steps, warmup=warmup,
                                    device=device, channels_last=channels_last, bf16=bf16)
            row[name] = rate
            if compile:  # the call's time less the timed steps: compilation plus warm-up steps
                row[f"{name}_setup_s"] = time.perf_counter() - started - batch_size * steps / rate
        row["ratio"] = row["ours"] / row["torchvision"]
        rows.append(row)
        if print_rows:
            extra = f"  {row['ours_setup_s']:.1f} / {row['torchvision_setup_s']:.1f}" if compile else ""
            print(f"{size:>5} {row['ours']:>12.0f} {row['torchvision']:>18.0f} {row['ratio']:>7.2f}{extra}", flush=True)
    return {"model": MODEL_SPECS["cifar"].name if model_name == "cifar" else ours.spec.name,
            "params": params, "hardware": hardware(device), "batch_size": batch_size, "steps": steps,
            "warmup": warmup, "bf16": bf16, "channels_last": channels_last, "compile": compile, "rows": rows}


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m effv2_lib.bench",
        description="Training throughput (images/s) per image size for our CIFAR EfficientNetV2 and the same "
                    "architecture built from torchvision's EfficientNet blocks, with the ratio.")
    parser.add_argument("--model", default="cifar", choices=["cifar", "cifar-tiny"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 20, 24, 28, 32], help="image sizes in px")
    parser.add_argument("--batch-size", type=int_at_least(1), default=None, help="default: 512 on CUDA, 32 on CPU")
    parser.add_argument("--steps", type=int_at_least(1), default=None,
                        help="timed steps per size (default: 20 CUDA, 2 CPU)")
    parser.add_argument("--warmup", type=int_at_least(0), default=None,
                        help="untimed steps first (default: 5 CUDA, 1 CPU)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC memory format (default: on for CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks (timed after warm-up)")
    parser.add_argument("--json", type=output_path, default=None, metavar="OUT",
                        help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    settings = dict(
        batch_size=args.batch_size if args.batch_size is not None else (512 if cuda else 32),
        steps=args.steps if args.steps is not None else (20 if cuda else 2),
        warmup=args.warmup if args.warmup is not None else (5 if cuda else 1),
        bf16=cuda if args.bf16 is None else args.bf16,
        channels_last=cuda if args.channels_last is None else args.channels_last,
    )
    info = hardware(device)
    print(f"{args.model}: device {info['device']} ({info['device_name']}), torch {info['torch']}, "
          f"batch {settings['batch_size']}, {settings['steps']} timed steps after {settings['warmup']}, "
          f"bf16 {settings['bf16']}, channels_last {settings['channels_last']}, compile {args.compile}", flush=True)
    result = run_bench(args.model, tuple(args.sizes), device=device, compile=args.compile, **settings)
    print(f"parameters: ours {result['params']['ours']:,}, torchvision {result['params']['torchvision']:,}; "
          f"ratio = ours / torchvision images per second")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
