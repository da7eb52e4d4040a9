"""The building blocks of EfficientNetV2.

Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021
(arXiv:2104.00298).

* Section 3.2 and Figure 2: the two block types. MBConv (the inverted residual of
  MobileNetV2 with squeeze-and-excitation, used by EfficientNet-B0..B7) and
  Fused-MBConv, which replaces MBConv's 1x1 expansion and kxk depthwise
  convolution by one regular kxk convolution. Fused-MBConv has more parameters
  and FLOPs but runs faster on accelerators in the early, high-resolution stages,
  where depthwise convolutions cannot use the hardware well.
* Squeeze-and-excitation: Hu et al. 2018; EfficientNet uses a squeeze width of
  1/4 of the *block's input* channels.
* Stochastic depth: Huang et al. 2016, applied to the residual branch.

Every detail below (BatchNorm eps 1e-3, the SE width, where the stride and the
activations sit, when a residual exists) follows the official implementation
and torchvision, so that our network computes the same function as
``torchvision.models.efficientnet_v2_s`` given the same weights
(see ``effv2_lib.interop`` and ``tests/test_interop.py``). Two details follow
torchvision where it differs from the TensorFlow code:

* padding is symmetric, (k - 1) / 2 on every side, also at stride 2; TF's 'same'
  pads a stride-2 convolution of an even-sized input more on the bottom and
  right, so TF weights run here shift their stride-2 outputs by a pixel;
* BatchNorm momentum is PyTorch's default 0.1 (the weight of the new batch),
  which is torchvision's value and the official code's (its ``bn_momentum`` 0.9
  in TF's convention, the weight of the old average). The paper's "batch norm
  momentum 0.99" (Section 5.1) would be ``momentum=0.01`` here.

Shapes in comments use N (batch), C (channels), H, W (height, width).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_int, check_real

__all__ = [
    "BN_EPS",
    "ConvBNAct",
    "SqueezeExcitation",
    "StochasticDepth",
    "MBConv",
    "FusedMBConv",
]

# TF's BatchNorm epsilon. PyTorch's default is 1e-5; with 1e-5 the outputs of a
# network trained in TF (or of torchvision's port) drift measurably.
BN_EPS = 1e-3


def _check_stride(stride) -> int:
    return check_choice("stride", check_int("stride", stride, 1), (1, 2))


def _check_kernel(kernel_size) -> int:
    kernel_size = check_int("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (so 'same' padding is symmetric), got {kernel_size}")
    return kernel_size


def _check_probability(name: str, value, high_inclusive: bool) -> float:
    # check_real takes a closed interval, and [0, largest float below 1] is [0, 1).
    high = 1.0 if high_inclusive else math.nextafter(1.0, 0.0)
    interval = "[0, 1]" if high_inclusive else "[0, 1)"
    return check_real(name, value, 0.0, high, allowed=f"a number in {interval}")


def _check_expand_ratio(expand_ratio) -> float:
    return check_real("expand_ratio", expand_ratio, 1.0, allowed="a number >= 1")


def expanded_width(in_channels: int, expand_ratio: float) -> int:
    """Hidden width of a block: in_channels * expand_ratio, rounded to a multiple of 8.

    All widths in the EfficientNetV2 tables are already multiples of 8, so the
    rounding (kept for non-integer ratios, as in torchvision) changes nothing there.
    """
    value = in_channels * expand_ratio
    rounded = max(8, int(value + 4) // 8 * 8)
    if rounded < 0.9 * value:  # never round down by more than 10%
        rounded += 8
    return rounded


class ConvBNAct(nn.Sequential):
    """kxk convolution (no bias) -> BatchNorm -> SiLU (the paper's "Swish").

    [N, C_in, H, W] -> [N, C_out, H / stride, W / stride]. With ``activation=False``
    the block ends at BatchNorm: projections are linear (Sandler et al. 2018).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = check_int("out_channels", out_channels, 1)
        kernel_size = _check_kernel(kernel_size)
        stride = _check_stride(stride)
        groups = check_int("groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups must divide in_channels and out_channels, got groups={groups}, "
                f"in_channels={in_channels}, out_channels={out_channels}"
            )
        layers = OrderedDict(
            conv=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,  # "same" for stride 1, halves H, W for stride 2
                groups=groups,
                bias=False,  # BatchNorm's shift makes a bias redundant
            ),
            bn=nn.BatchNorm2d(out_channels, eps=BN_EPS),
        )
        if activation:
            layers["act"] = nn.SiLU(inplace=True)
        super().__init__(layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: x * sigmoid(W2 SiLU(W1 mean_hw(x))).

    [N, C, H, W] -> [N, C, H, W]. ``squeeze_channels`` is max(1, C_block_in / 4)
    where C_block_in is the input width of the MBConv block, not the expanded
    width C the SE layer sits on (EfficientNet's convention).
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        channels = check_int("channels", channels, 1)
        squeeze_channels = check_int("squeeze_channels", squeeze_channels, 1)
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)  # W1, with bias
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)  # W2, with bias
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # squeeze: [N, C, 1, 1]
        s = self.expand(self.act(self.reduce(s)))  # excite: [N, C, 1, 1]
        return x * torch.sigmoid(s)


