"""Tiny stand-in networks with the package's network contract: ``forward(x) -> (logits, features)``."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv 3x3x3 -> ReLU -> (dropout) -> conv 1x1x1; returns ``(logits, features)``.

    With ``symmetric`` the 3x3x3 kernel is averaged over the 8 flips, so the network commutes with
    mirroring (zero padding is symmetric too).
    """

    def __init__(self, num_classes: int = 2, seed: int = 0, symmetric: bool = False, dropout: float = 0.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.in_channels, self.num_classes = 1, num_classes
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv3d(4, num_classes, 1)
        self.drop = nn.Dropout3d(dropout) if dropout else nn.Identity()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
            if symmetric:
                w = self.conv1.weight
                flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
                w.copy_(sum(torch.flip(w, f) if f else w for f in flips) / len(flips))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.drop(torch.relu(self.conv1(x)))
        return self.conv2(features), features


class ThresholdNet(nn.Module):
    """Foreground logit ``k * x``: the label is ``x > 0`` (above the mean after z-scoring)."""

    def __init__(self, k: float = 8.0):
        super().__init__()
        self.in_channels, self.num_classes, self.k = 1, 2, k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([torch.zeros_like(x), self.k * x], dim=1), x


class TinyDual(nn.Module):
    """Two networks with the ``DualModel`` interface (``net_a``, ``net_b``, ``kind``)."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module, kind: str = "dual"):
        super().__init__()
        self.net_a, self.net_b, self.kind = net_a, net_b, kind
        self.in_channels, self.num_classes = net_a.in_channels, net_a.num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net_a(x)[0], self.net_b(x)[0]


def tiny_dual(num_classes: int = 2, symmetric: bool = False) -> TinyDual:
    return TinyDual(TinyNet(num_classes, 0, symmetric), TinyNet(num_classes, 1, symmetric))
