"""Our network computes torchvision's function: same weights in, same outputs out."""

import pytest
import torch
import torchvision.models as tvm

from effv2_lib import efficientnetv2_cifar, efficientnetv2_l, efficientnetv2_m, efficientnetv2_s
from effv2_lib.evaluate import reestimate_batchnorm
from effv2_lib.interop import (
    load_torchvision_weights,
    randomize_batchnorm,
    to_torchvision,
    to_torchvision_state_dict,
    torchvision_key_map,
)

PAIRS = {
    "s": (efficientnetv2_s, tvm.efficientnet_v2_s),
    "m": (efficientnetv2_m, tvm.efficientnet_v2_m),
    "l": (efficientnetv2_l, tvm.efficientnet_v2_l),
}


@pytest.fixture(scope="module", params=sorted(PAIRS))
def loaded_pair(request):
    ours_factory, tv_factory = PAIRS[request.param]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    theirs = randomize_batchnorm(tv_factory(num_classes=7), generator)
    # Random affine BatchNorm parameters, then statistics measured on random images: with
    # purely random statistics the activations saturate and every input gives nearly the same
    # logits, which would make a 1e-5 agreement meaningless.
    reestimate_batchnorm(theirs, [torch.randn(8, 3, 48, 48, generator=generator)])
    theirs.eval()
    ours = load_torchvision_weights(ours_factory(num_classes=7), theirs).eval()
    return ours, theirs


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 96, 64), (1, 3, 33, 70)])
def test_outputs_agree_with_torchvision(loaded_pair, shape):
    ours, theirs = loaded_pair
    generator = torch.Generator().manual_seed(1)
    x, other = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
        # The outputs must depend on the input far more than the tolerance, or agreeing means little.
        assert (theirs(other) - expected).abs().max() > 1e-2
        torch.testing.assert_close(ours.forward_features(x), theirs.features(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_every_tensor_maps_one_to_one(loaded_pair):
    ours, theirs = loaded_pair
    mapping = torchvision_key_map(ours)
    assert sorted(mapping) == sorted(ours.state_dict())
    assert sorted(mapping.values()) == sorted(theirs.state_dict())
    theirs_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs_state[mapping[key]]), key


def test_export_round_trip(loaded_pair):
    ours, theirs = loaded_pair
    exported = to_torchvision(ours).eval()
    state = to_torchvision_state_dict(ours)
    for key, value in theirs.state_dict().items():
        assert torch.equal(state[key], value), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), theirs(x), rtol=0, atol=0)


def test_a_wrong_state_dict_is_refused_with_the_keys_listed():
    ours = efficientnetv2_s(num_classes=10)
    state = tvm.efficientnet_v2_s(num_classes=10).state_dict()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    del state["features.1.0.block.0.1.running_mean"]
    state["features.9.extra"] = torch.zeros(1)
    state["classifier.1.weight"] = torch.zeros(5, 1280)
    with pytest.raises(ValueError) as info:
        load_torchvision_weights(ours, state)
    message = str(info.value)
    assert "features.1.0.block.0.1.running_mean" in message
    assert "features.9.extra" in message
    assert "classifier.1.weight" in message and "(10, 1280)" in message and "(5, 1280)" in message
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())  # nothing copied


def test_other_architectures_are_refused():
    with pytest.raises(ValueError, match="S, M and L"):
        to_torchvision(efficientnetv2_cifar())
    with pytest.raises(ValueError, match="unexpected keys"):
        load_torchvision_weights(efficientnetv2_cifar(), tvm.efficientnet_v2_s().state_dict())
    with pytest.raises(TypeError, match="EfficientNetV2"):
        torchvision_key_map(tvm.efficientnet_v2_s())
