"""Where code runs: device choice, seeding, the quick check, hardware description, throughput.

The notebooks, the trainer and the benchmarks share these so that the quick check
(``EFFV2_QUICK=1``, set by ``make test``) and the hardware a figure was measured
on mean the same thing everywhere.

Devices are found through ``torch.accelerator`` (torch >= 2.6: CUDA, Apple's MPS, Intel's
XPU alike), with the per-backend calls as a fallback for older torch. Throughput is the
median of several timed repeats, with their spread (`measure_train_throughput`), and
`fit_batch_size` sizes a run from the device's memory so that a laptop GPU does not run
out of it.
"""

from __future__ import annotations

import copy
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._checks import check_int, check_real

__all__ = ["is_quick_check", "pick_device", "seed_everything", "derived_seed", "hardware", "cpu_name",
           "count_parameters", "synchronize", "Throughput", "measure_train_throughput", "train_throughput",
           "device_memory", "MemoryEstimate", "estimate_training_memory", "fit_batch_size"]


def is_quick_check() -> bool:
    """True when ``EFFV2_QUICK`` is set to 1/true/yes: every heavy step shrinks to seconds."""
    return os.environ.get("EFFV2_QUICK", "").strip().lower() in {"1", "true", "yes"}


def _current_accelerator() -> torch.device | None:
    """The accelerator torch would use (cuda, mps, xpu, ...) via ``torch.accelerator``; None if there
    is none, or if this torch predates ``torch.accelerator`` (2.6)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not accelerator.is_available():
        return None
    return torch.device(accelerator.current_accelerator().type)


def _backend_available(kind: str) -> bool:
    """Whether torch can use the device type `kind` on this machine (the per-backend query)."""
    if kind == "cpu":
        return True
    if kind == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    module = getattr(torch, kind, None)
    return module is not None and hasattr(module, "is_available") and module.is_available()


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """``preference`` if given ("cpu", "cuda", "cuda:1", "mps"), else the current accelerator
    (CUDA, Apple's MPS, Intel's XPU, as ``torch.accelerator`` reports it), else the CPU.

    An explicit CUDA, MPS or XPU preference that this machine cannot honour raises ValueError.
    """
    if preference is not None:
        try:
            device = torch.device(preference)
        except (RuntimeError, ValueError, TypeError):  # torch's answer lists twenty device types
            device = None
        if device is None or device.type not in ("cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"device must be one of the devices this kit supports: cpu, cuda, cuda:N (the N-th "
                             f"GPU), mps (Apple), xpu (Intel); got {str(preference)!r}")
        names = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}
        if device.type in names and not _backend_available(device.type):
            raise ValueError(f"device {preference!r} was asked for, but {names[device.type]} is not available here")
        return device
    accelerator = _current_accelerator()
    if accelerator is not None:
        return accelerator
    for kind in ("cuda", "mps", "xpu"):  # torch < 2.6 has no torch.accelerator
        if _backend_available(kind):
            return torch.device(kind)
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
    """What a measurement ran on: device name, CPU count, the CPU's vector instructions as torch
    uses them (AVX2, AVX512, ...: kernels for other instructions add in another order, so the same
    seed can train to other numbers), torch and Python versions."""
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
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def cpu_name(facts: dict) -> str:
    """A CPU as reports name it, from a `hardware` record: "x86_64 (AVX512)". Records made before
    the vector instructions were kept give the name alone."""
    capability = facts.get("cpu_capability")
    return f"{facts['device_name']} ({capability})" if capability else str(facts["device_name"])


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA, MPS, XPU); a no-op on the CPU. Timings need it on
    an accelerator, or they time the queueing of the work, not the work.

    Uses ``torch.accelerator.synchronize`` when `device` is the current accelerator's type, else
    the backend's own call (older torch).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return
    accelerator = _current_accelerator()
    if accelerator is not None and accelerator.type == device.type:
        torch.accelerator.synchronize(device)
    elif device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


@dataclass(frozen=True)
class Throughput:
    """Training images per second from several timed repeats: the median and the spread.

    `samples` holds one rate per repeat, in the order measured. Report the median (one slow
    repeat, when another program woke up, does not move it) with `low` and `high` beside it.
    """

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        samples = tuple(self.samples)
        if not samples:
            raise ValueError("samples must hold at least one rate (images/s), got none")
        for rate in samples:
            check_real("each sample (images/s)", rate, 0.0, allowed="a finite number > 0")
            if rate <= 0:
                raise ValueError(f"each sample (images/s) must be > 0, got {rate!r}")
        object.__setattr__(self, "samples", tuple(float(rate) for rate in samples))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def __str__(self) -> str:
        return f"{self.median:.1f} img/s (range {self.low:.1f}-{self.high:.1f}, {len(self.samples)} repeats)"


def measure_train_throughput(
    model: nn.Module,
    image_size: int,
    batch_size: int = 64,
    steps: int = 5,
    warmup: int = 2,
    repeats: int = 3,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    bf16: bool = False,
    num_classes: int | None = None,
) -> Throughput:
    """Training images per second, `repeats` times: forward, backward and an SGD step on random data.

    Measures the network alone (the data pipeline is timed in ``effv2_lib.bench_data``).
    ``warmup`` steps run untimed once first (cuDNN autotuning, allocator warm-up); then each
    repeat times ``steps`` steps, the device synchronized at both ends, and gives one rate,
    ``batch_size * steps / seconds``. The steps train a copy, so ``model`` itself is left as it was.
    """
    for name, value, low in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                             ("steps", steps, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
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
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        samples.append(batch_size * steps / (time.perf_counter() - start))
    return Throughput(tuple(samples))


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
    repeats: int = 1,
) -> float:
    """Training images per second (forward, backward, SGD step on random data), as one number:
    the median of `repeats` timed repeats of `steps` steps. `measure_train_throughput` gives
    the spread as well; use it for any figure you show."""
    return measure_train_throughput(model, image_size, batch_size=batch_size, steps=steps, warmup=warmup,
                                    repeats=repeats, device=device, channels_last=channels_last, bf16=bf16,
                                    num_classes=num_classes).median


def device_memory(device: torch.device | str) -> int:
    """Bytes of memory a run on `device` may use.

    CUDA and XPU: the free memory the driver reports (``mem_get_info``). MPS: Apple's recommended
    working-set size (``torch.mps.recommended_max_memory``; the GPU shares the machine's RAM),
    else the RAM. CPU: the physical RAM (``os.sysconf``), which other programs share.
    """
    device = torch.device(device)
    if device.type in ("cuda", "xpu"):
        return int(getattr(torch, device.type).mem_get_info(device)[0])
    if device.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", None)
        if recommended is not None:
            return int(recommended())
    if device.type in ("cpu", "mps"):
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    raise ValueError(f"device must be cpu, cuda, mps or xpu to query its memory, got {str(device)!r}")


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of a model at one image size, in bytes: `fixed` (weights, gradients and
    SGD momentum: three float32 copies of the parameters) plus `per_image` (the activations
    autograd keeps for the backward pass, float32, for one image). An estimate: it leaves out
    the temporaries of the backward pass and the kernels' workspace."""

    image_size: int
    fixed: int
    per_image: int

    def __post_init__(self) -> None:
        for name, low in (("image_size", 1), ("fixed", 0), ("per_image", 0)):
            check_int(name, getattr(self, name), low)

    def total(self, batch_size: int) -> int:
        """Estimated bytes to train on batches of `batch_size` images."""
        return self.fixed + check_int("batch_size", batch_size, 0) * self.per_image

    def at(self, image_size: int) -> MemoryEstimate:
        """The same estimate at another image size: activations scale with the number of pixels."""
        check_int("image_size", image_size, 1)
        return MemoryEstimate(image_size, self.fixed, round(self.per_image * (image_size / self.image_size) ** 2))


def estimate_training_memory(model: nn.Module, image_size: int, probe_size: int = 64) -> MemoryEstimate:
    """Estimate `model`'s training memory at `image_size` from one forward pass on the CPU.

    A copy of the model runs two images of ``probe_size`` px with autograd on; every tensor it saves
    for the backward pass is counted once (parameters excluded). Activations grow with the number
    of pixels, so the count is scaled by ``(image_size / probe_size) ** 2``. Cheap for any model:
    the probe is small and runs on the CPU whatever device the model will train on.
    """
    check_int("image_size", image_size, 1)
    check_int("probe_size", probe_size, 8)
    probe = copy.deepcopy(model).to("cpu", torch.float32).train()
    parameter_storages = {p.untyped_storage().data_ptr() for p in probe.parameters()}
    saved: dict[int, int] = {}  # storage address -> bytes, so a tensor saved twice counts once

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(2, 3, probe_size, probe_size)  # two images: BatchNorm needs more than one value per channel
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = probe(x)  # kept until counted, so no saved tensor is freed and its address reused
    per_image = sum(saved.values()) / 2 * (image_size / probe_size) ** 2
    del out
    fixed = 3 * sum(p.numel() * p.element_size() for p in probe.parameters())
    return MemoryEstimate(image_size, int(fixed), int(per_image))


def fit_batch_size(model: nn.Module | MemoryEstimate, image_size: int, device: torch.device | str | None = None, *,
                   budget_fraction: float = 0.5, max_batch: int = 256) -> int:
    """The largest power-of-two batch (at most `max_batch`) whose estimated training memory at
    `image_size` fits in `budget_fraction` of `device_memory(device)`; 0 if not even one image fits.

    `model` is a network (estimated with `estimate_training_memory`) or an estimate already made,
    at any size (rescaled with `MemoryEstimate.at`), so one estimate serves several sizes. Half the
    memory by default leaves room for what the estimate leaves out (the backward pass's
    temporaries, cuDNN workspace, the allocator's slack) and for other programs; with bfloat16
    autocast the activations take about half the estimate, more headroom still.
    """
    check_int("image_size", image_size, 1)
    check_int("max_batch", max_batch, 1)
    check_real("budget_fraction", budget_fraction, 0.0, 1.0, allowed="a fraction in (0, 1]")
    if budget_fraction == 0:
        raise ValueError(f"budget_fraction must be a fraction in (0, 1], got {budget_fraction!r}")
    if isinstance(model, MemoryEstimate):
        estimate = model.at(image_size)
    elif isinstance(model, nn.Module):
        estimate = estimate_training_memory(model, image_size)
    else:
        raise TypeError(f"model must be an nn.Module or a MemoryEstimate, got {type(model).__name__}")
    device = torch.device(device) if device is not None else pick_device()
    budget = budget_fraction * device_memory(device)
    batch, candidate = 0, 1
    while candidate <= max_batch and estimate.total(candidate) <= budget:
        batch, candidate = candidate, 2 * candidate
    return batch
