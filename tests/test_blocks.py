"""Blocks: semantics shared with torchvision, stochastic depth, argument validation."""

import pytest
import torch
from torch import nn

from effv2_lib import ConvBNAct, FusedMBConv, MBConv, SqueezeExcitation, StochasticDepth


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_conv_bn_act_uses_tf_epsilon_and_optional_activation():
    layer = ConvBNAct(8, 16, 3, stride=2)
    assert layer.bn.eps == 1e-3
    assert layer.conv.bias is None
    assert isinstance(layer.act, nn.SiLU)
    assert not hasattr(ConvBNAct(8, 16, 1, activation=False), "act")
    assert layer(torch.randn(2, 8, 9, 9)).shape == (2, 16, 5, 5)


def test_se_squeeze_width_comes_from_block_input_not_expanded_width():
    block = MBConv(64, 128, expand_ratio=4, stride=2)
    assert block.se.reduce.out_channels == 64 // 4  # not 256 // 4
    assert block.se.reduce.in_channels == 256


def test_se_rescales_channels_only():
    se = SqueezeExcitation(16, 4)
    x = torch.randn(2, 16, 5, 5)
    y = se(x)
    ratio = y / x
    # one gate per (sample, channel), constant over H, W, inside (0, 1)
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


@pytest.mark.parametrize("block_type", [MBConv, FusedMBConv])
@pytest.mark.parametrize(
    "cin, cout, stride, residual",
    [(24, 24, 1, True), (24, 48, 1, False), (24, 24, 2, False), (24, 48, 2, False)],
)
def test_residual_only_for_stride_one_and_equal_widths(block_type, cin, cout, stride, residual):
    block = block_type(cin, cout, expand_ratio=4, stride=stride, stochastic_depth_prob=0.5).eval()
    assert block.has_residual is residual
    x = torch.randn(2, cin, 8, 8)
    y = block(x)
    assert y.shape == (2, cout, 8 // stride, 8 // stride)
    if residual:
        # zeroing the projection's BN scale kills the branch: a residual block becomes the identity
        last = block.project if hasattr(block, "project") else block.conv
        with torch.no_grad():
            last.bn.weight.zero_()
            last.bn.bias.zero_()
        assert torch.equal(block(x), x)


def test_fused_mbconv_forms():
    single = FusedMBConv(24, 24, expand_ratio=1)
    assert [n for n, _ in single.named_children()] == ["stochastic_depth", "conv"]
    assert hasattr(single.conv, "act")
    expanded = FusedMBConv(24, 48, expand_ratio=4, stride=2)
    assert [n for n, _ in expanded.named_children()] == ["stochastic_depth", "expand", "project"]
    assert expanded.expand.conv.stride == (2, 2)  # the stride sits in the fused kxk conv
    assert expanded.expand.conv.kernel_size == (3, 3)
    assert not hasattr(expanded.project, "act")
    # kxk conv C_in -> 4 C_in, 1x1 conv 4 C_in -> C_out, and two BatchNorms
    assert n_params(expanded) == 24 * 96 * 9 + 96 * 48 + 2 * 96 + 2 * 48


def test_mbconv_layout_and_parameter_count():
    block = MBConv(64, 128, expand_ratio=4, stride=2)
    assert [n for n, _ in block.named_children()] == ["stochastic_depth", "expand", "depthwise", "se", "project"]
    assert block.depthwise.conv.groups == 256 and block.depthwise.conv.stride == (2, 2)
    expand, dw = 64 * 256 + 2 * 256, 256 * 9 + 2 * 256
    se, project = (256 * 16 + 16) + (16 * 256 + 256), 256 * 128 + 2 * 128
    assert n_params(block) == expand + dw + se + project


def test_stochastic_depth_is_identity_in_eval_and_at_zero():
    x = torch.randn(64, 4, 3, 3)
    sd = StochasticDepth(0.5)
    assert sd.p == 0.5
    assert torch.equal(sd.eval()(x), x)
    assert torch.equal(StochasticDepth(0.0).train()(x), x)


def test_stochastic_depth_drops_whole_samples_and_keeps_expectation():
    torch.manual_seed(0)
    sd = StochasticDepth(0.3).train()
    x = torch.ones(20000, 2, 2, 2)
    y = sd(x)
    per_sample = y.flatten(1)
    # each sample is either all zeros or all 1 / (1 - p)
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.7)).all(1))
    dropped = (per_sample == 0).all(1).float().mean().item()
    assert abs(dropped - 0.3) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.03


@pytest.mark.parametrize(
    "make, arg, bad",
    [
        (lambda v: MBConv(8, 8, stride=v), "stride", 3),
        (lambda v: FusedMBConv(8, 8, stride=v), "stride", 0),
        (lambda v: MBConv(8, 8, kernel_size=v), "kernel_size", 4),
        (lambda v: FusedMBConv(8, 8, kernel_size=v), "kernel_size", 0),
        (lambda v: MBConv(8, 8, expand_ratio=v), "expand_ratio", 0.5),
        (lambda v: FusedMBConv(8, 8, expand_ratio=v), "expand_ratio", 0),
        (lambda v: MBConv(8, 8, se_ratio=v), "se_ratio", 1.5),
        (lambda v: MBConv(8, 8, se_ratio=v), "se_ratio", -0.1),
        (lambda v: MBConv(8, 8, stochastic_depth_prob=v), "stochastic_depth_prob", 1.0),
        (lambda v: FusedMBConv(8, 8, stochastic_depth_prob=v), "stochastic_depth_prob", -0.1),
        (lambda v: StochasticDepth(v), "p", 1.0),
        (lambda v: MBConv(v, 8), "in_channels", 0),
        (lambda v: FusedMBConv(8, v), "out_channels", 0),
        (lambda v: ConvBNAct(8, v), "out_channels", -1),
        (lambda v: ConvBNAct(8, 8, stride=v), "stride", 4),
        (lambda v: SqueezeExcitation(8, v), "squeeze_channels", 0),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(make, arg, bad):
    with pytest.raises(ValueError) as info:
        make(bad)
    assert arg in str(info.value) and str(bad) in str(info.value)


def test_non_integer_channels_raise_type_error():
    with pytest.raises(TypeError, match="in_channels"):
        MBConv(8.0, 8)
