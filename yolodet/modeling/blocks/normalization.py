"""``[normalization]`` / ``[lrn]``: Darknet's local response normalisation across channels, as its CPU forward
(``forward_normalization_layer``) computes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.base import Block, BuildContext, Shape
from yolodet.modeling.registry import BLOCKS


class LocalResponseNorm(Block):
    """``out[k] = x[k] * norm[k] ** -beta`` with ``norm[k] = kappa + alpha * S[k]``, [B, C, H, W] -> same shape.

    ``S[k]`` is the sum of ``x[j]^2`` over the channels ``j`` in ``[k - (size-1)/2, k + size/2]`` (inside the input)
    **minus** ``x[size/2]^2`` when that channel exists: Darknet starts its running window sum with channels
    ``0 .. size/2 - 1`` instead of ``0 .. size/2``, so the square of channel ``size/2`` is never added, and is still
    subtracted when the window leaves it. ``alpha`` is not divided by ``size``.

    Warning: this is not ``torch.nn.functional.local_response_norm`` (which divides ``alpha`` by ``size``, pads
    the window symmetrically and has no missing channel).
    """

    def __init__(self, size: int, alpha: float, beta: float, kappa: float, out_shape: Shape) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.kappa, self.out_shape = size, alpha, beta, kappa, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        b, c, h, w = x.shape
        sq = (x * x).reshape(b, 1, c, h * w)
        before, after = (self.size - 1) // 2, self.size // 2
        ones = torch.ones(1, 1, self.size, 1, dtype=x.dtype, device=x.device)
        window = F.conv2d(F.pad(sq, (0, 0, before, after)), ones).reshape(b, c, h, w)
        if after < c:
            window = window - sq[:, :, after].reshape(b, 1, h, w)
        return x * torch.pow(self.kappa + self.alpha * window, -self.beta)


@BLOCKS.register("normalization", keys=("size", "alpha", "beta", "kappa"))
def build_normalization(block: CfgBlock, ctx: BuildContext) -> LocalResponseNorm:
    """Local response normalisation across channels (defaults as ``parse_normalization``: size 5, alpha 1e-4,
    beta 0.75, kappa 1)."""
    c = ctx.in_shape[0]
    size = block.get_int("size", 5)
    if size < 1:
        raise block.error(f"must be >= 1, got {size}", "size")
    if size // 2 > c:
        raise block.error(f"size/2 = {size // 2} is more than the input's {c} channels: Darknet's first window "
                          "sum would read past its buffer", "size")
    return LocalResponseNorm(size, block.get_float("alpha", 1e-4), block.get_float("beta", 0.75),
                             block.get_float("kappa", 1.0), ctx.in_shape)
