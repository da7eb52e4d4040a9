"""ResNet-20 for CIFAR: the baseline a reader already knows.

He, Zhang, Ren & Sun (2016), "Deep Residual Learning for Image Recognition", Section 4.2
(CIFAR-10 experiments): a 3x3 convolution with 16 filters, then 3 stages of n basic blocks
(two 3x3 convolutions each) on 32x32, 16x16 and 8x8 maps with 16, 32 and 64 filters, global
average pooling and a 10-way linear layer; 6n + 2 weighted layers, so n = 3 gives ResNet-20
with 0.27M parameters (91.25% on CIFAR-10 after 164 epochs in the paper's Table 6).

Shortcuts are the paper's option A for CIFAR: the identity, and where a stage halves the map
and doubles the channels, the input subsampled by 2 with the new channels zero (no
parameters). The kit trains it with the same trainer and recipe as EfficientNetV2, so its
head has the same dropout slot (rate 0 reproduces the paper's network exactly).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int, check_real

__all__ = ["BasicBlock", "ResNetCifar", "resnet20"]


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, ReLU between and after the sum with the (option A) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: Tensor) -> Tensor:
        # Option A: [N, C, H, W] -> [N, C + extra, H / s, W / s], the new channels zero.
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32x32 images; `blocks_per_stage` is n."""

    eval_size = 32  # px; the trainer evaluates at the model's eval_size
    min_input_size = 4  # output stride 4: a smaller image leaves no 8x8 stage to pool

    def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        n = check_int("blocks_per_stage", blocks_per_stage, 1)
        check_int("num_classes", num_classes, 1)
        check_real("dropout", dropout, 0.0, 1.0)
        self.name = f"resnet{6 * n + 2}"
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        layers, width = [], 16
        for stage, out in enumerate((16, 32, 64)):
            for i in range(n):
                layers.append(BasicBlock(width, out, 2 if stage > 0 and i == 0 else 1))
                width = out
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(64, num_classes))
        for module in self.modules():  # He et al. 2015 initialization, as the paper's Section 3.4 cites
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))  # [N, 64, H/4, W/4]
        return self.classifier(self.pool(x).flatten(1))  # [N, num_classes]


def resnet20(num_classes: int = 10, dropout: float | None = None) -> ResNetCifar:
    """ResNet-20 (He et al. 2016, Section 4.2): 3 blocks per stage, 269,722 parameters for 10 classes."""
    return ResNetCifar(3, num_classes, 0.0 if dropout is None else dropout)
