"""Darknet's activations (``src/activations.c``, ``activations.h``) that PyTorch lacks or computes differently.

Each takes and returns [B, C, H, W] (the channel-wise ``normalize_channels*`` ones normalise over C at each
position). Constants are Darknet's float ones (``selu`` uses ``1.0507f`` and ``1.6732f``, not the exact values).
"""

from __future__ import annotations

import torch
from torch import nn


class Selu(nn.Module):
    """``selu``: ``x >= 0 ? 1.0507 x : 1.0507 * 1.6732 * (exp(x) - 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x))


class Gelu(nn.Module):
    """``gelu``: ``0.5 x (1 + tanh(0.797885 x + 0.035677 x^3))`` (Darknet's constants)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x ** 3))


class Loggy(nn.Module):
    """``loggy``: ``2 / (1 + exp(-x)) - 1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(x) - 1


class Ramp(nn.Module):
    """``ramp``: ``x * (x > 0) + 0.1 x``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + 0.1 * x


class Plse(nn.Module):
    """``plse``: piecewise linear sigmoid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5))


class Lhtan(nn.Module):
    """``lhtan``: leaky hard tanh on [0, 1] (slope 0.001 outside)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))


class Stair(nn.Module):
    """``stair``: ``floor(x / 2)`` at even ``floor(x)``, else ``x - floor(x) + floor(x / 2)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = torch.floor(x)
        half = torch.floor(x / 2)
        return torch.where(torch.remainder(n, 2) == 0, half, x - n + half)


class HardMish(nn.Module):
    """``hard_mish``: ``x`` for x > 0, ``x^2 / 2 + x`` for -2 < x <= 0, else 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


class NormalizeChannels(nn.Module):
    """``normalize_channels``: at each position, ``max(x, 0) / (0.0001 + sum_c max(x_c, 0))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.relu(x)
        return pos / (0.0001 + pos.sum(1, keepdim=True))


class NormalizeChannelsSoftmax(nn.Module):
    """``normalize_channels_softmax[_maxval]``: ``exp(x - m) / (0.0001 + sum_c exp(x_c - m))`` with ``m`` the
    channel max (``maxval``) or 0."""

    def __init__(self, use_max: bool) -> None:
        super().__init__()
        self.use_max = use_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_max:
            x = x - x.amax(1, keepdim=True)
        e = torch.exp(x)
        return e / (0.0001 + e.sum(1, keepdim=True))
