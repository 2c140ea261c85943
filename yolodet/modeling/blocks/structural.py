"""Weightless layers: pooling, upsample, route, shortcut, scale_channels and the classifier tail."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from yolodet.modeling.blocks.antialias import antialiased
from yolodet.modeling.blocks.base import Block, BuildContext, Shape
from yolodet.modeling.blocks.conv import make_activation
from yolodet.cfg import CfgBlock
from yolodet.modeling.registry import BLOCKS

log = logging.getLogger(__name__)


class MaxPool(Block):
    """``[maxpool]`` with Darknet's padding rule (cells outside the input behave as -inf).

    Output = (w + padding - size) / stride + 1 and the window starts at -padding/2, so ``size=2 stride=1`` pads
    one column on the right only while ``size=5/9/13 stride=1`` (SPP) pads symmetrically.
    """

    def __init__(self, size: int, stride: tuple[int, int], pads: tuple[int, int, int, int], out_shape: Shape):
        super().__init__()
        self.size, self.stride, self.pads = size, stride, pads  # pads: left, right, top, bottom
        self.out_shape = out_shape
        left, right, top, bottom = pads
        # PyTorch's own padding is -inf too, but only symmetric and at most size/2.
        self._native = left == right and top == bottom and left <= size // 2 and top <= size // 2

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        if self._native:
            return F.max_pool2d(x, self.size, self.stride, (self.pads[2], self.pads[0]))
        x = F.pad(x, self.pads, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


MAX_POOL_WINDOW = 32
"""Largest pooling window allowed to exceed its input (real cfgs: at most SPP's 13)."""


def _check_window(block: CfgBlock, size: int, stride: tuple[int, int], hw: tuple[int, int]) -> None:
    """A pooling window or stride larger than its input is a typo, refused before anything is built.

    Except a small window (at most :data:`MAX_POOL_WINDOW`): yolov4's SPP ``size=13`` runs on a 4 x 4 input at
    128 x 128, where Darknet pads it with -inf and the output is still meaningful. ``size=1000000000`` made the
    forward pass overflow (stride 1) or hang (stride 2). Likewise a small stride (at most
    :data:`MAX_POOL_WINDOW`) may exceed its input: Darknet's own ``jnet-conv.cfg`` pools a 1 x 1 map with stride 2
    (one output cell); a larger one would skip all but the first cell of any input.
    """
    h, w = hw
    if size > max(h, w) and size > MAX_POOL_WINDOW:
        raise block.error(f"the window ({size} x {size}) is larger than the input ({h} x {w})", "size")
    for key, step, dim in (("stride_y", stride[0], h), ("stride_x", stride[1], w)):
        if step > dim and step > MAX_POOL_WINDOW:
            key = key if block.has(key) else "stride"
            raise block.error(f"{key.replace('_', ' ')} {step} is larger than the input ({h} x {w})", key)


PoolGeometry = tuple[int, tuple[int, int], tuple[int, int, int, int], Shape]
"""(size, (stride_y, stride_x), (left, right, top, bottom) padding, output shape) of a Darknet pooling layer."""


def pool_geometry(block: CfgBlock, ctx: BuildContext, *, unit_stride: bool = False) -> PoolGeometry:
    """Darknet's maxpool geometry (``make_maxpool_layer``, also used by ``[local_avgpool]``): ``stride`` defaults to
    1, ``size`` to ``stride``, ``padding`` to ``size - 1``; the window starts ``padding / 2`` before the input.
    ``unit_stride``: the geometry at stride 1 (``antialiasing``'s host layer; the cfg's strides are still checked)."""
    c, h, w = ctx.in_shape
    stride = block.get_int("stride", 1)
    sy, sx = block.get_int("stride_y", stride), block.get_int("stride_x", stride)
    size = block.get_int("size", stride)
    padding = block.get_int("padding", size - 1)
    for key, value in (("stride", stride), ("stride_x", sx), ("stride_y", sy), ("size", size)):
        if value < 1:
            raise block.error(f"must be >= 1, got {value}", key)
    if padding < 0:
        raise block.error(f"must be >= 0, got {padding}", "padding")
    _check_window(block, size, (sy, sx), (h, w))
    if unit_stride:
        sy = sx = 1
    out_h, out_w = (h + padding - size) // sy + 1, (w + padding - size) // sx + 1
    if out_h < 1 or out_w < 1:
        raise block.error(f"input {h}x{w} is too small for size={size}", "size")
    begin = padding // 2
    right = max(0, (out_w - 1) * sx + size - w - begin)
    bottom = max(0, (out_h - 1) * sy + size - h - begin)
    return size, (sy, sx), (begin, right, begin, bottom), (c, out_h, out_w)


class DepthMaxPool(Block):
    """``[maxpool] maxpool_depth=1``: out channel ``g`` = max over input channels ``g, g + n, g + 2n, ...`` (``n`` =
    ``out_channels``) at each cell, [B, C, H, W] -> [B, n, H, W]; ``size``, ``stride`` and ``padding`` are ignored.
    A channel with no input (``n > C``) is ``-FLT_MAX``, Darknet's start value, and so is a max of ``-inf`` values."""

    def __init__(self, out_shape: Shape) -> None:
        super().__init__()
        self.out_shape = out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.out_shape[0]
        lowest = torch.finfo(x.dtype).min
        x = F.pad(x, (0, 0, 0, 0, 0, -c % n), value=lowest)  # channel k = j*n + g -> [B, j, g, H, W]
        return x.reshape(b, -1, n, h, w).amax(1).clamp_min(lowest)


@BLOCKS.register("maxpool", keys=("size", "stride", "stride_x", "stride_y", "padding", "antialiasing",
                                  "maxpool_depth", "out_channels"))
def build_maxpool(block: CfgBlock, ctx: BuildContext) -> Block:
    """Darknet maxpool, geometry by :func:`pool_geometry`; ``maxpool_depth``: :class:`DepthMaxPool`;
    ``antialiasing``: the pool at stride 1, then the blur (:mod:`yolodet.modeling.blocks.antialias`)."""
    aa = block.get_int("antialiasing", 0)
    if block.get_int("maxpool_depth", 0):
        if aa:
            raise block.error("maxpool_depth=1 with antialiasing: Darknet's forward returns before the blur, yet the "
                              "next layer reads the blur's (smaller) size; not supported", "antialiasing")
        for key in ("stride", "stride_x", "stride_y", "size", "padding"):
            block.get_int(key, 1)  # read (as Darknet does), then unused
        n = block.get_int("out_channels", 1)
        if n < 1:
            raise block.error(f"must be >= 1, got {n}", "out_channels")
        pool: Block = DepthMaxPool((n, *ctx.in_shape[1:]))
    else:
        block.get_int("out_channels", 1)  # read by Darknet, used only with maxpool_depth
        pool = MaxPool(*pool_geometry(block, ctx, unit_stride=bool(aa)))
    if not aa:
        return pool
    stride = block.get_int("stride", 1)
    return antialiased(block, pool, (block.get_int("stride_y", stride), block.get_int("stride_x", stride)))


class GlobalAvgPool(Block):
    """``[avgpool]``: global average over H, W -> [B, C, 1, 1]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_shape = (channels, 1, 1)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


@BLOCKS.register("avgpool")
def build_avgpool(block: CfgBlock, ctx: BuildContext) -> GlobalAvgPool:
    """Global average pooling."""
    return GlobalAvgPool(ctx.in_shape[0])


MAX_UPSAMPLE = 64
"""Largest ``[upsample] stride``: real cfgs use 2 (yolov3/v4) or 4; the output limit of
:data:`yolodet.modeling.model.MAX_OUTPUT_ELEMENTS` applies as well."""


class Upsample(Block):
    """``[upsample]``: nearest neighbour by an integer ``stride``, times ``scale``."""

    def __init__(self, stride: int, scale: float, out_shape: Shape) -> None:
        super().__init__()
        self.stride, self.scale, self.out_shape = stride, scale, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.stride, mode="nearest")
        return x * self.scale if self.scale != 1 else x


@BLOCKS.register("upsample", keys=("stride", "scale"))
def build_upsample(block: CfgBlock, ctx: BuildContext) -> Upsample:
    """Nearest-neighbour upsampling (default stride 2)."""
    c, h, w = ctx.in_shape
    stride = block.get_int("stride", 2)
    if stride < 1:
        raise block.error(f"only upsampling (stride >= 1) is supported, got {stride}", "stride")
    if stride > MAX_UPSAMPLE:
        raise block.error(f"stride {stride} is larger than the limit of {MAX_UPSAMPLE} (Darknet cfgs use 2 or 4)",
                          "stride")
    return Upsample(stride, block.get_float("scale", 1.0), (c, h * stride, w * stride))


class Route(Block):
    """``[route]``: slice ``group_id`` of ``groups`` channel slices of *each* input, then concatenate."""

    def __init__(self, sources: tuple[int, ...], slices: list[tuple[int, int]], out_shape: Shape) -> None:
        super().__init__()
        self.sources, self.slices, self.out_shape = sources, slices, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        parts = [r if (start == 0 and stop == r.shape[1]) else r[:, start:stop]
                 for r, (start, stop) in zip(refs, self.slices)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


@BLOCKS.register("route", keys=("layers", "groups", "group_id"))
def build_route(block: CfgBlock, ctx: BuildContext) -> Route:
    """Concatenation of earlier layers (optionally one channel group of each)."""
    sources = tuple(ctx.resolve(block, "layers", i) for i in block.get_ints("layers"))
    groups, group_id = block.get_int("groups", 1), block.get_int("group_id", 0)
    if groups < 1:
        raise block.error(f"must be >= 1, got {groups}", "groups")
    if not 0 <= group_id < groups:
        raise block.error(f"must be in 0..{groups - 1}, got {group_id}", "group_id")
    slices, channels = [], 0
    hw = ctx.shapes[sources[0]][1:]
    for s in sources:
        c, h, w = ctx.shapes[s]
        if (h, w) != hw:
            raise block.error(f"layer {s} is {h}x{w} but layer {sources[0]} is {hw[0]}x{hw[1]}; route needs "
                              "equal spatial sizes", "layers")
        if c % groups:
            raise block.error(f"groups={groups} does not divide layer {s}'s {c} channels", "groups")
        part = c // groups
        slices.append((group_id * part, (group_id + 1) * part))
        channels += part
    return Route(sources, slices, (channels, *hw))


class Shortcut(Block):
    """``[shortcut]``: input + sum of the ``from`` outputs (optionally weighted), then the activation.

    Same H, W (AlexeyAB's ``shortcut_multilayer_cpu``, the only case AlexeyAB's Darknet accepts): a ``from`` output
    with fewer channels is added into the first channels, one with more contributes its first ``C`` channels.
    ``weights_type=per_feature`` (``per_layer``) / ``per_channel`` scale the input and each ``from`` by learned
    weights ``[n+1]`` / ``[n+1, C]`` (in the ``.weights`` file), normalised by ``weights_normalization``
    (``relu``: ``relu(w) / (1e-4 + sum relu(w))``, ``softmax``: ``exp(w - max) / (1e-4 + sum exp(w - max))``).

    Different H, W (pjreddie's ``resnet50/101/152.cfg``, ``resnext152-32x4d.cfg``, which AlexeyAB's Darknet refuses
    in ``parse_shortcut``): pjreddie's ``shortcut_cpu`` rule, one ``from`` only: with ``stride = from_w / w`` and
    ``sample = w / from_w`` (each at least 1), ``out[c, j*sample, i*sample] += from[c, j*stride, i*stride]`` for
    ``c < min(C)``, ``j < min(H)``, ``i < min(W)``.
    """

    def __init__(self, sources: tuple[int, ...], act: nn.Module, out_shape: Shape, *, weights: int = 0,
                 channels: int = 1, normalization: str = "none", pjreddie: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.sources, self.act, self.out_shape = sources, act, out_shape
        self.normalization, self.pjreddie = normalization, pjreddie
        self.weight = nn.Parameter(torch.ones(weights, channels)) if weights else None

    def _weights(self) -> torch.Tensor | None:
        """[n+1, C or 1] weights after ``weights_normalization``."""
        w = self.weight
        if w is None or self.normalization == "none":
            return w
        if self.normalization == "relu":
            w = torch.relu(w)
        else:
            w = torch.exp(w - w.amax(0, keepdim=True))
        return w / (1e-4 + w.sum(0, keepdim=True))

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        if self.pjreddie is not None:
            return self.act(_pjreddie_shortcut(x, refs[0], *self.pjreddie))
        w = self._weights()
        out = x if w is None else x * w[0].view(1, -1, 1, 1)
        for k, r in enumerate(refs, start=1):
            c = min(r.shape[1], out.shape[1])
            add = r[:, :c]
            if w is not None:  # per_channel: weight k of each channel; per_feature: one weight k
                add = add * (w[k, :c].view(1, -1, 1, 1) if w.shape[1] > 1 else w[k])
            out = out + add if c == out.shape[1] else torch.cat([out[:, :c] + add, out[:, c:]], 1)
        return self.act(out)

    def darknet_tensors(self) -> list[torch.Tensor]:
        """The ``weights_type`` weights, ``[n+1, C]`` row-major as ``load_shortcut_weights`` reads them."""
        return [] if self.weight is None else [self.weight.data]


def _pjreddie_shortcut(x: torch.Tensor, add: torch.Tensor, stride: int, sample: int) -> torch.Tensor:
    """pjreddie's ``shortcut_cpu`` (``s1 = s2 = 1``): x [B, C2, H2, W2] += strided ``add`` [B, C1, H1, W1]."""
    c = min(x.shape[1], add.shape[1])
    h, w = min(x.shape[2], add.shape[2]), min(x.shape[3], add.shape[3])
    src = add[:, :c, 0:h * stride:stride, 0:w * stride:stride][:, :, :h, :w]
    out = x.clone()
    out[:, :c, 0:h * sample:sample, 0:w * sample:sample][:, :, :h, :w] += src
    return out


_SHORTCUT_WEIGHTS = {"none": 0, "per_feature": 1, "per_layer": 1, "per_channel": 2}
_SHORTCUT_NORMALIZATION = {"none": "none", "relu": "relu", "avg_relu": "relu", "softmax": "softmax"}


@BLOCKS.register("shortcut", keys=("from", "activation", "weights_type", "weights_normalization"))
def build_shortcut(block: CfgBlock, ctx: BuildContext) -> Shortcut:
    """Residual addition of earlier layers."""
    sources = tuple(ctx.resolve(block, "from", i) for i in block.get_ints("from"))
    wtype = block.get_str("weights_type", "none")
    if wtype not in _SHORTCUT_WEIGHTS:
        raise block.error(f"unknown weights_type {wtype!r}; known: {', '.join(_SHORTCUT_WEIGHTS)}", "weights_type")
    norm = block.get_str("weights_normalization", "none")
    if norm not in _SHORTCUT_NORMALIZATION:
        raise block.error(f"unknown weights_normalization {norm!r}; known: {', '.join(_SHORTCUT_NORMALIZATION)}",
                          "weights_normalization")
    c, h, w = ctx.in_shape
    act = make_activation(block, "linear")
    odd = [s for s in sources if ctx.shapes[s][1:] != (h, w)]
    if odd:
        fc, fh, fw = ctx.shapes[odd[0]]
        where = f"layer {odd[0]} is {fc}x{fh}x{fw}, the input is {c}x{h}x{w}"
        if len(sources) > 1 or wtype != "none":
            raise block.error(f"{where}: a shortcut between maps of different sizes exists only in pjreddie's "
                              "Darknet, with one 'from' and no weights (AlexeyAB's refuses it)", "from")
        stride, sample = max(1, fw // w), max(1, w // fw)
        if max(1, fh // h) != stride or max(1, h // fh) != sample:
            raise block.error(f"{where}: width and height ratios differ (pjreddie's shortcut_cpu asserts they "
                              "match)", "from")
        log.info("%s:%d: [shortcut] %s: pjreddie's strided shortcut rule (AlexeyAB's Darknet refuses this cfg)",
                 block.path, block.line, where)
        return Shortcut(sources, act, ctx.in_shape, pjreddie=(stride, sample))
    kind = _SHORTCUT_WEIGHTS[wtype]
    return Shortcut(sources, act, ctx.in_shape, weights=len(sources) + 1 if kind else 0,
                    channels=c if kind == 2 else 1, normalization=_SHORTCUT_NORMALIZATION[norm])


class ScaleChannels(Block):
    """``[scale_channels]``: ``from`` output [B,C,H,W] times the input ([B,C,1,1], or [B,1,H,W] with scale_wh)."""

    def __init__(self, source: int, act: nn.Module, out_shape: Shape) -> None:
        super().__init__()
        self.sources, self.act, self.out_shape = (source,), act, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.act(refs[0] * x)


@BLOCKS.register("scale_channels", keys=("from", "scale_wh", "activation"))
def build_scale_channels(block: CfgBlock, ctx: BuildContext) -> ScaleChannels:
    """Squeeze-excitation style scaling of an earlier layer by the input."""
    source = ctx.resolve(block, "from", block.get_int("from"))
    c, h, w = ctx.shapes[source]
    ci, hi, wi = ctx.in_shape
    scale_wh = bool(block.get_int("scale_wh", 0))
    expected = (1, h, w) if scale_wh else (c, 1, 1)
    if (ci, hi, wi) != expected:
        raise block.error(f"input is {ci}x{hi}x{wi}, expected {'x'.join(map(str, expected))} to scale layer "
                          f"{source} ({c}x{h}x{w})", "from")
    return ScaleChannels(source, make_activation(block, "linear"), (c, h, w))


class Passthrough(Block):
    """Identity at inference: ``[dropout]`` (``nn.Dropout`` when training) and ``[cost]``."""

    def __init__(self, out_shape: Shape, p: float = 0.0) -> None:
        super().__init__()
        self.out_shape = out_shape
        self.dropout = nn.Dropout(p) if p > 0 else None

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.dropout(x) if self.dropout is not None else x


@BLOCKS.register("dropout", keys=("probability",))
def build_dropout(block: CfgBlock, ctx: BuildContext) -> Passthrough:
    """Dropout (inverted, so identity at inference)."""
    p = block.get_float("probability", 0.5)
    if not 0 <= p < 1:
        raise block.error(f"must be in [0, 1), got {p}", "probability")
    return Passthrough(ctx.in_shape, p)


@BLOCKS.register("cost", keys=("type", "scale", "ratio", "noobject_scale", "thresh"))
def build_cost(block: CfgBlock, ctx: BuildContext) -> Passthrough:
    """Training cost layer of classifier cfgs: identity here."""
    return Passthrough(ctx.in_shape)


class Softmax(Block):
    """``[softmax]`` over the flattened input split into ``groups`` (temperature ``temperature``)."""

    def __init__(self, groups: int, temperature: float, out_shape: Shape) -> None:
        super().__init__()
        self.groups, self.temperature, self.out_shape = groups, temperature, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        flat = x.reshape(x.shape[0], self.groups, -1) / self.temperature
        return flat.softmax(-1).reshape(x.shape)


@BLOCKS.register("softmax", keys=("groups", "temperature"))
def build_softmax(block: CfgBlock, ctx: BuildContext) -> Softmax:
    """Softmax of a classifier tail."""
    groups = block.get_int("groups", 1)
    c, h, w = ctx.in_shape
    if groups < 1 or (c * h * w) % groups:
        raise block.error(f"groups={groups} must be >= 1 and divide the {c * h * w} inputs", "groups")
    temperature = block.get_float("temperature", 1.0)
    if temperature <= 0:
        raise block.error(f"must be > 0, got {temperature}", "temperature")
    return Softmax(groups, temperature, ctx.in_shape)
