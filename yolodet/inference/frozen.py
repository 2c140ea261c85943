"""The frozen layers of an optimised Darknet copy: :class:`FrozenConv` (BN folded, activation fused by oneDNN,
weights reordered once) and :class:`PairMaxPool`, and :func:`fold_batchnorm`, which builds the copy. See
:mod:`yolodet.inference.optimize` for what they buy."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from yolodet.modeling.blocks.conv import ConvBlock
from yolodet.modeling.blocks.structural import MaxPool
from yolodet.modeling.model import Darknet
from yolodet.inference.packed import PackedWeights, onednn_conv_available
from yolodet.inference.winograd import Winograd3x3, winograd_pays

__all__ = ["FrozenConv", "PairMaxPool", "cpu_has_native_bf16", "fold_batchnorm", "mish_"]


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (else PyTorch emulates them, slowly)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Activation module -> (oneDNN post-op name, scalars). Others (mish, elu, selu) run as a separate op.
def _fused_attr(act: nn.Module) -> tuple[str, list[float]] | None:
    if isinstance(act, nn.Identity):
        return "none", []
    if isinstance(act, nn.LeakyReLU):
        return "leaky_relu", [float(act.negative_slope)]
    if isinstance(act, nn.ReLU6):  # oneDNN has no relu6: it is hardtanh(0, 6)
        return "hardtanh", [0.0, 6.0]
    simple = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.SiLU: "swish", nn.Tanh: "tanh"}
    name = simple.get(type(act))
    return (name, []) if name else None


class FrozenConv(nn.Module):
    """Inference-only ``[convolutional]``: BN folded into ``weight``/``bias``, activation fused on the CPU.

    Same interface as a :class:`~yolodet.blocks.base.Block` (``forward(x, refs)``, ``out_shape``, ``sources``).
    Input [B, C, H, W] (any memory format; channels_last is fastest) -> [B, filters, H', W'].
    """

    sources: tuple[int, ...] = ()

    def __init__(self, block: ConvBlock, *, winograd: bool = True) -> None:
        super().__init__()
        conv = block.conv
        weight, bias = _fold(conv, block.bn)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.act = copy.deepcopy(block.act)
        self.out_shape = block.out_shape
        fused = _fused_attr(block.act)
        self._attr, self._scalars = fused if fused else ("none", [])
        self._act_after = fused is None or self._attr == "none"
        self._mish = isinstance(block.act, nn.Mish)
        self._packed = PackedWeights()  # input (C, H, W, dtype) -> oneDNN-layout weight
        self.winograd = winograd  # F(4x4, 3x3) allowed where it pays (fp32 on the CPU, through oneDNN)
        self._winograd: Winograd3x3 | None = None  # built on the first input that pays (fp32 CPU, 3x3 s1 p1)

    def darknet_tensors(self) -> list[torch.Tensor]:
        raise TypeError("an optimised (BN-folded) model cannot be saved as Darknet weights; save the original")

    def _apply(self, fn, recurse=True):  # .to()/.half()/...: the packed and transformed weights are stale
        self._packed.clear()
        self._winograd = None
        return super()._apply(fn, recurse)

    def _use_winograd(self, x: torch.Tensor) -> bool:
        """fp32 on the CPU with oneDNN, a 3x3 stride-1 'same' convolution of a shape where F(4x4, 3x3) is faster."""
        return (self.winograd and x.dtype == self.weight.dtype == torch.float32 and x.device.type == "cpu"
                and onednn_conv_available() and self.weight.shape[-2:] == (3, 3)
                and self.stride == (1, 1) and self.padding == (1, 1) and self.dilation == (1, 1)
                and self.groups == 1 and winograd_pays(x.shape[1], self.weight.shape[0], *x.shape[-2:]))

    def _use_onednn(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or x.dtype != self.weight.dtype or not onednn_conv_available():
            return False
        return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and cpu_has_native_bf16())

    def forward(self, x: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        if self._use_winograd(x):
            if self._winograd is None:
                self._winograd = Winograd3x3(self.weight, self.bias)
            slope = self._fused_slope()  # linear, leaky and relu inside the output transform
            y = self._winograd(x, slope)
            return y if slope is not None else self._activate_(y)
        if self._use_onednn(x):
            # oneDNN picks the weight layout by input size; the batch size does not change it (measured), the
            # spatial size can (a mismatched layout is reordered on every call: up to 3x slower).
            packed = self._packed.get((*x.shape[1:], x.dtype), lambda: torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape)))
            y = torch.ops.mkldnn._convolution_pointwise(
                x, packed, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
                self._attr, self._scalars, "")
            return self._activate_(y) if self._act_after else y
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self._activate_(y)

    def _fused_slope(self) -> float | None:
        """The activation as ``max(y, slope * y)``: leaky's slope, 0 for relu, 1 for linear; None for any other
        (the kernels that fuse it skip the max for 1)."""
        if self._attr == "leaky_relu":
            return float(self._scalars[0])
        if self._attr == "relu":
            return 0.0
        return 1.0 if isinstance(self.act, nn.Identity) else None

    def _activate_(self, y: torch.Tensor) -> torch.Tensor:
        """The activation on a fresh conv output (leaky, relu and CPU mish in place; bf16 mish through fp32:
        4.7 instead of F.mish's 11 ms on [1, 32, 416, 416], the same bf16 result)."""
        if self._attr == "leaky_relu":
            return F.leaky_relu_(y, self._scalars[0])
        if self._attr == "relu":
            return y.relu_()
        if self._mish and y.device.type == "cpu" and y.is_floating_point():
            return mish_(y) if y.dtype == torch.float32 else mish_(y.float()).to(y.dtype)
        return self.act(y)


def mish_(y: torch.Tensor) -> torch.Tensor:
    """Mish in place: ``y * tanh(softplus(y))`` as ``y - 2 y / ((1 + e^y)^2 + 1)``, three elementwise passes.

    PyTorch's CPU ``F.mish`` evaluates log1p, exp and tanh per element: 10.6 ms for yolov4's first output
    ([1, 32, 416, 416]) on a 2-core AVX-512 EPYC, 30% of the whole network's time; this is 4 ms, and 0.1 ms more
    than an exp alone. Within 2e-6 of float64 mish (relative above |mish| = 1, absolute below: the cancellation for
    y << 0, where mish is ~0, costs up to 1.3e-6 near y = -14; fp32 ``F.mish`` stays within 1e-7); for y > 44,
    ``(1 + e^y)^2`` is inf and the result is y, as Darknet's softplus threshold gives.
    y: a float32 tensor the caller owns (a fresh conv output), any shape and layout; returned.
    """
    e = torch.exp(y)
    e.add_(1)
    torch.addcmul(e.new_ones(()), e, e, out=e)  # (1 + e^y)^2 + 1
    return y.addcdiv_(y, e, value=-2)


class PairMaxPool(nn.Module):
    """``[maxpool] size=2 stride=2`` (no padding) as the maximum of the four strided quarter views: one pass over
    the input instead of a window loop. In channels_last on a 2-core AVX-512 EPYC, [1, 16, 416, 416] -> 208: 0.5 ms
    against 1.4 ms for ``F.max_pool2d``. Exactly equal to :class:`~yolodet.blocks.structural.MaxPool` (NaN
    propagates in both); the output keeps the input's memory format."""

    sources: tuple[int, ...] = ()

    def __init__(self, block: MaxPool) -> None:
        super().__init__()
        self.out_shape = block.out_shape

    @staticmethod
    def applies(block: MaxPool) -> bool:
        return block.size == 2 and tuple(block.stride) == (2, 2) and not any(block.pads)

    def forward(self, x: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # an odd last row/column is dropped, as by max_pool2d
        top, bottom = x[..., 0:h:2, :w], x[..., 1:h:2, :w]
        return torch.maximum(torch.maximum(top[..., 0::2], top[..., 1::2]),
                             torch.maximum(bottom[..., 0::2], bottom[..., 1::2]))


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv (+ eval-mode BN) -> (weight, bias) of one conv: ``w * s``, ``(b - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)``. The per-channel terms are computed in float64; the weights get one rounding
    (one float32 pass: yolov3 has 62M weights and start-up time counts)."""
    w = conv.weight.detach()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                                device=w.device)
    if bn is None:
        return w.clone(), b.to(w.dtype)
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = w * scale.to(w.dtype).view(-1, 1, 1, 1)
    bias = ((b - bn.running_mean.double()) * scale + bn.bias.detach().double()).to(w.dtype)
    return weight, bias


def fold_batchnorm(model: Darknet, *, winograd: bool = True) -> Darknet:
    """A copy of ``model`` (eval mode) whose ``[convolutional]`` layers are :class:`FrozenConv` (BN folded) and
    whose 2x2/2 ``[maxpool]`` layers are :class:`PairMaxPool`.

    ``model`` is not modified. The copy is for inference only: it cannot be trained or saved as ``.weights``.
    ``winograd``: let its fp32 CPU 3x3 convolutions use F(4x4, 3x3) where that is faster.
    """
    convs = [i for i, layer in enumerate(model.layers) if isinstance(layer, ConvBlock)]
    pools = [i for i, layer in enumerate(model.layers) if isinstance(layer, MaxPool) and PairMaxPool.applies(layer)]
    # Those layers are replaced below: deepcopy's memo makes them None in the copy instead of copying their weights.
    folded = copy.deepcopy(model, {id(model.layers[i]): None for i in convs})
    for i in convs:
        folded.layers[i] = FrozenConv(model.layers[i], winograd=winograd)
    for i in pools:
        folded.layers[i] = PairMaxPool(model.layers[i])
    return folded.eval().requires_grad_(False)