class StochasticDepth(nn.Module):
    """Drop a residual branch for a whole sample with probability p ("row" mode).

    In training each sample keeps its branch with probability 1 - p and survivors
    are scaled by 1 / (1 - p), so the expectation equals the eval-mode output,
    which is the identity. p = 0 is the identity in both modes.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = _check_probability("p", p, high_inclusive=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        # one Bernoulli(keep) draw per sample, broadcast over C, H, W: [N, 1, 1, 1]
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class _ResidualBlock(nn.Module):
    """y = x + StochasticDepth(F(x)) when stride 1 and C_in == C_out, else y = F(x).

    Subclasses register the layers of F in the order they run, after
    ``stochastic_depth``, so that ``named_children()`` lists the computation in
    order (``effv2_lib.interop`` maps torchvision's weights that way).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, stochastic_depth_prob: float) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = check_int("out_channels", out_channels, 1)
        stride = _check_stride(stride)
        _check_probability("stochastic_depth_prob", stochastic_depth_prob, high_inclusive=False)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.has_residual = stride == 1 and in_channels == out_channels
        # Without a residual there is nothing to drop: the branch *is* the output.
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob if self.has_residual else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for name, layer in self.named_children():
            if name != "stochastic_depth":
                out = layer(out)
        if self.has_residual:
            out = self.stochastic_depth(out) + x
        return out


class MBConv(_ResidualBlock):
    """MBConv (Figure 2, left): 1x1 expand -> kxk depthwise -> SE -> 1x1 project.

    [N, C_in, H, W] -> expand [N, e*C_in, H, W] -> depthwise (carries the stride)
    [N, e*C_in, H/s, W/s] -> SE -> project [N, C_out, H/s, W/s], no activation
    after the projection. With expand ratio 1 the expansion is skipped.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: float = 4,
        kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.25,
        stochastic_depth_prob: float = 0.0,
    ) -> None:
        super().__init__(in_channels, out_channels, stride, stochastic_depth_prob)
        _check_expand_ratio(expand_ratio)
        _check_kernel(kernel_size)
        _check_probability("se_ratio", se_ratio, high_inclusive=True)
        hidden = expanded_width(in_channels, expand_ratio) if expand_ratio != 1 else in_channels
        if expand_ratio != 1:
            self.expand = ConvBNAct(in_channels, hidden, kernel_size=1)
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        if se_ratio > 0:
            self.se = SqueezeExcitation(hidden, max(1, int(in_channels * se_ratio)))
        self.project = ConvBNAct(hidden, out_channels, kernel_size=1, activation=False)


class FusedMBConv(_ResidualBlock):
    """Fused-MBConv (Figure 2, right): one kxk convolution does MBConv's expand + depthwise.

    expand ratio e > 1: kxk conv (carries the stride) [N, e*C_in, H/s, W/s]
    -> 1x1 project [N, C_out, H/s, W/s], linear.
    expand ratio e = 1: a single kxk conv + BN + SiLU, [N, C_out, H/s, W/s].
    No squeeze-and-excitation: the official V2 networks use none in fused stages.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: float = 4,
        kernel_size: int = 3,
        stride: int = 1,
        stochastic_depth_prob: float = 0.0,
    ) -> None:
        super().__init__(in_channels, out_channels, stride, stochastic_depth_prob)
        _check_expand_ratio(expand_ratio)
        _check_kernel(kernel_size)
        if expand_ratio != 1:
            hidden = expanded_width(in_channels, expand_ratio)
            self.expand = ConvBNAct(in_channels, hidden, kernel_size, stride=stride)
            self.project = ConvBNAct(hidden, out_channels, kernel_size=1, activation=False)
        else:
            self.conv = ConvBNAct(in_channels, out_channels, kernel_size, stride=stride)
