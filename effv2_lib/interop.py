"""Weight exchange with torchvision's EfficientNetV2, tensor by tensor.

Equal parameter counts prove little: the seed article's code matches every
count yet never downsamples in its Fused-MBConv stages.
Copying torchvision's weights into our network and comparing outputs proves the
two compute the same function; ``tests/test_interop.py`` does so for S, M and L.

torchvision's layout (``features.{i}.{j}.block.{k}``) numbers the layers of a
block; ours names them (``stages.{i-1}.{j}.expand``). Our blocks register their
layers in the order they run (see ``blocks._ResidualBlock``), so the k-th named
layer of our block is torchvision's ``block.{k}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .blocks import SqueezeExcitation, StochasticDepth
from .model import EfficientNetV2

__all__ = [
    "torchvision_key_map",
    "load_torchvision_weights",
    "to_torchvision_state_dict",
    "to_torchvision",
    "randomize_batchnorm",
]

# Inside a layer: our ConvBNAct children -> torchvision's Conv2dNormActivation indices,
# our SE names -> torchvision's SqueezeExcitation names.
_CONV_BN = {"conv": "0", "bn": "1"}
_SE = {"reduce": "fc1", "expand": "fc2"}


def _layer_keys(ours: str, theirs: str, layer: nn.Module) -> dict[str, str]:
    """Map every state_dict key of one layer (parameters and buffers)."""
    rename = _SE if isinstance(layer, SqueezeExcitation) else _CONV_BN
    mapping = {}
    for key in layer.state_dict():
        child, _, rest = key.partition(".")
        mapping[f"{ours}.{key}"] = f"{theirs}.{rename[child]}.{rest}"
    return mapping


def torchvision_key_map(model: EfficientNetV2) -> dict[str, str]:
    """Our state_dict key -> torchvision's, for every tensor of ``model``."""
    if not isinstance(model, EfficientNetV2):
        raise TypeError(f"model must be an effv2_lib EfficientNetV2, got {type(model).__name__}")
    mapping = _layer_keys("stem", "features.0", model.stem)
    for i, stage in enumerate(model.stages, start=1):  # features.0 is the stem
        for j, block in enumerate(stage):
            layers = [(n, m) for n, m in block.named_children() if not isinstance(m, StochasticDepth)]
            for k, (name, layer) in enumerate(layers):
                mapping.update(_layer_keys(f"stages.{i - 1}.{j}.{name}", f"features.{i}.{j}.block.{k}", layer))
    mapping.update(_layer_keys("head", f"features.{len(model.stages) + 1}", model.head))
    mapping.update({f"classifier.1.{p}": f"classifier.1.{p}" for p in ("weight", "bias")})
    return mapping


def _check_same_tensors(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor], what: str
) -> None:
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(given[k].shape)}"
        for k in expected
        if k in given and expected[k].shape != given[k].shape
    ]
    if missing or extra or mismatched:
        lines = [f"{what} does not match the target architecture:"]
        for title, items in (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", mismatched)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise ValueError("\n".join(lines))


def load_torchvision_weights(model: EfficientNetV2, source: nn.Module | Mapping[str, Tensor]) -> EfficientNetV2:
    """Copy a torchvision EfficientNetV2 (a model or its state_dict) into ``model``, strictly.

    Every tensor, BatchNorm statistics included, is copied 1:1. A missing or
    extra key or a shape mismatch raises ValueError listing them; nothing is
    copied then. Returns ``model``.
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    if not isinstance(state, Mapping):
        raise TypeError(f"source must be a torchvision model or a state_dict, got {type(source).__name__}")
    mapping = torchvision_key_map(model)
    ours = model.state_dict()
    expected = {theirs: ours[key] for key, theirs in mapping.items()}
    _check_same_tensors(expected, state, "torchvision state_dict")
    model.load_state_dict({key: state[theirs] for key, theirs in mapping.items()}, strict=True)
    return model


def to_torchvision_state_dict(model: EfficientNetV2) -> dict[str, Tensor]:
    """``model``'s weights under torchvision's key names (tensors are copies)."""
    state = model.state_dict()
    return {theirs: state[key].detach().clone() for key, theirs in torchvision_key_map(model).items()}


def to_torchvision(model: EfficientNetV2) -> nn.Module:
    """A torchvision EfficientNetV2 (S, M or L) holding ``model``'s weights."""
    import torchvision.models as tvm

    builders = {"efficientnetv2_s": tvm.efficientnet_v2_s, "efficientnetv2_m": tvm.efficientnet_v2_m,
                "efficientnetv2_l": tvm.efficientnet_v2_l}
    name = model.spec.name
    if name not in builders:
        raise ValueError(f"torchvision has EfficientNetV2 S, M and L only; this model is {name}")
    num_classes = model.classifier[1].out_features
    target = builders[name](num_classes=num_classes, dropout=model.classifier[0].p)
    state = to_torchvision_state_dict(model)
    _check_same_tensors(target.state_dict(), state, "exported state_dict")
    target.load_state_dict(state, strict=True)
    return target


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics.

    Fresh BatchNorms (weight 1, bias 0, mean 0, var 1) hide mistakes such as a
    missing or misplaced normalisation; an equivalence test should use these.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, (low, high) in (
                (m.weight, (0.5, 1.5)), (m.bias, (-0.2, 0.2)),
                (m.running_mean, (-0.2, 0.2)), (m.running_var, (0.5, 1.5)),
            ):
                t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)
    return model
