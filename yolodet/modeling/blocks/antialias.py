"""Darknet's anti-aliasing (``antialiasing=`` of ``[convolutional]`` and ``[maxpool]``): the layer runs at stride 1,
then a fixed depthwise blur with the cfg's stride (``make_convolutional_layer`` / ``make_maxpool_layer`` build it as
the layer's ``input_layer``, whatever the stride: ``stride=1`` blurs too).

``antialiasing=2``: a 2x2 box blur (weights 1/4, no padding); any other non-zero value: the 3x3 binomial
``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` with padding 1. The blur has no bias and no activation, and its weights
are not in the ``.weights`` file (Darknet sets them in code), so the file holds the host layer's tensors only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.base import Block, Shape


def _kernel(kind: int) -> torch.Tensor:
    """[size, size] blur weights of ``antialiasing=kind``."""
    if kind == 2:
        return torch.full((2, 2), 0.25)
    row = torch.tensor([1.0, 2.0, 1.0])
    return row[:, None] * row[None, :] / 16


class Antialiased(Block):
    """A host layer (``inner``: a stride-1 :class:`~yolodet.modeling.blocks.conv.ConvBlock` or max-pool) followed by
    Darknet's fixed blur: ``depthwise_conv(inner(x), kernel, stride, padding)``. [B, C, H, W] -> [B, C, H', W'].

    Attributes:
        host_shape: the host layer's (C, H, W), which Darknet records as the layer's ``out_c/out_h/out_w``: a
            ``[route]``/``[shortcut]`` reading this layer by index would get those dims with the blurred values in
            the first H'*W'*C cells (see :func:`yolodet.modeling.model._build`, which refuses that when they differ).
    """

    def __init__(self, inner: Block, kind: int, stride: tuple[int, int], out_shape: Shape) -> None:
        super().__init__()
        self.inner, self.stride, self.out_shape = inner, stride, out_shape
        self.host_shape = inner.out_shape
        self.padding = 0 if kind == 2 else 1
        channels = inner.out_shape[0]
        # not persistent: fixed by the cfg, so neither in the state_dict (checkpoints) nor in .weights
        self.register_buffer("kernel", _kernel(kind).expand(channels, 1, -1, -1).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        y = self.inner(x, refs)
        return F.conv2d(y, self.kernel.to(y.dtype), None, self.stride, self.padding, groups=y.shape[1])

    def darknet_tensors(self) -> list[torch.Tensor]:
        return self.inner.darknet_tensors()


def antialiased(block: CfgBlock, inner: Block, stride: tuple[int, int]) -> Antialiased:
    """Wrap ``inner`` (built at stride 1) in the blur of ``block``'s ``antialiasing=`` with ``stride`` (y, x)."""
    kind = block.get_int("antialiasing")
    size, pad = (2, 0) if kind == 2 else (3, 1)
    c, h, w = inner.out_shape
    if h + 2 * pad < size or w + 2 * pad < size:
        raise block.error(f"the {size}x{size} blur needs the layer's stride-1 output ({h} x {w}) to be at least "
                          f"{size - 2 * pad} x {size - 2 * pad}", "antialiasing")
    out = (c, (h + 2 * pad - size) // stride[0] + 1, (w + 2 * pad - size) // stride[1] + 1)
    return Antialiased(inner, kind, stride, out)
