"""ResNet-20, the CIFAR baseline: the paper's size, option-A shortcuts, and the trainer's interface."""

import pytest
import torch

from effv2_lib.model import build_model
from effv2_lib.resnet import BasicBlock, ResNetCifar, resnet20


def test_resnet20_has_the_papers_layers_and_parameters():
    model = resnet20()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == 20  # 6n + 2 weighted layers with n = 3
    # He et al. 2016, Table 6: 0.27M; option A adds no parameters to the shortcuts
    assert sum(p.numel() for p in model.parameters()) == 269_722  # option B (1x1 projections): 272,474
    assert model.name == "resnet20" and ResNetCifar(5).name == "resnet32"


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    block = BasicBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (2, 32, 4, 4)
    assert torch.equal(shortcut[:, 8:24], x[:, :, ::2, ::2])  # the input, centred among zero channels
    assert shortcut[:, :8].abs().sum() == 0 and shortcut[:, 24:].abs().sum() == 0
    identity = BasicBlock(16, 16, stride=1)
    assert torch.equal(identity.shortcut(x), x)


def test_build_model_gives_a_trainable_resnet20_with_a_dropout_slot():
    model = build_model("resnet20", num_classes=7, dropout=0.3)
    assert isinstance(model, ResNetCifar) and model.classifier[0].p == 0.3
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 7)  # any size down to min_input_size
    assert resnet20().classifier[0].p == 0.0  # the paper's network has no dropout


@pytest.mark.parametrize("kwargs, error", [(dict(blocks_per_stage=0), ValueError),
                                           (dict(blocks_per_stage=2.0), TypeError),
                                           (dict(dropout=1.5), ValueError)])
def test_resnet_refuses_bad_arguments(kwargs, error):
    with pytest.raises(error):
        ResNetCifar(**kwargs)
