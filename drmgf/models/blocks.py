"""Building blocks shared by the ResNet-style models."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias) + BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """ResNet basic block with a 1x1-conv shortcut when the shape changes (prunable, unlike padding)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, stride, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Stem(nn.Sequential):
    """3x3 conv + BN + ReLU at full resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ClassifierHead(nn.Module):
    """Optional conv block, global average pooling, linear classifier."""

    def __init__(self, cin: int, num_classes: int, conv: bool) -> None:
        super().__init__()
        self.features: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
            if conv else nn.Identity()
        )
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def resnet_stages(depth: int, width: int) -> tuple[list[int], list[int]]:
    """Blocks per stage and widths of a CIFAR ResNet of ``depth`` = 6n + 2."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"--depth must be 6n+2 (8, 14, 20, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return [n, n, n], [width, 2 * width, 4 * width]


def make_blocks(depth: int, width: int) -> nn.ModuleList:
    """All residual blocks of a CIFAR ResNet in order (stride 2 at the start of stages 2 and 3)."""
    counts, widths = resnet_stages(depth, width)
    blocks, cin = nn.ModuleList(), width
    for stage, (count, cout) in enumerate(zip(counts, widths)):
        for b in range(count):
            blocks.append(BasicBlock(cin, cout, stride=2 if stage > 0 and b == 0 else 1))
            cin = cout
    return blocks


class GradientRescale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by a constant (gradient equilibrium)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None  # type: ignore[attr-defined]


def init_weights(model: nn.Module) -> None:
    """Kaiming init for convs, unit BN, small linear layers: the usual CIFAR ResNet recipe."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
