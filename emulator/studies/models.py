"""The studies' networks: logistic regression, an MLP, a small CNN, and the CIFAR-style ResNet-18.

Every model takes images (N, C, H, W) and returns logits; parameters are initialised from an
explicit ``torch.Generator`` so a seed fixes the whole run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MODELS = ("logreg", "mlp", "cnn", "resnet18")


class LogReg(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], classes: int):
        super().__init__()
        self.fc = nn.Linear(math.prod(in_shape), classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(x.flatten(1))
        return out


class Mlp(nn.Module):
    """784-100-10 on Fashion-MNIST (the reference quick study's network)."""

    def __init__(self, in_shape: tuple[int, ...], classes: int, hidden: int = 100):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(in_shape), hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return out


class SmallCnn(nn.Module):
    """conv5x5(16)-relu-pool2, conv5x5(32)-relu-pool2, linear; 'same' padding, any input size >= 4."""

    def __init__(self, in_shape: tuple[int, ...], classes: int, width: int = 16):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.fc = nn.Linear(2 * width * (h // 4) * (w // 4), classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        out: Tensor = self.fc(x.flatten(1))
        return out


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        y: Tensor = torch.relu(out + self.shortcut(x))
        return y


class ResNet18(nn.Module):
    """The CIFAR ResNet-18 of the paper's code (3x3 stem, no max-pool), any channel count."""

    def __init__(self, in_shape: tuple[int, ...], classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        out = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(out, 1), 1)
        y: Tensor = self.linear(out)
        return y


def build_model(name: str, in_shape: tuple[int, ...], classes: int, seed: int) -> nn.Module:
    """Model ``name`` with every parameter drawn from ``torch.Generator().manual_seed(seed)``.

    Weights: uniform(+-1/sqrt(fan_in)) (torch's default Linear/Conv range, but from the explicit
    generator); biases 0; BatchNorm weight 1, bias 0.
    """
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape!r}")
    cls = {"logreg": LogReg, "mlp": Mlp, "cnn": SmallCnn, "resnet18": ResNet18}.get(name)
    if cls is None:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    model: nn.Module = cls(in_shape, classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                bound = 1 / math.sqrt(m.weight[0].numel())
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 * bound - bound)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()
    return model
