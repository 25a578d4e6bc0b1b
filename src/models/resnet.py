"""Residual networks of spec §6: CIFAR ResNet-56 and ImageNet ResNet-50."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU; all convs bias-free.

    When the block changes resolution or width the shortcut is a 1x1 conv + BN projection
    (named ``shortcut.conv`` / ``shortcut.bn``), otherwise the identity.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(planes),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2 (He et al. 2016, §4.2) with projection shortcuts.

    A 3x3 stem conv (16 filters) + BN + ReLU, three stages of ``n`` basic blocks with
    16/32/64 filters (the first block of stages 2 and 3 has stride 2), global average pool and
    a Linear 64 -> classes. Blocks are numbered flat (``blocks.0`` ... ``blocks.{3n-1}``), so
    the stride-2 projections of ResNet-56 are ``blocks.9.shortcut`` and ``blocks.18.shortcut``.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks = []
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnet56", input_shape=(3, 32, 32), default_num_classes=10, is_conv=True)
def resnet56(num_classes: int, scaled_density: float | None = None) -> nn.Module:
    """CIFAR ResNet-56 (855 770 parameters for CIFAR-10, 861 620 for CIFAR-100).

    Init: every Conv2d/Linear weight Kaiming-normal (fan_in, gain sqrt 2); the fc bias keeps
    PyTorch's default and BN starts at (1, 0). With ``scaled_density = d`` the weights are
    instead drawn from N(0, sigma^2), sigma = gain / sqrt(fan_in * d): a layer keeping a
    fraction d of its inputs then has the output variance of a dense layer. As in the
    reference, ``d`` is the global density and the gain is ``calculate_gain('leaky_relu')``
    (slope 0.01, about 1.41414).
    """
    if scaled_density is not None and not 0.0 < scaled_density <= 1.0:
        raise ValueError(f"resnet56: scaled_density must be in (0, 1], got {scaled_density}")
    model = CifarResNet(blocks_per_stage=9, num_classes=num_classes)
    gain = nn.init.calculate_gain("leaky_relu")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scaled_density is None:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                fan_in = m.weight[0].numel()
                nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_in * scaled_density))
    return model


@register_model("resnet50", input_shape=(3, 224, 224), default_num_classes=1000, is_conv=True)
def resnet50(num_classes: int) -> nn.Module:
    """torchvision ResNet-50 v1.5 (stride on the bottleneck's 3x3 conv), never pretrained.

    torchvision's own init is the one the paper used: every conv (downsample included)
    Kaiming-normal (fan_out, ReLU), BN (1, 0), fc default. ``zero_init_residual=False`` pins
    that each block's last BN gamma starts at 1, not 0.
    """
    import torchvision  # lazy: ~1 s of start-up for the runs that never use it

    return torchvision.models.resnet50(weights=None, num_classes=num_classes, zero_init_residual=False)
