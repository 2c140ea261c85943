"""Layers with weights: ``[convolutional]`` and ``[connected]``, plus Darknet's activations."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from yolodet.modeling.blocks.activations import (Gelu, HardMish, Lhtan, Loggy, NormalizeChannels,
                                                  NormalizeChannelsSoftmax, Plse, Ramp, Selu, Stair)
from yolodet.modeling.blocks.antialias import Antialiased, antialiased
from yolodet.modeling.blocks.base import Block, BuildContext
from yolodet.cfg import CfgBlock
from yolodet.modeling.registry import BLOCKS

BN_EPS = 1e-5  # Darknet (AlexeyAB, and pjreddie's GPU path): (x - mean) / sqrt(var + 1e-5)
MAX_WEIGHTS = 1 << 28  # 1 GiB of float32 in one layer; real cfgs stay far below (VGG fc6: 1e8). A larger count is
# a typo (``filters=1e9``) that should be a CfgError, not a MemoryError or an OOM kill.


def _check_weights(block: CfgBlock, count: int, key: str) -> None:
    if count > MAX_WEIGHTS:
        raise block.error(f"this layer would have {count} weights, more than the limit of {MAX_WEIGHTS}", key)


ACTIVATIONS: dict[str, Callable[[], nn.Module] | None] = {
    "linear": None,
    "logistic": nn.Sigmoid,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "mish": nn.Mish,  # Darknet's softplus threshold 20 is PyTorch's too
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "selu": Selu,
    "gelu": Gelu,
    "loggy": Loggy,
    "relie": lambda: nn.LeakyReLU(0.01),
    "revleaky": lambda: nn.LeakyReLU(0.1),  # Darknet's forward treats revleaky as leaky
    "ramp": Ramp,
    "plse": Plse,
    "hardtan": nn.Hardtanh,
    "lhtan": Lhtan,
    "stair": Stair,
    "hard_mish": HardMish,
    "normalize_channels": NormalizeChannels,
    "normalize_channels_softmax": lambda: NormalizeChannelsSoftmax(False),
    "normalize_channels_softmax_maxval": lambda: NormalizeChannelsSoftmax(True),
}
"""Every activation of Darknet's ``activations.c`` -> module factory (``leaky`` is handled separately: its slope is
0.1, not PyTorch's 0.01)."""


def make_activation(block: CfgBlock, default: str) -> nn.Module:
    """The module for ``activation=`` (Darknet's default for ``[convolutional]`` is ``logistic``)."""
    name = block.get_str("activation", default)
    if name == "leaky":
        return nn.LeakyReLU(0.1)
    if name not in ACTIVATIONS:
        raise block.error(f"unknown activation {name!r} (Darknet would print a note and silently use relu "
                          f"instead); known: leaky, {', '.join(sorted(ACTIVATIONS))}", "activation")
    kind = ACTIVATIONS[name]
    return nn.Identity() if kind is None else kind()


