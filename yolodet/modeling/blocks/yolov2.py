"""YOLOv2 layers: ``[reorg]`` (Darknet's old reorg), ``[reorg3d]`` and the ``[region]`` head.

``[region]`` is, like ``[yolo]``, the identity in the model: its input is the raw head output
``[B, num*(coords+1+classes), H, W]`` laid out per anchor as ``[tx, ty, tw, th, (more coords), obj, cls...]``;
decode (:mod:`yolodet.inference.decode`) reads its :class:`RegionSpec`.
Warning: Darknet's CPU ``[region]`` forward also transposes its output to ``[H*W, num*(5+C)]`` (``flatten``) before
the logistic/softmax; yolodet keeps the conv layout and applies those in decode, so a ``[region]`` that is not the
last layer (no real cfg has one) would feed later layers differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.base import MAX_ANCHORS, Block, BuildContext, HeadBlock, Shape
from yolodet.modeling.registry import BLOCKS


def reorg(x: torch.Tensor, dims: Shape, stride: int, forward: bool) -> torch.Tensor:
    """Darknet's ``reorg_cpu(x, w, h, c, batch, stride, forward, out)`` with ``(c, h, w) = dims``, on
    [B, ...] tensors of ``c*h*w`` elements per image; returns the flat [B, c*h*w] result.

    Output element ``(k, j, i)`` of a ``[c, h, w]`` view takes input ``(k % c', j*s + (k // c') // s,
    i*s + (k // c') % s)`` of a ``[c' = c/s^2, h*s, w*s]`` view (``forward=False``, Darknet's default), or the
    inverse (``forward=True``).
    """
    c, h, w = dims
    s = stride
    b = x.shape[0]
    if not forward:
        v = x.reshape(b, c // (s * s), h, s, w, s)
        return v.permute(0, 3, 5, 1, 2, 4).reshape(b, -1)
    v = x.reshape(b, s, s, c // (s * s), h, w)
    return v.permute(0, 3, 4, 1, 5, 2).reshape(b, -1)


class Reorg(Block):
    """``[reorg]`` / ``[reorg3d]``: Darknet's space-to-depth reshuffles (see :func:`reorg`).

    The dims come from the input at each forward (not the cfg's size), so the layer runs, and traces to ONNX, at
    any input size its stride divides: ``[reorg]`` runs :func:`reorg` on its input's dims, ``[reorg3d]`` on its
    output's (:func:`reorg_out_shape`).
    """

    def __init__(self, stride: int, reverse: bool, on_output: bool, out_shape: Shape) -> None:
        super().__init__()
        self.stride, self.reverse, self.on_output, self.out_shape = stride, reverse, on_output, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        in_dims = (x.shape[1], x.shape[2], x.shape[3])
        out = reorg_out_shape(in_dims, self.stride, self.reverse)
        dims = out if self.on_output else in_dims
        return reorg(x, dims, self.stride, self.reverse).reshape(x.shape[0], *out)


def reorg_out_shape(dims: Shape, stride: int, reverse: bool) -> Shape:
    """(C, H, W) of a reorg's output for input ``dims``: ``(C*s^2, H/s, W/s)``, or ``(C/s^2, H*s, W*s)`` when
    ``reverse``."""
    c, h, w = dims
    if reverse:
        return c // (stride * stride), h * stride, w * stride
    return c * stride * stride, h // stride, w // stride


def _reorg_shapes(block: CfgBlock, ctx: BuildContext) -> tuple[int, bool, Shape]:
    c, h, w = ctx.in_shape
    stride = block.get_int("stride", 1)
    if stride < 1:
        raise block.error(f"must be >= 1, got {stride}", "stride")
    reverse = bool(block.get_int("reverse", 0))
    if reverse:
        if c % (stride * stride):
            raise block.error(f"reverse reorg needs channels ({c}) divisible by stride^2 = {stride * stride}",
                              "stride")
    elif h % stride or w % stride:
        raise block.error(f"input {h}x{w} is not divisible by stride={stride}", "stride")
    return stride, reverse, reorg_out_shape((c, h, w), stride, reverse)


@BLOCKS.register("reorg", keys=("stride", "reverse"))
def build_reorg(block: CfgBlock, ctx: BuildContext) -> Reorg:
    """Darknet's old ``[reorg]`` (``reorg_old_layer.c``): ``reorg_cpu`` on the *input* dims (YOLOv2's quirk)."""
    stride, reverse, out = _reorg_shapes(block, ctx)
    c = ctx.in_shape[0]
    if c % (stride * stride):
        raise block.error(f"[reorg] needs input channels ({c}) divisible by stride^2 = {stride * stride} (Darknet "
                          "would read past its input)", "stride")
    return Reorg(stride, reverse, False, out)


@BLOCKS.register("reorg3d", keys=("stride", "reverse"))
def build_reorg3d(block: CfgBlock, ctx: BuildContext) -> Reorg:
    """``[reorg3d]`` (``reorg_layer.c``): ``reorg_cpu`` on the output dims, a true space-to-depth."""
    stride, reverse, out = _reorg_shapes(block, ctx)
    if reverse and out[0] % (stride * stride):
        raise block.error(f"reverse [reorg3d] needs output channels ({out[0]}) divisible by stride^2", "stride")
    return Reorg(stride, reverse, True, out)


@dataclass(frozen=True)
class RegionSpec:
    """What a ``[region]`` section says about its head (YOLOv2).

    Attributes:
        layer: Darknet layer index of the ``[region]`` block.
        anchors: [num, 2] (w, h) in *grid cells* (unlike ``[yolo]``'s input pixels).
        classes, coords: channels per anchor are ``coords + 1 + classes``: ``[tx, ty, tw, th, ..., obj, cls...]``.
        softmax: class scores are a softmax over the classes; with ``softmax=0`` (Darknet's default) Darknet's CPU
            forward leaves them as the raw conv values (no logistic), and so does decode.
        tree: ``tree=`` file (yolo9000's ``softmax_tree``), read relative to the current folder as Darknet does.
        stride: input pixels per grid cell at the cfg's network size.
    """

    layer: int
    anchors: tuple[tuple[float, float], ...]
    classes: int
    coords: int
    softmax: bool
    stride: int
    tree: str | None = None
    map: str | None = None
    bias_match: bool = False
    kind: str = "region"

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    def anchor_tensor(self) -> torch.Tensor:
        """[A, 2] anchors (w, h) in grid cells."""
        return torch.tensor(self.anchors, dtype=torch.float32)


class RegionHead(HeadBlock):
    """Identity: the raw conv output is the head output; :class:`RegionSpec` tells decode how to read it."""


@BLOCKS.register("region", keys=("anchors", "classes", "coords", "num", "softmax", "tree", "map", "bias_match"))
def build_region(block: CfgBlock, ctx: BuildContext) -> RegionHead:
    """A YOLOv2 head; Darknet requires the previous layer to have ``num * (coords + 1 + classes)`` channels."""
    classes = block.get_int("classes", 20)
    coords = block.get_int("coords", 4)
    num = block.get_int("num", 1)
    for key, value, low in (("classes", classes, 0), ("coords", coords, 4), ("num", num, 1)):
        if value < low:
            raise block.error(f"must be >= {low}, got {value}", key)
    if num > MAX_ANCHORS:
        raise block.error(f"must be at most {MAX_ANCHORS}, got {num}", "num")
    flat = block.get_floats("anchors", [0.5] * (2 * num))  # Darknet's make_region_layer: biases of .5
    flat = (flat + [0.5] * (2 * num))[:2 * num]  # Darknet reads at most num pairs, the rest stay .5
    c, h, w = ctx.in_shape
    expected = num * (coords + 1 + classes)
    if c * h * w != expected * h * w:
        raise block.error(f"the previous layer ({ctx.index - 1}) has {c} filters but num * (coords + 1 + classes) "
                          f"= {num} * ({coords} + 1 + {classes}) = {expected}", "classes")
    tree = block.get_str("tree", "") or None
    spec = RegionSpec(layer=ctx.index, anchors=tuple(zip(flat[0::2], flat[1::2])), classes=classes,
                      coords=coords, softmax=bool(block.get_int("softmax", 0)), stride=max(1, ctx.net.width // w),
                      tree=tree, map=block.get_str("map", "") or None,
                      bias_match=bool(block.get_int("bias_match", 0)))
    return RegionHead(spec, (c, h, w))
