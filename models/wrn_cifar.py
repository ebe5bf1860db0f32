"""CIFAR-style Wide Residual Networks, WRN-d-k (Zagoruyko & Komodakis, 2016).

The layout of the paper's CIFAR models:

    conv3x3(3 -> 16)
    group 1: N pre-activation basic blocks, 16k channels, stride 1   (32x32)
    group 2: N blocks, 32k channels, first block stride 2             (16x16)
    group 3: N blocks, 64k channels, first block stride 2             (8x8)
    BN-ReLU, 8x8 average pool (global average pool at 32x32 input), fully connected

with N = (d - 4) / 6. A basic block is BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus the identity,
or a 1x1 convolution on the pre-activated input when the width or stride changes (as in the
authors' code). Weights: Kaiming-normal convolutions (fan_out), BN weight 1 / bias 0, zero FC bias.

Importable by other tools (training artifacts reuse it):

    from wrn_cifar import WideResNet, parse_arch
    depth, width = parse_arch("wrn-16-4")
    model = WideResNet(depth, width, num_classes=10, dropout=0.0)
"""

from __future__ import annotations

import re

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["BasicBlock", "WideResNet", "parse_arch", "canonical_name"]

_ARCH_RE = re.compile(r"^wrn[-_](\d+)[-_](\d+)$", re.IGNORECASE)


def parse_arch(arch: str) -> tuple[int, int]:
    """Parse "wrn-16-4" or "wrn_16_4" into (depth, widen_factor); raise ValueError otherwise."""
    m = _ARCH_RE.match(arch.strip())
    if not m:
        raise ValueError(f"not a CIFAR WRN architecture name: {arch!r} (expected wrn-DEPTH-WIDTH, e.g. wrn-16-4)")
    depth, width = int(m.group(1)), int(m.group(2))
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
    if width < 1:
        raise ValueError(f"WRN widen factor must be >= 1, got {width}")
    return depth, width


def canonical_name(depth: int, width: int) -> str:
    """The repository name for WRN-d-k, e.g. wrn_16_4."""
    return f"wrn_{depth}_{width}"


class BasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # When the shape changes, the shortcut sees the pre-activated input (authors' code).
        identity = x if self.shortcut is None else self.shortcut(o)
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout > 0:
            y = F.dropout(y, p=self.dropout, training=self.training)
        y = self.conv2(y)
        return y + identity


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs (CIFAR); input (N, 3, 32, 32), output (N, num_classes) logits."""

    def __init__(self, depth: int = 16, widen_factor: int = 4, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor, self.num_classes = depth, widen_factor, num_classes
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._group(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._group(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)  # == AvgPool2d(8) at 32x32 input
        self.fc = nn.Linear(widths[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _group(in_planes: int, out_planes: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        layers = [BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
                  for i in range(n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = F.relu(self.bn(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


if __name__ == "__main__":  # quick self-check: python models/wrn_cifar.py
    for arch in ("wrn-16-4", "wrn-28-10", "wrn_10_1"):
        d, k = parse_arch(arch)
        m = WideResNet(d, k).eval()
        params = sum(p.numel() for p in m.parameters())
        with torch.no_grad():
            out = m(torch.randn(2, 3, 32, 32))
        print(f"{arch}: {params / 1e6:.2f}M params, output {tuple(out.shape)}")
