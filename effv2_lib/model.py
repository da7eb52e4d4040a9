"""EfficientNetV2 networks built from stage tables.

Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021.

* Table 4: the EfficientNetV2-S architecture, one row per stage: operator
  (Fused-MBConv or MBConv), expansion ratio e, kernel k, stride s, output
  channels, number of layers L. M, L and XL are the official code's scaled-up
  tables (the paper gives only S). Each table below is that data, nothing more.
* Section 3.3: what the search found (Fused-MBConv early, smaller expansion
  ratios early, 3x3 kernels with more layers, and for S the last stride-1 stage
  of V1 removed; M, L and XL keep a seventh stage).
* Head (Section 3.3 / official code): 1x1 conv to 1280 channels, global average
  pooling, dropout, linear classifier.
* Stochastic depth (Huang et al. 2016) with survival decaying linearly over all
  blocks: block i of n drops with probability 0.2 * i / n.

The CIFAR variants at the end are ours: the same blocks arranged for 32 x 32
inputs (output stride 8 instead of 32). See the table in README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from torch import Tensor, nn

from .blocks import ConvBNAct, FusedMBConv, MBConv, expanded_width
from .resnet import ResNetCifar, resnet20

__all__ = [
    "StageSpec",
    "ModelSpec",
    "EfficientNetV2",
    "MODEL_SPECS",
    "MODEL_NAMES",
    "scale_spec",
    "efficientnetv2_s",
    "efficientnetv2_m",
    "efficientnetv2_l",
    "efficientnetv2_xl",
    "efficientnetv2_cifar",
    "efficientnetv2_cifar_tiny",
    "build_model",
    "check_model_name",
    "ARCH_PREFIX",
]


@dataclass(frozen=True)
class StageSpec:
    """One row of a stage table: `num_layers` blocks, the first carrying the stride."""

    block: Literal["fused", "mbconv"]
    expand_ratio: float
    kernel_size: int
    stride: int
    in_channels: int
    out_channels: int
    num_layers: int


def _table(*rows: tuple) -> tuple[StageSpec, ...]:
    ops = {"F": "fused", "M": "mbconv"}
    return tuple(StageSpec(ops[op], *rest) for op, *rest in rows)


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: stem, stage table, head, and its recommended sizes."""

    name: str
    stages: tuple[StageSpec, ...]
    stem_stride: int
    head_channels: int
    dropout: float
    train_size: int  # largest training size of progressive learning (px)
    eval_size: int  # evaluation size (px)

    @property
    def output_stride(self) -> int:
        return self.stem_stride * math.prod(s.stride for s in self.stages)

    @property
    def num_blocks(self) -> int:
        return sum(s.num_layers for s in self.stages)


# Stage tables: (op, expand ratio e, kernel k, stride s, C_in, C_out, layers L).
# F = Fused-MBConv, M = MBConv with SE 0.25. Values: the official code, also in
# torchvision; the parameter counts in tests/test_model.py pin them down.
# fmt: off
_S_STAGES = _table(
    #op  e  k  s  C_in C_out  L
    ("F", 1, 3, 1,  24,  24,  2),
    ("F", 4, 3, 2,  24,  48,  4),
    ("F", 4, 3, 2,  48,  64,  4),
    ("M", 4, 3, 2,  64, 128,  6),
    ("M", 6, 3, 1, 128, 160,  9),
    ("M", 6, 3, 2, 160, 256, 15),
)
_M_STAGES = _table(
    ("F", 1, 3, 1,  24,  24,  3),
    ("F", 4, 3, 2,  24,  48,  5),
    ("F", 4, 3, 2,  48,  80,  5),
    ("M", 4, 3, 2,  80, 160,  7),
    ("M", 6, 3, 1, 160, 176, 14),
    ("M", 6, 3, 2, 176, 304, 18),
    ("M", 6, 3, 1, 304, 512,  5),
)
_L_STAGES = _table(
    ("F", 1, 3, 1,  32,  32,  4),
    ("F", 4, 3, 2,  32,  64,  7),
    ("F", 4, 3, 2,  64,  96,  7),
    ("M", 4, 3, 2,  96, 192, 10),
    ("M", 6, 3, 1, 192, 224, 19),
    ("M", 6, 3, 2, 224, 384, 25),
    ("M", 6, 3, 1, 384, 640,  7),
)
_XL_STAGES = _table(
    ("F", 1, 3, 1,  32,  32,  4),
    ("F", 4, 3, 2,  32,  64,  8),
    ("F", 4, 3, 2,  64,  96,  8),
    ("M", 4, 3, 2,  96, 192, 16),
    ("M", 6, 3, 1, 192, 256, 24),
    ("M", 6, 3, 2, 256, 512, 32),
    ("M", 6, 3, 1, 512, 640,  8),
)
# CIFAR (ours): S's shape with output stride 8 for 32 x 32 inputs. The stem keeps
# full resolution (stride 1) and stage 3 no longer downsamples, so the maps are
# 32 -> 16 -> 8 -> 4: Fused-MBConv at 32 x 32 and 16 x 16, where depthwise
# convolutions are slowest per FLOP, MBConv + SE at 8 x 8 and 4 x 4. Depth is cut
# from S's 40 blocks to 17: each block is a handful of kernel launches, and at
# CIFAR sizes launches, not FLOPs, bound the speed on a GPU.
_CIFAR_STAGES = _table(
    #op  e  k  s  C_in C_out  L     map (px)
    ("F", 1, 3, 1,  24,  24,  2),  # 32
    ("F", 4, 3, 2,  24,  48,  3),  # 16
    ("F", 4, 3, 1,  48,  64,  3),  # 16
    ("M", 4, 3, 2,  64, 128,  3),  # 8
    ("M", 6, 3, 1, 128, 160,  3),  # 8
    ("M", 6, 3, 2, 160, 256,  3),  # 4
)
# fmt: on

