"""Seed models from the torchlens README / figure legend."""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register


class DemoNetwork(nn.Module):
    """Figure-legend demo: module & functional relu, an internal randn, a buffer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(in_features=5, out_features=5)
        self.relu_module = nn.ReLU()
        self.register_buffer("example_buffer", torch.ones(5))

    def forward(self, x):
        x = x + 1
        x = self.relu_module(x)
        x = self.fc(x)
        x = nn.functional.relu(x)
        x = x + torch.randn(x.shape)
        y = x**2
        x = x / y
        x = x * self.example_buffer
        return x


class RecurrentDemo(nn.Module):
    """Legend's RecurrentNetwork: the same fc applied 3 times."""

    n_loops = 3

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(in_features=5, out_features=5)

    def forward(self, x):
        for _ in range(self.n_loops):
            x = self.fc(x)
            x = x + 1
            x = x * 2
        return x


class SimpleRecurrent(RecurrentDemo):
    """README's SimpleRecurrent: the same loop body, 4 passes."""

    n_loops = 4


class Submodule2(nn.Module):
    def forward(self, x):
        x = x + 2
        w = torch.cos(x)
        y = torch.sin(x)
        z = torch.tan(x)
        x = w + y + z
        return x


class Submodule1(nn.Module):
    def __init__(self):
        super().__init__()
        self.submodule2 = Submodule2()

    def forward(self, x):
        x = x + 1
        x = self.submodule2(x)
        x = x * 4
        return x


class NetworkOrganizationDemo(nn.Module):
    """Legend's nested-submodule / conditional demo (no parameters)."""

    def __init__(self):
        super().__init__()
        self.submodule1 = Submodule1()

    def forward(self, x):
        if torch.sum(x) > 0:  # noqa: SIM108  (kept as in the seed figure)
            x = x * 2
        else:
            x = x + 1
        w = 1 / x
        y = torch.log(x)
        z = x**2
        x = w + y + z
        x = self.submodule1(x)
        x = x + 1
        x = x * 2
        return x


@register("demo_network", "seed", "random", "buffer", "internal_tensor")
def demo_network():
    torch.manual_seed(0)
    model = DemoNetwork().eval()
    return model, (torch.rand(5, 5),), {}


@register("recurrent_demo", "seed", "recurrent", "loop")
def recurrent_demo():
    torch.manual_seed(0)
    model = RecurrentDemo().eval()
    return model, (torch.rand(5, 5),), {}


@register("simple_recurrent", "seed", "recurrent", "loop")
def simple_recurrent():
    torch.manual_seed(0)
    model = SimpleRecurrent().eval()
    return model, (torch.rand(5, 5),), {}


@register("nested_demo", "seed", "conditional", "param_free", "nested")
def nested_demo():
    torch.manual_seed(0)
    model = NetworkOrganizationDemo().eval()
    return model, (torch.rand(5, 5),), {}


class AlexNet(nn.Module):
    """torchvision's AlexNet, layer for layer (torchvision is not installed here), for the
    seeds' examples that assert its shapes and counts. Not in the zoo: 61 M parameters."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # SEED-FEATURES
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x
