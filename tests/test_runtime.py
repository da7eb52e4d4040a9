import pytest
import torch

import effv2_lib.runtime as runtime
from effv2_lib import efficientnetv2_cifar, efficientnetv2_cifar_tiny
from effv2_lib.runtime import (
    MemoryEstimate,
    Throughput,
    count_parameters,
    cpu_name,
    device_memory,
    estimate_training_memory,
    fit_batch_size,
    hardware,
    is_quick_check,
    measure_train_throughput,
    pick_device,
    seed_everything,
    train_throughput,
)

GB = 1024**3


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_smoke_flag(monkeypatch, value, expected):
    monkeypatch.setenv("EFFV2_QUICK", value)
    assert is_quick_check() is expected


def test_seed_everything_makes_torch_repeatable():
    seed_everything(3)
    a = torch.rand(4)
    seed_everything(3)
    assert torch.equal(a, torch.rand(4))
    with pytest.raises(TypeError, match="seed"):
        seed_everything(1.5)


def test_devices_and_hardware():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    info = hardware("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    # the vector instructions name the CPU in reports; records made before they were kept still read
    assert cpu_name(info) == f"{info['device_name']} ({torch.backends.cpu.get_cpu_capability()})"
    assert cpu_name({"device_name": "x86_64"}) == "x86_64"


def test_train_throughput_leaves_the_model_untouched():
    model = efficientnetv2_cifar_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rate = train_throughput(model, image_size=16, batch_size=4, steps=1, warmup=1, device="cpu")
    assert rate > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="image_size"):
        train_throughput(model, image_size=0)


