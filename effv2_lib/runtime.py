"""Where code runs: device choice, seeding, smoke mode, hardware description, throughput.

The notebooks, the trainer and the benchmarks share these so that "smoke mode"
(``EFFV2_SMOKE=1``, set by ``make test``) and the hardware a figure was measured
on mean the same thing everywhere.
"""

from __future__ import annotations

import copy
import os
import platform
import random
import time

import numpy as np
import torch
from torch import nn

from ._checks import check_int

__all__ = ["is_smoke", "pick_device", "seed_everything", "derived_seed", "hardware", "count_parameters",
           "synchronize", "train_throughput"]


def is_smoke() -> bool:
    """True when ``EFFV2_SMOKE`` is set to 1/true/yes: every heavy step shrinks to seconds."""
    return os.environ.get("EFFV2_SMOKE", "").strip().lower() in {"1", "true", "yes"}


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """``preference`` if given ("cpu", "cuda", "cuda:1", "mps"), else CUDA, else MPS, else CPU."""
    if preference is not None:
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {preference!r} was asked for, but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); returns a CPU generator seeded the same."""
    seed = check_int("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers, e.g. (seed, purpose, epoch, rank).

    Seeds such as seed + epoch collide across purposes and ranks (seed 1 epoch 0 equals seed 0
    epoch 1); SeedSequence hashes the whole tuple, so distinct tuples give unrelated streams.
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def hardware(device: torch.device | str | None = None) -> dict[str, str | int]:
    """What a measurement ran on: device name, CPU count, torch and Python versions."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA, MPS, XPU); a no-op on the CPU. Timings need it on
    an accelerator, or they time the queueing of the work, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def train_throughput(
    model: nn.Module,
    image_size: int,
    batch_size: int = 64,
    steps: int = 5,
    warmup: int = 2,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    bf16: bool = False,
    num_classes: int | None = None,
) -> float:
    """Training images per second: forward, backward and an SGD step on random data.

    Measures the network alone (the data pipeline is timed in ``effv2_lib.bench_data``).
    ``warmup`` steps run untimed first (cuDNN autotuning, allocator warm-up). The
    steps train a copy, so ``model`` itself is left as it was.
    """
    for name, value, low in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                             ("steps", steps, 1), ("warmup", warmup, 0)):
        check_int(name, value, low)
    device = torch.device(device) if device is not None else pick_device()
    model = copy.deepcopy(model).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if num_classes is None:
        num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    x = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)
