import pytest
import torch

from effv2_lib import efficientnetv2_cifar_tiny
from effv2_lib.runtime import count_parameters, hardware, is_smoke, pick_device, seed_everything, train_throughput


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_smoke_flag(monkeypatch, value, expected):
    monkeypatch.setenv("EFFV2_SMOKE", value)
    assert is_smoke() is expected


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


def test_train_throughput_leaves_the_model_untouched():
    model = efficientnetv2_cifar_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rate = train_throughput(model, image_size=16, batch_size=4, steps=1, warmup=1, device="cpu")
    assert rate > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="image_size"):
        train_throughput(model, image_size=0)


@pytest.mark.parametrize("kind, waits", [("cuda", "cuda"), ("mps", "mps"), ("xpu", "xpu"), ("cpu", None)])
def test_synchronize_waits_for_every_accelerator(kind, waits, monkeypatch):
    """Timings on MPS or XPU must wait for the queued work too, not only on CUDA."""
    import effv2_lib.runtime as runtime

    calls = []
    for name in ("cuda", "mps", "xpu"):
        monkeypatch.setattr(getattr(torch, name), "synchronize", lambda *a, name=name: calls.append(name),
                            raising=False)
    runtime.synchronize(torch.device(kind))
    assert calls == ([waits] if waits else [])
