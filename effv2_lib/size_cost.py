"""Table 2 in miniature: what a larger training image costs (Tan & Le 2021, Section 3.2).

The paper's Table 2 trains EfficientNet-B6 at 512 and at 380 px: the smaller size needs less
memory, so a larger batch fits, and trains faster (up to 2.2x the throughput) at no loss of
accuracy. That is the premise of progressive learning: small images early buy cheap epochs
and large batches. Here the same measurement for any network of the kit,
at CIFAR sizes, on the machine at hand, at one fixed batch:

- training images/s (forward, backward and an SGD step on random data, median of repeats:
  `runtime.measure_train_throughput`);
- memory: peak allocated on a CUDA device (``torch.cuda.max_memory_allocated``, reset before each
  size); on a Linux CPU, the process's peak resident set (VmHWM in /proc/self/status, reset
  through /proc/self/clear_refs), which includes everything the process holds (the interpreter,
  torch, the data), so compare its growth, not its level; elsewhere not measured;
- the estimate `runtime.estimate_training_memory` makes from the tensors autograd saves,
  and from it the largest power-of-two batch that fits in half the device's memory, or in a
  `memory_limit` you give (`runtime.fit_batch_size`): how the batch must shrink as the image grows.

    python -m effv2_lib.size_cost --model cifar-tiny --sizes 16 24 32 48 64 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ._checks import check_int
from ._cli import int_at_least, one_line_errors
from .model import build_model, check_model_name
from .runtime import (
    Throughput,
    device_memory,
    estimate_training_memory,
    fit_batch_size,
    hardware,
    measure_train_throughput,
    pick_device,
    synchronize,
)

__all__ = ["SizeCost", "peak_memory_kind", "measure_size_cost", "format_table", "main"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_GIB = 2 ** 30


@dataclass(frozen=True)
class SizeCost:
    """One image size's row: throughput at the fixed batch, the measured peak memory (bytes, or
    None where this device has no measure), the estimated training memory, and the largest batch
    that fits the limit by the estimate."""

    image_size: int
    batch_size: int
    throughput: Throughput
    peak_memory: int | None
    estimated_memory: int
    largest_batch: int


def _peak_resident() -> int | None:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def peak_memory_kind(device: torch.device) -> str | None:
    """What `measure_size_cost` reports as peak memory on `device`: "allocated" (CUDA),
    "resident" (a Linux CPU, where the peak can be reset), or None (not measured)."""
    if device.type == "cuda":
        return "allocated"
    if device.type == "cpu" and _STATUS.is_file() and _CLEAR_REFS.is_file():
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size
        except OSError:
            return None
        return "resident"
    return None


def _reset_peak(device: torch.device, kind: str | None) -> None:
    if kind == "allocated":
        torch.cuda.reset_peak_memory_stats(device)
    elif kind == "resident":
        _CLEAR_REFS.write_text("5")


def _read_peak(device: torch.device, kind: str | None) -> int | None:
    if kind == "allocated":
        return int(torch.cuda.max_memory_allocated(device))
    return _peak_resident() if kind == "resident" else None


def measure_size_cost(model: torch.nn.Module, sizes: list[int] | tuple[int, ...], *, batch_size: int = 128,
                      device: torch.device | str | None = None, memory_limit: int | None = None,
                      steps: int = 3, warmup: int = 1, repeats: int = 3, channels_last: bool = True,
                      max_batch: int = 4096) -> list[SizeCost]:
    """Measure `model` at each of `sizes` (ascending, so memory a smaller size left behind never
    inflates a larger one's peak), at `batch_size`. `memory_limit`: bytes the largest-batch column
    may use (default: half of `runtime.device_memory`)."""
    check_int("batch_size", batch_size, 1)
    if not sizes:
        raise ValueError("sizes must name at least one image size, got none")
    sizes = sorted({check_int("each size", size, 8) for size in sizes})
    device = pick_device(device)
    kind = peak_memory_kind(device)
    fraction = 0.5
    if memory_limit is not None:
        check_int("memory_limit", memory_limit, 1)
        fraction = min(1.0, memory_limit / device_memory(device))
    estimate = estimate_training_memory(model, sizes[0])
    rows = []
    for size in sizes:
        _reset_peak(device, kind)
        throughput = measure_train_throughput(model, size, batch_size=batch_size, steps=steps, warmup=warmup,
                                              repeats=repeats, device=device, channels_last=channels_last)
        synchronize(device)
        rows.append(SizeCost(size, batch_size, throughput, _read_peak(device, kind),
                             estimate.at(size).total(batch_size),
                             fit_batch_size(estimate, size, device, budget_fraction=fraction, max_batch=max_batch)))
    return rows


def format_table(rows: list[SizeCost], kind: str | None) -> str:
    """The rows as a plain-text table: the median throughput with the range of the repeats, and
    relative to the first size; the memory figures; the largest batch."""
    peak = {"allocated": "peak allocated", "resident": "peak resident", None: "peak (not measured)"}[kind]
    lines = [f"{'size':>5} {'img/s':>8} {'range':>11} {'x first':>8} {peak + ' GiB':>20} {'estimate GiB':>13} "
             f"{'largest batch':>14}"]
    first = rows[0]
    for row in rows:
        measured = "-" if row.peak_memory is None else f"{row.peak_memory / _GIB:.2f}"
        spread = f"{row.throughput.low:.0f}-{row.throughput.high:.0f}"
        lines.append(f"{row.image_size:>5} {row.throughput.median:>8.0f} {spread:>11} "
                     f"{row.throughput.median / first.throughput.median:>8.2f} {measured:>20} "
                     f"{row.estimated_memory / _GIB:>13.2f} {row.largest_batch:>14}")
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m effv2_lib.size_cost",
        description="Training throughput and memory against the image size at a fixed batch, and the largest "
                    "batch that fits (the paper's Table 2 in miniature).")
    parser.add_argument("--model", default="cifar-tiny", type=check_model_name,
                        help="cifar, cifar-tiny, resnet20, arch:CODES, ... (default cifar-tiny)")
    parser.add_argument("--sizes", type=int_at_least(8), nargs="+", default=[16, 24, 32, 48, 64])
    parser.add_argument("--batch-size", type=int_at_least(1), default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="memory the largest-batch column may use (default: half the device's)")
    parser.add_argument("--repeats", type=int_at_least(1), default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.memory_limit_gib is not None and args.memory_limit_gib <= 0:
        raise ValueError(f"--memory-limit-gib must be > 0, got {args.memory_limit_gib}")
    device = pick_device(args.device)
    model = build_model(args.model, num_classes=10)
    limit = None if args.memory_limit_gib is None else int(args.memory_limit_gib * _GIB)
    rows = measure_size_cost(model, args.sizes, batch_size=args.batch_size, device=device, memory_limit=limit,
                             repeats=args.repeats)
    kind = peak_memory_kind(device)
    print(f"{args.model}, batch {args.batch_size}, on {hardware(device)['device_name']} ({device.type})")
    print(format_table(rows, kind))
    if args.json is not None:
        record = {"model": args.model, "hardware": hardware(device), "peak_memory": kind, "memory_limit": limit,
                  "rows": [{**asdict(row), "throughput": list(row.throughput.samples)} for row in rows]}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
