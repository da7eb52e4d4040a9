"""Whole networks: exact parameter counts, stochastic-depth spread, modes, input checks."""

import pytest
import torch

from effv2_lib import (
    MODEL_SPECS,
    MBConv,
    build_model,
    efficientnetv2_cifar,
    efficientnetv2_cifar_tiny,
    efficientnetv2_l,
    efficientnetv2_m,
    efficientnetv2_s,
    efficientnetv2_xl,
)
from effv2_lib.blocks import StochasticDepth


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "factory, expected, sizes",
    [
        (efficientnetv2_s, 21_458_488, (300, 384)),
        (efficientnetv2_m, 54_139_356, (384, 480)),
        (efficientnetv2_l, 118_515_272, (384, 480)),
        (efficientnetv2_xl, 208_119_808, (384, 512)),
    ],
)
def test_imagenet_parameter_counts_and_sizes(factory, expected, sizes):
    model = factory()
    assert n_params(model) == expected
    assert (model.train_size, model.eval_size) == sizes
    assert model.min_input_size == 32


def test_factories_accept_overrides():
    model = efficientnetv2_s(num_classes=10, dropout=0.5, stochastic_depth_prob=0.0)
    assert model.classifier[1].out_features == 10
    assert model.classifier[0].p == 0.5
    assert all(m.p == 0 for m in model.modules() if isinstance(m, StochasticDepth))
    assert efficientnetv2_m().classifier[0].p == 0.3  # per-variant default head dropout


def test_stochastic_depth_spreads_linearly_over_all_blocks():
    model = efficientnetv2_s(stochastic_depth_prob=0.2)
    blocks = [b for stage in model.stages for b in stage]
    assert len(blocks) == 40
    for i, block in enumerate(blocks):
        expected = 0.2 * i / 40 if block.has_residual else 0.0
        assert block.stochastic_depth.p == pytest.approx(expected)


def test_train_mode_is_random_and_eval_mode_deterministic():
    model = efficientnetv2_cifar_tiny(stochastic_depth_prob=0.5, dropout=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("factory", [efficientnetv2_cifar, efficientnetv2_cifar_tiny])
@pytest.mark.parametrize("size", [16, 24, 32, 64])
def test_cifar_variants_take_16_to_64_px(factory, size):
    model = factory(num_classes=10).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, size, size))
        logits = model(torch.randn(2, 3, size, size))
    assert features.shape[-2:] == (size // 8, size // 8)  # output stride 8
    assert logits.shape == (2, 10)


def test_cifar_layout_fused_early_mbconv_late():
    model = efficientnetv2_cifar()
    assert model.spec.output_stride == 8 and model.min_input_size == 8
    assert 2_000_000 < n_params(model) < 8_000_000
    size = 32 // model.spec.stem_stride
    for stage_spec, stage in zip(model.spec.stages, model.stages, strict=True):
        size //= stage_spec.stride
        assert (stage_spec.block == "fused") == (size >= 16)
        assert all(isinstance(b, MBConv) == (size <= 8) for b in stage)
    tiny = efficientnetv2_cifar_tiny()
    assert n_params(tiny) < n_params(model) / 3
    assert tiny.spec.name == "efficientnetv2_cifar_tiny"


@pytest.mark.parametrize(
    "shape, message",
    [((2, 1, 32, 32), "3 input channels"), ((2, 4, 32, 32), "3 input channels"),
     ((3, 32, 32), "4-D"), ((2, 3, 4, 32), "at least 8")],
)
def test_bad_inputs_fail_at_the_door(shape, message):
    model = efficientnetv2_cifar_tiny()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(shape))


def test_imagenet_model_rejects_too_small_input():
    with pytest.raises(ValueError, match="at least 32"):
        efficientnetv2_s().eval()(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize(
    "kwargs, arg",
    [({"num_classes": 0}, "num_classes"), ({"dropout": 1.0}, "dropout"),
     ({"stochastic_depth_prob": -0.1}, "stochastic_depth_prob"), ({"width_mult": 0}, "width_mult")],
)
def test_factory_validation(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        efficientnetv2_cifar(**kwargs)


def test_build_model_by_name():
    assert build_model("cifar-tiny", num_classes=100).classifier[1].out_features == 100
    assert set(MODEL_SPECS) <= {"s", "m", "l", "xl", "cifar"}
    with pytest.raises(ValueError, match="cifar-tiny"):
        build_model("b0", num_classes=10)
