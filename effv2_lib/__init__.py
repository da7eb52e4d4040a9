"""effv2_lib: the canonical code behind the EfficientNetV2 teaching notebooks."""

from .blocks import ConvBNAct, FusedMBConv, MBConv, SqueezeExcitation, StochasticDepth
from .model import (
    MODEL_SPECS,
    EfficientNetV2,
    ModelSpec,
    StageSpec,
    build_model,
    efficientnetv2_cifar,
    efficientnetv2_cifar_tiny,
    efficientnetv2_l,
    efficientnetv2_m,
    efficientnetv2_s,
    efficientnetv2_xl,
    scale_spec,
)

__all__ = [
    "ConvBNAct",
    "SqueezeExcitation",
    "StochasticDepth",
    "MBConv",
    "FusedMBConv",
    "StageSpec",
    "ModelSpec",
    "MODEL_SPECS",
    "EfficientNetV2",
    "scale_spec",
    "build_model",
    "efficientnetv2_s",
    "efficientnetv2_m",
    "efficientnetv2_l",
    "efficientnetv2_xl",
    "efficientnetv2_cifar",
    "efficientnetv2_cifar_tiny",
]
