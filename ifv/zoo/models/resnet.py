"""The CIFAR ResNets of He et al. 2016 (Sec. 4.2 of their paper): ResNet-20, -32, -44, ...

A 3x3 convolution to 16 channels, then three stages of ``n`` basic blocks (two 3x3
convolutions with batch norm, ReLU after the residual sum) at 16, 32 and 64 channels and
32x32, 16x16, 8x8, the first block of stages 2 and 3 striding by 2 with the parameter-free
shortcut (option A: subsampling and zero channels); global average pooling and a linear
classifier. Depth 6n + 2. The named children are the tappable layers: ``stem`` (after its
ReLU), ``layer1``, ``layer2``, ``layer3`` (each the output of its last block, after the
ReLU), ``pool`` and ``classifier`` (the logits). Inputs are images in [0, 1]; the network
normalizes them itself with the training data's channel statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# CIFAR-10's channel means and standard deviations (training set)
CIFAR10_NORMALIZE = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.stride = stride
        self.extra = channels - in_channels

    def shortcut(self, x: Tensor) -> Tensor:
        """Option A: identity, or subsampled by the stride with zero channels appended."""
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def stage_channels(width: int = 16) -> list[int]:
    """Output channels of stem, layer1, layer2, layer3."""
    return [width, width, 2 * width, 4 * width]


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs in [0, 1]; ``depth=20`` is ResNet-20 (0.27M weights)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16,
                 normalize: tuple[tuple[float, ...], tuple[float, ...]] | None
                 = CIFAR10_NORMALIZE) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet's depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        ch = stage_channels(width)
        mean, std = normalize or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, ch[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(ch[0]), nn.ReLU())

        def stage(c_in: int, c: int, stride: int) -> nn.Sequential:
            return nn.Sequential(*(BasicBlock(c_in if i == 0 else c, c, stride if i == 0 else 1)
                                   for i in range(n)))

        self.layer1 = stage(ch[0], ch[1], 1)
        self.layer2 = stage(ch[1], ch[2], 2)
        self.layer3 = stage(ch[2], ch[3], 2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem((x - self.mean) / self.std)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.pool(x))