def fake_accelerator(monkeypatch, kind: str | None, calls: list | None = None) -> None:
    """Make torch.accelerator report `kind` ("mps", "cuda") as the current accelerator, or none."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: kind is not None)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device(kind) if kind else None)
    if calls is not None:
        monkeypatch.setattr(torch.accelerator, "synchronize", lambda device=None: calls.append(("accelerator", device)))


@pytest.mark.parametrize("kind, waits", [("cuda", "cuda"), ("mps", "mps"), ("xpu", "xpu"), ("cpu", None)])
def test_synchronize_waits_for_every_accelerator(kind, waits, monkeypatch):
    """Timings on MPS or XPU must wait for the queued work too, not only on CUDA (the fallback for a
    torch without torch.accelerator, or a device that is not the current accelerator)."""
    fake_accelerator(monkeypatch, None)
    calls = []
    for name in ("cuda", "mps", "xpu"):
        monkeypatch.setattr(getattr(torch, name), "synchronize", lambda *a, name=name: calls.append(name),
                            raising=False)
    runtime.synchronize(torch.device(kind))
    assert calls == ([waits] if waits else [])


def test_an_mps_accelerator_is_chosen_and_synchronized_through_torch_accelerator(monkeypatch):
    calls = []
    fake_accelerator(monkeypatch, "mps", calls)
    assert pick_device() == torch.device("mps")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit preference still wins
    runtime.synchronize(torch.device("mps"))
    runtime.synchronize("cpu")  # the CPU never waits
    assert calls == [("accelerator", torch.device("mps"))]


def test_without_an_accelerator_the_cpu_is_chosen(monkeypatch):
    fake_accelerator(monkeypatch, None)
    monkeypatch.setattr(runtime, "_backend_available", lambda kind: kind == "cpu")
    assert pick_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="MPS is not available"):
        pick_device("mps")


class FakeClock:
    """time.perf_counter returning a known sequence: start, end of each repeat in turn."""

    def __init__(self, readings):
        self.readings = list(readings)

    def perf_counter(self):
        return self.readings.pop(0)


def test_throughput_is_the_median_of_the_repeats_with_their_spread(monkeypatch):
    # three repeats of 2 steps x batch 4 = 8 images, taking 2 s, 1 s and 4 s: 4, 8 and 2 images/s
    monkeypatch.setattr(runtime, "time", FakeClock([0.0, 2.0, 10.0, 11.0, 20.0, 24.0]))
    result = measure_train_throughput(efficientnetv2_cifar_tiny(), image_size=8, batch_size=4, steps=2, warmup=0,
                                      repeats=3, device="cpu")
    assert result.samples == (4.0, 8.0, 2.0)
    assert (result.median, result.low, result.high) == (4.0, 2.0, 8.0)
    assert "3 repeats" in str(result)
    monkeypatch.setattr(runtime, "time", FakeClock([0.0, 2.0, 10.0, 11.0]))
    assert train_throughput(efficientnetv2_cifar_tiny(), image_size=8, batch_size=4, steps=2, warmup=0,
                            repeats=2, device="cpu") == 6.0  # median of 4 and 8


def test_throughput_checks_its_arguments():
    model = efficientnetv2_cifar_tiny()
    with pytest.raises(ValueError, match=r"repeats must be an int >= 1, got 0"):
        measure_train_throughput(model, image_size=8, repeats=0, device="cpu")
    with pytest.raises(TypeError, match=r"repeats must be an int, got float 2.5"):
        train_throughput(model, image_size=8, repeats=2.5, device="cpu")
    with pytest.raises(ValueError, match="at least one"):
        Throughput(())
    with pytest.raises(ValueError, match="> 0"):
        Throughput((1.0, 0.0))


def test_device_memory_asks_each_backend(monkeypatch):
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 8 * GB, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (140 * GB, 141 * GB))
    assert device_memory("mps") == 8 * GB
    assert device_memory("cuda") == 140 * GB
    assert device_memory("cpu") > 0
    with pytest.raises(ValueError, match="meta"):
        device_memory("meta")


def test_memory_estimate_grows_with_pixels_and_width():
    tiny, wide = efficientnetv2_cifar_tiny(), efficientnetv2_cifar()
    small, large = estimate_training_memory(tiny, 32), estimate_training_memory(tiny, 64)
    assert small.fixed == large.fixed == 3 * 4 * count_parameters(tiny)  # weights, gradients, momentum
    assert large.per_image == pytest.approx(4 * small.per_image, rel=1e-6)  # activations scale with pixels
    assert estimate_training_memory(wide, 32).per_image > small.per_image
    assert small.total(10) == small.fixed + 10 * small.per_image


def test_batch_size_follows_the_device_memory(monkeypatch):
    """An 8 GB Mac gets a smaller batch than a 140 GB GPU, each the largest power of two that fits."""
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 8 * GB, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (140 * GB, 141 * GB))
    model = efficientnetv2_cifar_tiny()
    estimate = estimate_training_memory(model, 64).at(256)  # one probe serves every size
    assert estimate.image_size == 256 and estimate.per_image == pytest.approx(16 * estimate.at(64).per_image)
    batches = {}
    for kind, memory in (("mps", 8 * GB), ("cuda", 140 * GB)):
        batch = fit_batch_size(estimate, 256, kind, max_batch=2**16)
        assert estimate.total(batch) <= 0.5 * memory < estimate.total(2 * batch)
        batches[kind] = batch
    assert 1 <= batches["mps"] < batches["cuda"]
    assert fit_batch_size(estimate, 512, "mps", max_batch=2**16) < batches["mps"]  # larger images, smaller batch
    assert fit_batch_size(model, 256, "cuda", max_batch=48) == 32  # from the model itself; capped, a power of two
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: estimate.total(1) - 1, raising=False)
    assert fit_batch_size(estimate, 256, "mps", budget_fraction=1.0) == 0  # not one image fits


def test_batch_size_checks_its_arguments():
    estimate = MemoryEstimate(32, 1, 1)
    with pytest.raises(ValueError, match=r"budget_fraction must be a fraction in \(0, 1\], got 1.5"):
        fit_batch_size(estimate, 32, "cpu", budget_fraction=1.5)
    with pytest.raises(ValueError, match="budget_fraction"):
        fit_batch_size(estimate, 32, "cpu", budget_fraction=0.0)
    with pytest.raises(ValueError, match="max_batch must be an int >= 1, got 0"):
        fit_batch_size(estimate, 32, "cpu", max_batch=0)
    with pytest.raises(TypeError, match="nn.Module or a MemoryEstimate, got str"):
        fit_batch_size("cifar", 32, "cpu")
