"""Darknet-style layer table: per layer its type, filters/size/stride, input -> output shape, parameters and GFLOPs.

GFLOPs follow AlexeyAB Darknet's ``BFLOPS`` so totals equal what ``darknet detector test`` prints (yolov3 at 416:
65.879, yolov3-tiny: 5.571): ``2 * multiply-adds`` of ``[convolutional]``/``[connected]``, plus Darknet's own
counts for ``[maxpool]`` (``size^2 * C`` per output cell) and ``[shortcut]`` (one add per output element per
``from`` layer); BN, activations, route, upsample and heads count 0. Darknet layers are counted analytically from
their weights and ``out_shape``. A layer that holds arbitrary modules (a torchvision backbone stage) is counted by
running it once on the ``meta`` device with hooks on its Conv2d/Linear modules (their ``2 * multiply-adds``; its
pooling and additions are not counted): shapes only, no arithmetic and no memory, whatever device its weights are
on.

Build a model for the table alone with :func:`build_for_info` (on ``meta``: instant even for large backbones).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from yolodet.modeling.blocks.backbone import BackboneBlock, StageBlock
from yolodet.modeling.blocks.base import Block, Shape
from yolodet.modeling.blocks.conv import ConnectedBlock, ConvBlock
from yolodet.modeling.blocks.structural import MaxPool, Route, ScaleChannels, Shortcut, Upsample
from yolodet.modeling.blocks.yolo import YoloHead
from yolodet.cfg import SECTION_ALIASES, CfgError, parse_cfg_text
from yolodet.modeling.model import Darknet


@dataclass(frozen=True)
class LayerInfo:
    """One row of the table. Shapes are (C, H, W); ``flops`` = 2 * multiply-adds (Darknet's BFLOPS * 1e9)."""

    index: int
    type: str
    detail: str
    in_shape: Shape
    out_shape: Shape
    params: int
    flops: int


def build_for_info(cfg: str | os.PathLike, img_size: int | tuple[int, int] | None = None, *,
                   device: str | torch.device = "meta") -> Darknet:
    """Build ``cfg`` with ``[net]`` width/height set to ``img_size`` (int or (w, h); None: the cfg's), on ``device``
    (``meta``: parameters have shapes but no storage, enough for :func:`layer_table`)."""
    path = Path(cfg)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CfgError(f"cannot read cfg: {exc.strerror or exc}", path=str(path)) from None
    blocks = parse_cfg_text(text, str(path))
    if img_size is not None:
        w, h = (img_size, img_size) if isinstance(img_size, int) else img_size
        blocks[0] = replace(blocks[0], options={**blocks[0].options, "width": str(w), "height": str(h)})
    with torch.device(device):
        return Darknet(blocks, cfg_text=text)


def layer_table(model: Darknet) -> list[LayerInfo]:
    """One :class:`LayerInfo` per layer of ``model`` (index = Darknet layer index)."""
    types = _section_types(model)
    net_in = (model.net.channels, model.net.height, model.net.width)
    rows, shapes = [], []
    for i, layer in enumerate(model.layers):
        in_shape = shapes[-1] if shapes else net_in
        refs = [shapes[s] for s in layer.sources]
        params = sum(p.numel() for p in layer.parameters())
        rows.append(LayerInfo(i, types[i], _detail(layer), in_shape, tuple(layer.out_shape), params,
                              _flops(layer, in_shape, refs)))
        shapes.append(tuple(layer.out_shape))
    return rows


def format_table(rows: list[LayerInfo]) -> str:
    """Darknet-like text table (shapes as ``W x H x C``) with totals."""
    lines = [f"{'layer':>5}  {'type':<14} {'filters size/strd':<32} {'input':>16}    {'output':>16} "
             f"{'params':>11} {'GFLOPs':>8}"]
    for r in rows:
        lines.append(f"{r.index:>5}  {r.type:<14} {r.detail:<32} {_wxhxc(r.in_shape):>16} -> "
                     f"{_wxhxc(r.out_shape):>16} {r.params:>11,} {r.flops / 1e9:>8.3f}")
    params, flops = total_params(rows), total_flops(rows)
    lines.append(f"Total: {len(rows)} layers, {params:,} parameters ({params / 1e6:.2f} M), {flops / 1e9:.3f} GFLOPs "
                 "(Darknet's BFLOPS)")
    return "\n".join(lines)


def total_params(rows: list[LayerInfo]) -> int:
    return sum(r.params for r in rows)


def total_flops(rows: list[LayerInfo]) -> int:
    return sum(r.flops for r in rows)


# -- helpers -----------------------------------------------------------------------------------------------------

def _section_types(model: Darknet) -> list[str]:
    """Section names from the cfg text's headers (not a re-parse: that would repeat the parser's warnings)."""
    names = [n.lower() for n in re.findall(r"^[ \t]*\[[ \t]*([^\]\s]+)[ \t]*\]", model.cfg_text, re.MULTILINE)]
    types = [SECTION_ALIASES.get(n, n) for n in names[1:]]
    if len(types) == len(model.layers):
        return types
    return [type(layer).__name__.lower() for layer in model.layers]


def _wxhxc(shape: Shape) -> str:
    c, h, w = shape
    return f"{w:>4} x{h:>4} x{c:>5}"


def _detail(layer: Block) -> str:
    if isinstance(layer, ConvBlock):
        conv = layer.conv
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        size = f"{kh} x {kw}" + (f"/{sh:>2}" if sh == sw else f"/{sh},{sw}")
        extra = (f" g{conv.groups}" if conv.groups > 1 else "") + (f" d{conv.dilation[0]}"
                                                                   if conv.dilation[0] > 1 else "")
        return f"{conv.out_channels:>5}  {size}{extra}"
    if isinstance(layer, ConnectedBlock):
        return f"{layer.fc.out_features:>5}"
    if isinstance(layer, MaxPool):
        sy, sx = layer.stride
        return f"       {layer.size} x {layer.size}/{sy:>2}" + (f",{sx}" if sx != sy else "")
    if isinstance(layer, Upsample):
        return f"          x{layer.stride}"
    if isinstance(layer, (Route, Shortcut, ScaleChannels)):
        return "layers " + ", ".join(map(str, layer.sources))
    if isinstance(layer, YoloHead):
        s = layer.spec
        return f"{s.classes} classes, mask {','.join(map(str, s.mask))}"
    if isinstance(layer, (BackboneBlock, StageBlock)):
        return layer.describe()
    return ""


def _flops(layer: Block, in_shape: Shape, ref_shapes: list[Shape]) -> int:
    _, h, w = layer.out_shape
    if isinstance(layer, ConvBlock):
        return 2 * layer.conv.weight.numel() * h * w  # weight: out * in/groups * kh * kw
    if isinstance(layer, ConnectedBlock):
        return 2 * layer.fc.weight.numel()
    if isinstance(layer, MaxPool):  # Darknet: size * size * c * out_h * out_w
        return layer.size ** 2 * math.prod(layer.out_shape)
    if isinstance(layer, Shortcut):  # Darknet: out_w * out_h * out_c * n
        return math.prod(layer.out_shape) * len(layer.sources)
    if any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in layer.modules()):
        return _meta_flops(layer, in_shape, ref_shapes)
    return 0


def _meta_flops(layer: Block, in_shape: Shape, ref_shapes: list[Shape]) -> int:
    """Conv2d/Linear FLOPs of one forward of ``layer`` at batch 1, run on ``meta`` tensors (shapes only)."""
    total = 0

    def count(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        weight = module.weight.numel()
        if isinstance(module, nn.Conv2d):  # out * in/groups * kh * kw multiply-adds per output pixel
            total += 2 * weight * math.prod(output.shape[2:]) * output.shape[0]
        else:  # Linear: in * out per row
            total += 2 * weight * (output.numel() // output.shape[-1])

    hooks = [m.register_forward_hook(count) for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    tensors = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}
    meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
    training = layer.training
    layer.eval()  # info is about inference; also keeps BN running statistics untouched
    try:
        x = torch.empty((1, *in_shape), device="meta")
        refs = [torch.empty((1, *s), device="meta") for s in ref_shapes]
        with torch.no_grad():
            functional_call(layer, meta, (x, refs))
    finally:
        layer.train(training)
        for hook in hooks:
            hook.remove()
    return total