class ConvBlock(Block):
    """``[convolutional]``: Conv2d (+ BatchNorm2d, eps 1e-5) + activation. Input [B, C, H, W]."""

    shares: int | None = None
    """``share_index``: the layer whose weights, bias and BN this one uses (not stored again in ``.weights``)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, act: nn.Module, out_shape) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act
        self.out_shape = out_shape

    def share(self, other: "ConvBlock", index: int) -> None:
        """Use ``other``'s weights, bias and batch-norm (Darknet's ``share_index``)."""
        self.conv.weight = other.conv.weight
        self.conv.bias = other.conv.bias
        self.bn, self.shares = other.bn, index

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def darknet_tensors(self) -> list[torch.Tensor]:
        """Darknet order: BN ``beta, gamma, mean, var`` (or conv ``bias``), then ``weights[n, c/groups, k, k]``;
        nothing for a layer that shares another's (``share_index``: Darknet's ``load_weights`` skips it)."""
        if self.shares is not None:
            return []
        if self.bn is not None:
            head = [self.bn.bias, self.bn.weight, self.bn.running_mean, self.bn.running_var]
        else:
            head = [self.conv.bias]
        return [t.data for t in head] + [self.conv.weight.data]


@BLOCKS.register("convolutional", keys=("filters", "size", "stride", "stride_x", "stride_y", "pad", "padding",
                                        "groups", "dilation", "batch_normalize", "activation", "share_index",
                                        "xnor", "binary", "bin_output", "antialiasing"))
def build_convolutional(block: CfgBlock, ctx: BuildContext) -> Block:
    """Darknet convolution: ``pad=1`` means padding = size/2 and overrides ``padding``; ``antialiasing``: the conv
    at stride 1, then Darknet's fixed blur with the stride (:mod:`yolodet.modeling.blocks.antialias`)."""
    c, h, w = ctx.in_shape
    filters = block.get_int("filters", 1)
    size = block.get_int("size", 1)
    stride = block.get_int("stride", 1)
    stride_y, stride_x = block.get_int("stride_y", stride), block.get_int("stride_x", stride)
    groups = block.get_int("groups", 1)
    dilation = block.get_int("dilation", 1)
    for key, value in (("filters", filters), ("size", size), ("stride", stride), ("stride_x", stride_x),
                       ("stride_y", stride_y), ("groups", groups), ("dilation", dilation)):
        if value < 1:
            raise block.error(f"must be >= 1, got {value}", key)
    padding = size // 2 if block.get_int("pad", 0) else block.get_int("padding", 0)
    if padding < 0:
        raise block.error(f"must be >= 0, got {padding}", "padding")
    # Darknet: output size (h + 2*pad - size) / stride + 1, but im2col pads pad*dilation with a dilated kernel;
    # the two agree only when 2*pad = size - 1 or dilation = 1.
    if dilation > 1 and 2 * padding != size - 1:
        raise block.error(f"dilation={dilation} needs pad=1 with an odd size or padding=(size-1)/2 (Darknet's "
                          f"output size ignores dilation; its im2col does not)", "dilation")
    padding *= dilation
    if c % groups or filters % groups:
        raise block.error(f"groups={groups} must divide the input channels ({c}) and filters ({filters})",
                          "groups")
    for key, value, dim in (("stride_y", stride_y, h), ("stride_x", stride_x, w), ("dilation", dilation, max(h, w))):
        if value > dim + 2 * padding:  # it would skip (or spread the kernel past) the whole padded input
            key = key if block.has(key) or key == "dilation" else "stride"
            raise block.error(f"{key.replace('_', ' ')} {value} is larger than the padded input "
                              f"({h + 2 * padding} x {w + 2 * padding})", key)
    aa = block.get_int("antialiasing", 0)
    host_y, host_x = (1, 1) if aa else (stride_y, stride_x)  # Darknet: "use stride=1 in host-layer"
    out_h = (h + 2 * padding - dilation * (size - 1) - 1) // host_y + 1
    out_w = (w + 2 * padding - dilation * (size - 1) - 1) // host_x + 1
    if out_h < 1 or out_w < 1:
        raise block.error(f"input {h}x{w} is too small for size={size}, stride={stride}", "size")
    _check_weights(block, filters * (c // groups) * size * size, "size" if size * size > filters else "filters")
    bn = bool(block.get_int("batch_normalize", 0))
    conv = nn.Conv2d(c, filters, size, (host_y, host_x), padding, dilation, groups, bias=not bn)
    norm = nn.BatchNorm2d(filters, eps=BN_EPS, momentum=0.01) if bn else None  # Darknet: rolling avg 0.99
    layer = ConvBlock(conv, norm, make_activation(block, "logistic"), (filters, out_h, out_w))
    if block.has("share_index"):
        _share(block, ctx, layer)
    if block.get_int("binary", 0) and not block.get_int("xnor", 0):
        raise block.error("binary=1 without xnor: Darknet's CPU forward uses the float weights once and then "
                          "swaps in its binary buffer (different results on each call); not supported", "binary")
    if block.get_int("xnor", 0):
        if groups != 1 or dilation != 1 or stride_x != stride_y:
            raise block.error("xnor=1 needs groups=1, dilation=1 and equal strides (Darknet's bit-packed "
                              "inference path)", "xnor")
        if aa:
            raise block.error("xnor=1 with antialiasing is not implemented by yolodet", "antialiasing")
        return XnorConv(layer, bin_output=bool(block.get_int("bin_output", 0)))
    return antialiased(block, layer, (stride_y, stride_x)) if aa else layer


class XnorConv(Block):
    """``[convolutional] xnor=1`` as Darknet's ``detector test/valid`` compute it (``fuse_conv_batchnorm``, then
    ``calculate_binary_weights`` and the bit-packed GEMM): with BN folded into the weights ``W`` and bias ``b``,
    ``out = mean|W_f| * conv(sign(W_f), sign(x)) + b_f`` per filter ``f``, where ``sign(v) = v > 0 ? 1 : -1`` and the
    padding counts as -1 (a 0 bit). ``bin_output=1`` makes the activation linear unless a later ``[route]``,
    ``[shortcut]``, ``[sam]`` or ``[scale_channels]`` reads this layer (Darknet resets ``use_bin_output`` then; see
    :func:`apply_bin_output`).

    Warning: Darknet without ``fuse_conv_batchnorm`` (the oracle's default) skips the BN normalisation of xnor
    layers entirely (only the bias is added); yolodet follows the fused path every Darknet detector command runs.
    """

    def __init__(self, inner: ConvBlock, bin_output: bool) -> None:
        super().__init__()
        self.inner, self.bin_output, self.out_shape = inner, bin_output, inner.out_shape
        self.linear = False  # set by apply_bin_output

    def _fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        conv, bn = self.inner.conv, self.inner.bn
        if bn is None:
            return conv.weight, conv.bias
        k = bn.weight / torch.sqrt(bn.running_var + BN_EPS)
        return conv.weight * k[:, None, None, None], bn.bias - bn.running_mean * k

    def binary_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Darknet's ``calculate_binary_weights`` on the BN-folded layer: ``sign(W)`` [F, C, k, k] (+1/-1),
        ``mean|W_f|`` [1, F, 1, 1] and the folded bias [1, F, 1, 1]."""
        w, b = self._fused()
        mean = w.abs().mean((1, 2, 3))
        return torch.where(w > 0, 1.0, -1.0).to(w.dtype), mean.view(1, -1, 1, 1), b.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.binary_forward(x, *self.binary_weights())

    def binary_forward(self, x: torch.Tensor, sign_w: torch.Tensor, mean: torch.Tensor,
                       bias: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> ``mean * conv(sign(W), sign(x)) + bias`` (then the activation) [B, F, H', W'].

        The conv of +1/-1 values is an exact integer (``2 * count - K`` of Darknet's bit-packed GEMM), scaled by
        ``mean`` (one rounding) then offset, as Darknet does. The scaling is done on the [B, F, H'*W'] view so that
        an ONNX runtime does not fold ``mean`` and the bias into the conv weights (ONNX Runtime's Conv+Mul+Add
        fusion), which would sum +-mean terms, each sum rounded, instead: the next xnor layer's input signs would
        then differ from Darknet's wherever a value is within those roundings of 0."""
        sx = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
        p = self.inner.conv.padding[0]
        count = F.conv2d(F.pad(sx, (p, p, p, p), value=-1.0), sign_w.to(x.dtype), stride=self.inner.conv.stride)
        flat = count.flatten(2) * mean.to(x.dtype).flatten(1)[..., None] + bias.to(x.dtype).flatten(1)[..., None]
        out = flat.reshape(count.shape)
        return out if self.linear else self.inner.act(out)

    def darknet_tensors(self) -> list[torch.Tensor]:
        return self.inner.darknet_tensors()


def apply_bin_output(layers: list[Block]) -> None:
    """Darknet's ``use_bin_output``: an xnor layer with ``bin_output=1`` gets a linear activation unless a later
    layer reads it by index (``[route]``, ``[shortcut]``, ``[sam]``, ``[scale_channels]``) or, for the last three,
    is the layer before them."""
    read = {s for layer in layers for s in layer.sources}
    before = {i - 1 for i, layer in enumerate(layers) if type(layer).__name__ in ("Shortcut", "Sam", "ScaleChannels")}
    for i, layer in enumerate(layers):
        if isinstance(layer, XnorConv):
            layer.linear = layer.bin_output and i not in read and i not in before


def _share(block: CfgBlock, ctx: BuildContext, layer: ConvBlock) -> None:
    """``share_index`` (absolute when >= 0, else relative): reuse that conv layer's parameters."""
    source = ctx.resolve(block, "share_index", block.get_int("share_index"))
    other = ctx.layers[source]
    if isinstance(other, Antialiased):  # Darknet shares the host conv's weights
        other = other.inner
    if not isinstance(other, ConvBlock):
        raise block.error(f"layer {source} is not a [convolutional] layer", "share_index")
    if other.conv.weight.shape != layer.conv.weight.shape or (other.bn is None) != (layer.bn is None):
        raise block.error(f"layer {source}'s weights {tuple(other.conv.weight.shape)} (batch_normalize="
                          f"{int(other.bn is not None)}) do not match this layer's {tuple(layer.conv.weight.shape)}",
                          "share_index")
    layer.share(other, source)


class ConnectedBlock(Block):
    """``[connected]``: flatten [B, C*H*W] -> Linear (+ BatchNorm1d) + activation -> [B, out, 1, 1]."""

    def __init__(self, fc: nn.Linear, bn: nn.BatchNorm1d | None, act: nn.Module) -> None:
        super().__init__()
        self.fc, self.bn, self.act = fc, bn, act
        self.out_shape = (fc.out_features, 1, 1)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        x = self.fc(x.flatten(1))
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)[:, :, None, None]

    def darknet_tensors(self) -> list[torch.Tensor]:
        """Darknet order: ``bias[out], weights[out*in]``, then BN ``gamma, mean, var`` when present.

        With BN the Darknet ``bias`` plays the role of BN beta, so the Linear has no bias of its own here.
        """
        if self.bn is None:
            return [self.fc.bias.data, self.fc.weight.data]
        return [self.bn.bias.data, self.fc.weight.data, self.bn.weight.data, self.bn.running_mean,
                self.bn.running_var]


@BLOCKS.register("connected", keys=("output", "activation", "batch_normalize"))
def build_connected(block: CfgBlock, ctx: BuildContext) -> ConnectedBlock:
    """Fully connected layer over the flattened input."""
    inputs = math.prod(ctx.in_shape)
    outputs = block.get_int("output", 1)
    if outputs < 1:
        raise block.error(f"must be >= 1, got {outputs}", "output")
    _check_weights(block, inputs * outputs, "output")
    bn = bool(block.get_int("batch_normalize", 0))
    norm = nn.BatchNorm1d(outputs, eps=BN_EPS, momentum=0.01) if bn else None
    return ConnectedBlock(nn.Linear(inputs, outputs, bias=not bn), norm, make_activation(block, "logistic"))
