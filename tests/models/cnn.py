"""Hand-written CNNs (no torchvision available)."""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register


class AlexNetSmall(nn.Module):
    """torchvision AlexNet layer order, tiny channel counts, 64x64 input."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=11, stride=4, padding=2),  # 64 -> 15
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> 7
            nn.Conv2d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> 3
            nn.Conv2d(32, 48, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(48, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> 1
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))  # 1x1 -> 2x2 (replicates)
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Linear(32 * 2 * 2, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(64, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def _randomize_bn(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial running stats / affine params."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


class BasicBlock(nn.Module):
    """torchvision-style BasicBlock, including the in-place ``out += identity``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNetTiny(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class CNNBench(nn.Module):
    """Benchmark CNN for (8, 3, 64, 64) inputs."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        chans = [3, 32, 64, 128]
        stages = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            stages.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
            )
        self.stages = nn.Sequential(*stages)  # 64 -> 8
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x):
        x = self.stages(x)
        x = self.pool(x).flatten(1)
        return self.head(x)


@register("alexnet_small", "cnn", "inplace")
def alexnet_small():
    torch.manual_seed(0)
    model = AlexNetSmall().eval()
    return model, (torch.rand(2, 3, 64, 64),), {}


@register("resnet_block", "cnn", "buffer", "inplace")
def resnet_block():
    torch.manual_seed(0)
    model = ResNetTiny()
    _randomize_bn(model)
    model.eval()
    return model, (torch.randn(2, 3, 16, 16),), {}


@register("cnn_bench", "cnn", "buffer", "bench")
def cnn_bench():
    torch.manual_seed(0)
    model = CNNBench()
    _randomize_bn(model)
    model.eval()
    return model, (torch.randn(8, 3, 64, 64),), {}
