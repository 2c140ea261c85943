"""YOLOv1 layers: ``[local]`` (locally connected: one filter bank per output position) and the ``[detection]`` head.

``[detection]`` is the identity in the model: its input is the raw flat head output ``[B, side*side*(classes +
num*(1 + coords)), 1, 1]`` (Darknet's layout: all class scores of every cell, then every box's confidence, then every
box's coordinates); :class:`DetectionSpec` tells decode how to read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.base import MAX_ANCHORS, Block, BuildContext, HeadBlock, Shape
from yolodet.modeling.blocks.conv import _check_weights, make_activation
from yolodet.modeling.registry import BLOCKS


class Local(Block):
    """``[local]``: [B, C, H, W] -> [B, n, H', W'], an unshared ``size x size`` filter per output position.

    Darknet (``local_layer.c``): ``out[f, j] = bias[f, j] + sum_k weights[j, f, k] * im2col(x)[k, j]``; the
    ``.weights`` file holds ``bias[n * H' * W']`` then ``weights[H' * W', n, C * size * size]``.
    """

    def __init__(self, size: int, stride: int, pad: int, in_c: int, out_shape: Shape, act: nn.Module) -> None:
        super().__init__()
        n, oh, ow = out_shape
        self.size, self.stride, self.pad, self.act, self.out_shape = size, stride, pad, act, out_shape
        self.bias = nn.Parameter(torch.zeros(n, oh, ow))
        self.weight = nn.Parameter(torch.zeros(oh * ow, n, in_c * size * size))

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # [B, C*k*k, L]
        out = torch.einsum("lfk,bkl->bfl", self.weight, cols).reshape(x.shape[0], *self.out_shape)
        return self.act(out + self.bias)

    def darknet_tensors(self) -> list[torch.Tensor]:
        return [self.bias.data, self.weight.data]


@BLOCKS.register("local", keys=("filters", "size", "stride", "pad", "activation"))
def build_local(block: CfgBlock, ctx: BuildContext) -> Local:
    """Darknet's ``local_out_height``: ``(h - (pad ? 1 : size)) / stride + 1``, with ``pad`` pixels of padding."""
    c, h, w = ctx.in_shape
    n, size, stride = block.get_int("filters", 1), block.get_int("size", 1), block.get_int("stride", 1)
    pad = block.get_int("pad", 0)
    for key, value in (("filters", n), ("size", size), ("stride", stride)):
        if value < 1:
            raise block.error(f"must be >= 1, got {value}", key)
    if pad < 0:
        raise block.error(f"must be >= 0, got {pad}", "pad")
    oh, ow = (h - (1 if pad else size)) // stride + 1, (w - (1 if pad else size)) // stride + 1
    if (h + 2 * pad - size) // stride + 1 != oh or (w + 2 * pad - size) // stride + 1 != ow:
        raise block.error(f"pad={pad} with size={size}: Darknet's output size and its im2col disagree (use "
                          "pad=0, or pad=1 with size=3)", "pad")
    if oh < 1 or ow < 1:
        raise block.error(f"input {h}x{w} is too small for size={size}", "size")
    _check_weights(block, oh * ow * n * c * size * size, "filters")
    return Local(size, stride, pad, c, (n, oh, ow), make_activation(block, "logistic"))


@dataclass(frozen=True)
class DetectionSpec:
    """What a ``[detection]`` section says (YOLOv1).

    Attributes:
        layer: Darknet layer index; classes, num (boxes per cell), coords (4), side (grid side).
        softmax: Darknet applies a softmax to each cell's class scores (``softmax=1``).
        sqrt: box w, h are predicted as square roots (``sqrt=1``).
        stride: input pixels per grid cell at the cfg's network size (``width // side``).
    """

    layer: int
    classes: int
    num: int
    coords: int
    side: int
    softmax: bool
    sqrt: bool
    stride: int = 1
    kind: str = "detection"


class DetectionHead(HeadBlock):
    """Identity; see the module docstring for the layout."""


@BLOCKS.register("detection", keys=("classes", "coords", "num", "side", "softmax", "sqrt"))
def build_detection(block: CfgBlock, ctx: BuildContext) -> DetectionHead:
    """A YOLOv1 head: the input must have ``side*side*(classes + num*(1+coords))`` values."""
    classes, coords = block.get_int("classes", 1), block.get_int("coords", 1)
    num, side = block.get_int("num", 1), block.get_int("side", 7)
    for key, value in (("classes", classes), ("coords", coords), ("num", num), ("side", side)):
        if value < 1:
            raise block.error(f"must be >= 1, got {value}", key)
    if num > MAX_ANCHORS:
        raise block.error(f"must be at most {MAX_ANCHORS}, got {num}", "num")
    expected = side * side * (classes + num * (1 + coords))
    if math.prod(ctx.in_shape) != expected:
        raise block.error(f"the input has {math.prod(ctx.in_shape)} values but side*side*(classes + num*(1 + "
                          f"coords)) = {expected}", "side")
    spec = DetectionSpec(ctx.index, classes, num, coords, side, bool(block.get_int("softmax", 0)),
                         bool(block.get_int("sqrt", 0)), stride=max(1, ctx.net.width // side))
    return DetectionHead(spec, ctx.in_shape)