MODEL_SPECS: dict[str, ModelSpec] = {
    "s": ModelSpec("efficientnetv2_s", _S_STAGES, 2, 1280, 0.2, 300, 384),
    "m": ModelSpec("efficientnetv2_m", _M_STAGES, 2, 1280, 0.3, 384, 480),
    "l": ModelSpec("efficientnetv2_l", _L_STAGES, 2, 1280, 0.4, 384, 480),
    "xl": ModelSpec("efficientnetv2_xl", _XL_STAGES, 2, 1280, 0.4, 384, 512),
    "cifar": ModelSpec("efficientnetv2_cifar", _CIFAR_STAGES, 1, 1280, 0.2, 32, 32),
}


def scale_spec(spec: ModelSpec, width_mult: float = 1.0, depth_mult: float = 1.0, name: str | None = None) -> ModelSpec:
    """EfficientNet-style scaling: widths x width_mult (multiples of 8), layers ceil(L x depth_mult)."""
    for arg, value in (("width_mult", width_mult), ("depth_mult", depth_mult)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{arg} must be a positive number, got {value!r}")

    def width(c: int) -> int:
        return c if width_mult == 1 else expanded_width(c, width_mult)

    stages = tuple(
        replace(
            s,
            in_channels=width(s.in_channels),
            out_channels=width(s.out_channels),
            num_layers=max(1, math.ceil(s.num_layers * depth_mult)),
        )
        for s in spec.stages
    )
    return replace(spec, name=name or spec.name, stages=stages, head_channels=width(spec.head_channels))


class EfficientNetV2(nn.Module):
    """stem -> stages -> head -> pool -> dropout -> linear.

    [N, 3, H, W] -> stem [N, C_0, H/s_0, W/s_0] -> stages -> [N, C_last, H/r, W/r]
    -> head (1x1 conv) [N, 1280, H/r, W/r] -> mean over H, W [N, 1280]
    -> [N, num_classes], with r the output stride (32 for S/M/L/XL, 8 for CIFAR).
    """

    def __init__(
        self,
        spec: ModelSpec,
        num_classes: int = 1000,
        dropout: float | None = None,
        stochastic_depth_prob: float = 0.2,
    ) -> None:
        super().__init__()
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        dropout = spec.dropout if dropout is None else dropout
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0 <= stochastic_depth_prob < 1:
            raise ValueError(f"stochastic_depth_prob must be in [0, 1), got {stochastic_depth_prob}")
        self.spec = spec
        self.name = spec.name
        self.train_size, self.eval_size = spec.train_size, spec.eval_size
        # Below one input pixel per output pixel the last maps would see only padding.
        self.min_input_size = spec.output_stride

        self.stem = ConvBNAct(3, spec.stages[0].in_channels, 3, stride=spec.stem_stride)
        block_types = {"fused": FusedMBConv, "mbconv": MBConv}
        total, index = spec.num_blocks, 0
        stages = []
        for stage in spec.stages:
            blocks = []
            for j in range(stage.num_layers):
                blocks.append(
                    block_types[stage.block](
                        stage.in_channels if j == 0 else stage.out_channels,
                        stage.out_channels,
                        expand_ratio=stage.expand_ratio,
                        kernel_size=stage.kernel_size,
                        stride=stage.stride if j == 0 else 1,
                        # linear decay over the whole network: p_i = p * i / n
                        stochastic_depth_prob=stochastic_depth_prob * index / total,
                    )
                )
                index += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBNAct(spec.stages[-1].out_channels, spec.head_channels, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(spec.head_channels, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation, which is the official code's except for depthwise convolutions."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # PyTorch's fan_out for a depthwise conv is C * k * k; TF uses k * k.
                # We follow torchvision, so that both initialise alike.
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def check_input(self, x: Tensor) -> None:
        """Reject inputs the network cannot take, before any layer sees them."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor [N, 3, H, W], got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D batch [N, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise ValueError(
                f"expected 3 input channels (RGB, NCHW layout), got {x.shape[1]} in shape {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"{self.spec.name} needs inputs of at least {self.min_input_size} x {self.min_input_size} px "
                f"(its output stride), got {x.shape[-2]} x {x.shape[-1]}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] -> [N, head_channels, H / r, W / r]."""
        self.check_input(x)
        return self.head(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)  # [N, head_channels]
        return self.classifier(x)  # [N, num_classes]


def _factory(key: str, num_classes: int, dropout: float | None, stochastic_depth_prob: float) -> EfficientNetV2:
    return EfficientNetV2(MODEL_SPECS[key], num_classes, dropout, stochastic_depth_prob)


def efficientnetv2_s(num_classes: int = 1000, dropout: float | None = None, stochastic_depth_prob: float = 0.2):
    """EfficientNetV2-S (paper Table 4): 21.5M parameters, train 300 px, eval 384 px."""
    return _factory("s", num_classes, dropout, stochastic_depth_prob)


def efficientnetv2_m(num_classes: int = 1000, dropout: float | None = None, stochastic_depth_prob: float = 0.2):
    """EfficientNetV2-M: 54.1M parameters, train 384 px, eval 480 px."""
    return _factory("m", num_classes, dropout, stochastic_depth_prob)


def efficientnetv2_l(num_classes: int = 1000, dropout: float | None = None, stochastic_depth_prob: float = 0.2):
    """EfficientNetV2-L: 118.5M parameters, train 384 px, eval 480 px."""
    return _factory("l", num_classes, dropout, stochastic_depth_prob)


def efficientnetv2_xl(num_classes: int = 1000, dropout: float | None = None, stochastic_depth_prob: float = 0.2):
    """EfficientNetV2-XL: 208.1M parameters, train 384 px, eval 512 px."""
    return _factory("xl", num_classes, dropout, stochastic_depth_prob)


def efficientnetv2_cifar(
    num_classes: int = 10,
    dropout: float | None = None,
    stochastic_depth_prob: float = 0.1,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
) -> EfficientNetV2:
    """EfficientNetV2 for 32 x 32 images (ours): output stride 8, takes 16-64 px and more.

    Stochastic depth defaults to 0.1 rather than 0.2: the network is shallower
    and CIFAR runs are short.
    """
    spec = scale_spec(MODEL_SPECS["cifar"], width_mult, depth_mult)
    return EfficientNetV2(spec, num_classes, dropout, stochastic_depth_prob)


def efficientnetv2_cifar_tiny(
    num_classes: int = 10, dropout: float | None = None, stochastic_depth_prob: float = 0.05
) -> EfficientNetV2:
    """The CIFAR variant at half width and half depth, sized for a laptop CPU."""
    spec = scale_spec(MODEL_SPECS["cifar"], 0.5, 0.5, name="efficientnetv2_cifar_tiny")
    return EfficientNetV2(spec, num_classes, dropout, stochastic_depth_prob)


_BUILDERS = {
    "s": efficientnetv2_s,
    "m": efficientnetv2_m,
    "l": efficientnetv2_l,
    "xl": efficientnetv2_xl,
    "cifar": efficientnetv2_cifar,
    "cifar-tiny": efficientnetv2_cifar_tiny,
    "resnet20": resnet20,  # the CIFAR baseline (effv2_lib.resnet), trained by the same trainer
}
# The short names build_model (and the trainer's --model) accept.
MODEL_NAMES = tuple(_BUILDERS)


# A network of the search space around cifar-tiny, named by its stage codes (effv2_lib.search):
# "arch:F1k3x1-F4k3x2-F4k3x2-M4k3x2-M6k3x2-M6k3x2" is cifar-tiny itself.
ARCH_PREFIX = "arch:"


def check_model_name(name: str) -> str:
    """`name` if it names a network: one of MODEL_NAMES, or ``arch:`` and a search code."""
    if isinstance(name, str) and name.startswith(ARCH_PREFIX):
        from .search import Candidate  # the search's space is built from this module's tables

        Candidate.from_name(name[len(ARCH_PREFIX):])
        return name
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(_BUILDERS)}, or {ARCH_PREFIX} and a "
                         f"network's stage codes (effv2_lib.search, e.g. {ARCH_PREFIX}F1k3x1-F4k3x2-F4k3x2-M4k3x2-"
                         f"M6k3x2-M6k3x2)")
    return name


def build_model(name: str, num_classes: int, **kwargs) -> EfficientNetV2 | ResNetCifar:
    """Build a network by short name: one of s, m, l, xl, cifar, cifar-tiny, resnet20, or a network
    of the search space as ``arch:`` and its stage codes (`effv2_lib.search.Candidate`)."""
    if check_model_name(name).startswith(ARCH_PREFIX):
        from .search import Candidate

        return Candidate.from_name(name[len(ARCH_PREFIX):]).build(num_classes, **kwargs)
    return _BUILDERS[name](num_classes=num_classes, **kwargs)
