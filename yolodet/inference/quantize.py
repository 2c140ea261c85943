"""int8 inference on the CPU: per-channel int8 weights, activations quantised with calibrated ranges
(:mod:`yolodet.inference.calibrate`), convolutions run by oneDNN's int8 kernels; every other layer in fp32.

Why this path: ``torch.ops.onednn.qconv_prepack`` / ``qconv2d_pointwise`` are the kernels PyTorch's own x86 int8
flow (PT2E + ``X86InductorQuantizer`` + Inductor) lowers to, called here directly on plain ``uint8`` tensors, so
inference needs neither ``torch.compile`` (a C++ toolchain and a minute of compiling per model and size) nor
``torch.fx`` tracing (Darknet's route/shortcut read shapes at run time) nor the quantised tensor types of the eager
``torch.ao`` flow (deprecated in torch 2.14). Measured alternatives on a 2-core AVX2 EPYC (no VNNI), yolov3-tiny
at 416: ONNX Runtime 1.32's static QDQ quantisation (per-channel, u8/s8) ran *slower* than ORT in fp32; the eager
``torch.ao`` quantised modules (fbgemm or oneDNN engine) were within noise of this path.

What runs how:

- ``[convolutional]``: weights BN-folded, then int8 per output channel (symmetric, scale = max |w| / 127); the
  input activation uint8 per tensor (asymmetric, from the producer's calibrated range); int32 accumulation and the
  bias in oneDNN, fp32 output. relu, relu6 and swish fuse into the int8 convolution; leaky, mish, logistic ... run
  after it in fp32 (oneDNN's int8 convolution has no leaky post-op in torch 2.14). The first convolution (it reads
  the image, 3 channels: memory-bound, nothing to gain) stays fp32, and so do the convolutions that feed a
  detection head (their raw outputs are the boxes and scores; 2% of yolov3-tiny's multiply-adds): on coco128
  (yolov3-tiny, letterbox, VNNI, calibrated on coco128) that moves AP50 from 0.0035 below fp32 to 0.0001 below.
- Without VNNI (:func:`cpu_has_vnni` False: AVX2 CPUs), 3x3 stride-1 convolutions run as Winograd on the int8 codes
  instead, F(4x4, 3x3) with 16-bit transformed operands or F(2x2, 3x3) in 8 bits
  (:class:`~yolodet.inference.winograd_int8.Int8Winograd`, hand-written AVX2 kernels): oneDNN's direct int8 kernel
  is there no faster than the fp32 path's Winograd, and these are 1.5-2.5x faster than either. 1x1 convolutions
  run in yolodet's own AVX2 kernel too (:class:`~yolodet.inference.pointwise_int8.Int8Pointwise`). Both fuse leaky
  and relu. With VNNI oneDNN's direct kernels are faster and run everywhere. ``winograd=False`` keeps oneDNN's
  direct kernels on AVX2 as well.
- 2x2/2 ``[maxpool]``, nearest ``[upsample]`` and one-input ``[route]`` work on whichever form their input has
  (uint8 or fp32; exact either way: max, copy and slicing commute with a monotonic quantisation).
- everything else (``[shortcut]``, multi-input ``[route]`` concatenation, other pools, ``[yolo]`` ...) is an fp32
  island: its inputs are dequantised where they are only held as uint8 (conv outputs are kept in fp32 wherever
  anything but an int8 layer reads them).
- The AVX2 kernels' epilogue (:meth:`~yolodet.inference.int8_kernels.KernelConv.run`) writes each output in the forms
  its readers need (:meth:`QuantizedNet._plan`): the next layer's uint8 codes directly (a 1x1 that only a 3x3 reads
  never exists in fp32), and a plain ``[shortcut]`` right after a 3x3 is added inside the kernel (darknet53's 23
  residual blocks). The same numbers, bit for bit, as running every layer alone (``fuse = False``; the tests hold
  it): the codes are what ``torch.quantize_per_tensor`` stores, the addition is the shortcut's. yolo-v3 at 416 on
  AVX2: 1-3 ms of ~123 (the quantisation and shortcut passes it saves cost ~8 ms alone, but the kernels' stores
  grow by most of that).
- Activations are uint8 codes 0..255 everywhere. Without VNNI (AVX2, AVX-512 without VNNI) oneDNN multiplies
  u8 x s8 pairs with ``vpmaddubsw``, which adds two products in 16 bits: 8-bit activations times 8-bit weights
  can saturate there. PyTorch's x86 qconfig gives up a bit of every activation for it (``reduce_range``), ONNX
  Runtime a bit of every weight. Here each output channel's weight scale instead keeps its two largest |weights|
  at most 128 codes *together* (:func:`int8_weights`): whichever two products oneDNN pairs (both weights
  belong to one output channel), their sum is at most 255 * 128 = 32640, exact for every input. On yolov3-tiny the
  largest weight keeps ~69 of 127 codes. The head outputs move less than with 7-bit activations (AVX2, coco128,
  both preprocessings, both calibrations: mean score error -12 to -18%, box error -20 to -29%) and, on three of
  those four settings, less than with 7-bit weights. With VNNI or AMX (32-bit sums) the scale is max |w| / 127.
  yolodet's own AVX2 kernels know their pairing and sum four products per 16-bit lane before widening (a quarter
  fewer multiply instructions): there every such quad of codes is bounded by 128 instead
  (:func:`~yolodet.inference.int8_rounding.kernel_int8_weights`), a scale within a few percent of the pair bound's.
"""

from __future__ import annotations

import logging
import warnings
from typing import Sequence

import torch
from torch import nn

from yolodet.inference.calibrate import Calibration
from yolodet.inference.direct_int8 import Int8Direct3x3
from yolodet.inference.frozen import FrozenConv, PairMaxPool
from yolodet.inference.int8_kernels import KernelConv
from yolodet.inference.int8_rounding import cpu_has_vnni, int8_weights
from yolodet.inference.packed import PackedWeights
from yolodet.inference.pointwise_int8 import Int8Pointwise
from yolodet.inference.winograd_int8 import Int8Winograd
from yolodet.modeling.blocks.base import HeadBlock
from yolodet.modeling.blocks.structural import Route, Shortcut, Upsample
from yolodet.modeling.model import Darknet

__all__ = ["QuantConv", "QuantizedNet", "cpu_has_vnni", "int8_available", "int8_layer_kind", "int8_weights",
           "quantize_net"]

log = logging.getLogger(__name__)

_FUSABLE = {"none", "relu", "hardtanh", "swish"}  # oneDNN int8 convolution post-ops (torch 2.14)
_MIN_REDUCTION = 32  # a conv summing fewer products per output (in_channels/groups * k * k) stays fp32


def int8_available() -> bool:
    """Whether this PyTorch build has oneDNN's int8 convolution."""
    return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv2d_pointwise"))


def _qparams(low: float, high: float) -> tuple[float, int]:
    """Range -> (scale, zero point) of uint8 codes 0..255; the range is widened to include 0 (exact zeros)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255, 1e-8)
    return scale, int(min(max(round(-low / scale), 0), 255))


def _quantize(x: torch.Tensor, qp: tuple[float, int]) -> torch.Tensor:
    """fp32 -> uint8 codes ``clamp(round(x / s) + z, 0, 255)``, same shape and memory format."""
    scale, zero = qp
    try:  # one vectorised pass; its bytes as a plain uint8 tensor, no copy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quint8 tensors are deprecated; only their bytes are used here
            t = torch.quantize_per_tensor(x.float(), scale, zero, torch.quint8)
        return torch.empty(0, dtype=torch.uint8, device=x.device).set_(t.untyped_storage(), t.storage_offset(),
                                                                       t.shape, t.stride())
    except (AttributeError, RuntimeError):  # a PyTorch without quantised tensors
        return x.float().mul(1.0 / scale).add_(zero).round_().clamp_(0, 255).to(torch.int32).to(torch.uint8)


def _dequantize(q: torch.Tensor, qp: tuple[float, int]) -> torch.Tensor:
    return q.to(torch.int32).sub_(qp[1]).float().mul_(qp[0])


class QuantConv(nn.Module):
    """A :class:`FrozenConv` with int8 weights: uint8 [B, C, H, W] (codes of ``in_qp``, channels_last) ->
    fp32 [B, filters, H', W'] after the activation."""

    sources: tuple[int, ...] = ()

    def __init__(self, conv: FrozenConv, in_qp: tuple[float, int]) -> None:
        super().__init__()
        codes, scale = int8_weights(conv.weight, cpu_has_vnni())
        self.register_buffer("qweight", codes)
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_zero", torch.zeros(len(scale), dtype=torch.int64))
        self.register_buffer("bias", conv.bias.detach().float())
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.in_qp, self.out_shape, self.act = in_qp, conv.out_shape, conv.act
        fused = conv._attr in _FUSABLE and not conv._act_after
        self._attr, self._scalars = (conv._attr, conv._scalars) if fused else ("none", [])
        self._frozen = None if fused else conv  # its fp32 activation (in place where it can be)
        self._packed = PackedWeights()  # input (C, H, W) -> oneDNN-layout int8 weight

    @staticmethod
    def applies(conv: FrozenConv) -> bool:
        w = conv.weight
        return w.shape[1] * w.shape[-1] * w.shape[-2] >= _MIN_REDUCTION and int8_available()

    def forward(self, q: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        q = q.contiguous(memory_format=torch.channels_last)
        packed = self._packed.get(tuple(q.shape[1:]), lambda: torch.ops.onednn.qconv_prepack(
            self.qweight, self.w_scale, self.in_qp[0], self.in_qp[1], self.stride, self.padding, self.dilation,
            self.groups, list(q.shape)))
        y = torch.ops.onednn.qconv2d_pointwise(q, self.in_qp[0], self.in_qp[1], packed, self.w_scale, self.w_zero,
                                               self.bias, self.stride, self.padding, self.dilation, self.groups,
                                               1.0, 0, torch.float32, self._attr, self._scalars, "")
        return y if self._frozen is None else self._frozen._activate_(y)


_INT8 = (QuantConv, Int8Winograd, Int8Pointwise, Int8Direct3x3)  # the layers that take uint8 codes


def int8_layer_kind(conv: FrozenConv, own_kernels: bool) -> type[nn.Module]:
    """The int8 layer ``conv`` runs as (one :class:`QuantConv.applies` to): yolodet's AVX2 Winograd, 1x1 or strided
    kernel where ``own_kernels`` (no VNNI) and it applies, else oneDNN's :class:`QuantConv`."""
    for kind in (Int8Winograd, Int8Pointwise, Int8Direct3x3) if own_kernels else ():
        if kind.applies(conv):
            return kind
    return QuantConv


class _Value:
    """One layer's output, held as fp32, as uint8 codes of ``qp``, or both (each made from the other on demand)."""

    __slots__ = ("fp", "q", "qp")

    def __init__(self, qp: tuple[float, int], fp: torch.Tensor | None = None, q: torch.Tensor | None = None):
        self.qp, self.fp, self.q = qp, fp, q

    def float(self) -> torch.Tensor:
        if self.fp is None:
            self.fp = _dequantize(self.q, self.qp)
        return self.fp

    def codes(self) -> torch.Tensor:
        if self.q is None:
            self.q = _quantize(self.fp, self.qp)
        return self.q


def _fusable_shortcut(layer: nn.Module, conv: nn.Module) -> bool:
    """Whether ``layer``, right after ``conv``, is a plain ``[shortcut]`` (one ``from`` of the same shape, unweighted,
    linear) that ``conv``'s kernel can add in its epilogue."""
    return (isinstance(layer, Shortcut) and isinstance(conv, KernelConv) and conv.fuses_epilogue
            and len(layer.sources) == 1 and layer.weight is None and layer.pjreddie is None
            and isinstance(layer.act, nn.Identity) and tuple(layer.out_shape) == tuple(conv.out_shape))


def _passes_codes(layer: nn.Module) -> bool:
    """Layers that run on uint8 codes unchanged (same quantisation parameters in and out)."""
    if isinstance(layer, (PairMaxPool, HeadBlock)):
        return True
    if isinstance(layer, Upsample):
        return layer.scale == 1
    return isinstance(layer, Route) and len(layer.sources) == 1


class QuantizedNet(nn.Module):
    """A BN-folded Darknet (:func:`~yolodet.inference.optimize.fold_batchnorm`) whose convolutions run in int8.

    ``forward(x)``: x float32 [B, 3, H, W] -> the raw head outputs, float32. Attributes ``heads``, ``num_classes``
    and ``net`` are the folded Darknet's.
    """

    def __init__(self, folded: Darknet, calibration: Calibration, winograd: bool = True) -> None:
        super().__init__()
        self.folded, self.calibration = folded, calibration
        layers = folded.layers
        qps: list[tuple[float, int]] = []  # the quantisation parameters of each layer's output
        for i, layer in enumerate(layers):
            if _passes_codes(layer):
                src = layer.sources[0] if layer.sources else i - 1
                qps.append(qps[src] if src >= 0 else _qparams(*calibration.layer(-1)))
            else:
                qps.append(_qparams(*calibration.layer(i)))
        self.input_qp = _qparams(*calibration.layer(-1))
        self.qps = qps
        head_inputs = {i - 1 for i, layer in enumerate(layers) if isinstance(layer, HeadBlock)}
        own = winograd and not cpu_has_vnni()  # with VNNI oneDNN's direct int8 kernels are the faster ones
        for i, layer in enumerate(layers):
            if (i > 0 and i not in head_inputs and isinstance(layer, FrozenConv)
                    and QuantConv.applies(layer)):
                layers[i] = int8_layer_kind(layer, own)(layer, qps[i - 1])
        self.fuse = True
        self._plan()
        tiles = [layer.tile for layer in layers if isinstance(layer, Int8Winograd)]
        pointwise = sum(isinstance(layer, Int8Pointwise) for layer in layers)
        strided = sum(isinstance(layer, Int8Direct3x3) for layer in layers)
        log.info("int8: %d convolutions, %d of them as Winograd on int8 codes, F(4x4) %d, F(2x2) %d, %d 1x1 and %d "
                 "strided 3x3 (%s)", len(self.int8_layers()), len(tiles), tiles.count(4), tiles.count(2), pointwise,
                 strided, "oneDNN has VNNI here: its direct kernels are faster" if winograd and not own
                 else "the AVX2 kernels" if tiles or pointwise or strided
                 else "none applies or the kernels are not available here")

    def _plan(self) -> None:
        """Which forms each layer's output is needed in, and which ``[shortcut]`` layers the kernels absorb.

        ``_needs[i]``: (fp32, codes) for output i: codes where an int8 layer reads it (directly or through
        maxpool / upsample / one-input route, which work on either form), fp32 where anything else does or the
        model returns it. ``_residual[i]``: the ``[shortcut]`` source that kernel layer i adds in its epilogue (the
        shortcut at i + 1 is then skipped), or None. Kernel layers write their output in the needed forms directly
        (:meth:`KernelConv.run`): the same numbers as quantising their fp32 output afterwards, in one pass."""
        layers, n = self.layers, len(self.layers)
        fp, q = [False] * n, [False] * n
        for i in self.folded._outputs:
            fp[i] = True
        for j in range(n - 1, -1, -1):
            layer = layers[j]
            if isinstance(layer, _INT8):
                q[j - 1] = True
            elif _passes_codes(layer):
                src = layer.sources[0] if layer.sources else j - 1
                fp[src] |= fp[j]
                q[src] |= q[j]
            else:
                for s in ([] if isinstance(layer, Route) else [j - 1]) + list(layer.sources):
                    if s >= 0:
                        fp[s] = True
        residual: list[int | None] = [None] * n
        for i in range(n - 1):
            nxt = layers[i + 1]
            if (_fusable_shortcut(nxt, layers[i]) and nxt.sources[0] != i and not self.folded._keep[i]
                    and i not in self.folded._outputs):
                residual[i] = nxt.sources[0]
        self._needs = list(zip(fp, q))
        self._residual = residual

    @property
    def heads(self):
        return self.folded.heads

    @property
    def num_classes(self) -> int:
        return self.folded.num_classes

    @property
    def net(self):
        return self.folded.net

    @property
    def layers(self) -> nn.ModuleList:
        return self.folded.layers

    def int8_layers(self) -> list[int]:
        """Indices of the layers whose convolution runs in int8 (:class:`QuantConv`, :class:`Int8Winograd` or
        :class:`Int8Pointwise`)."""
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, _INT8)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x float32 [B, 3, H, W] -> the raw head outputs. With ``fuse`` False (the reference the tests hold the
        fused run to, bit for bit) every layer runs alone and the next int8 layer quantises its fp32 output."""
        v = _Value(self.input_qp, fp=x.float())
        saved: list[_Value | None] = []
        skip = False  # this layer is a [shortcut] the previous kernel added
        for i, (layer, keep) in enumerate(zip(self.layers, self.folded._keep)):
            refs = [saved[s] for s in layer.sources]
            qp = self.qps[i]
            if skip:
                skip = False
            elif self.fuse and isinstance(layer, KernelConv) and layer.fuses_epilogue:
                res = self._residual[i]
                skip = res is not None
                out = i + 1 if skip else i
                want_fp, want_q = self._needs[out]
                fp, q = layer.run(v.codes(), residual=None if res is None else saved[res].float(),
                                  codes_qp=self.qps[out] if want_q else None, keep_float=want_fp or not want_q)
                v = _Value(self.qps[out], fp=fp, q=q)
            elif isinstance(layer, _INT8):
                v = _Value(qp, fp=layer(v.codes()))
            elif _passes_codes(layer):
                src = refs[0] if refs else v
                if isinstance(layer, HeadBlock):
                    v = src
                elif not self.fuse:
                    v = (_Value(qp, q=layer(src.q, [src.q])) if src.q is not None
                         else _Value(qp, fp=layer(src.fp, [src.fp])))
                else:  # each form that is there and needed (the fp32 one from fp32: exact where fp32 is read)
                    want_fp, want_q = self._needs[i]
                    fp = layer(src.fp, [src.fp]) if src.fp is not None and (want_fp or src.q is None) else None
                    q = layer(src.q, [src.q]) if src.q is not None and (want_q or fp is None) else None
                    v = _Value(qp, fp=fp, q=q)
            else:
                v = _Value(qp, fp=layer(v.float(), [r.float() for r in refs]))
            saved.append(v if keep else None)
        return [saved[i].float() for i in self.folded._outputs]


def quantize_net(folded: Darknet, calibration: Calibration, winograd: bool = True) -> QuantizedNet:
    """``folded`` (a :func:`fold_batchnorm` copy, fp32 on the CPU; its layers are replaced) -> int8 network.
    ``winograd``: run 3x3 stride-1 convolutions as int8 Winograd where oneDNN has no VNNI
    (:mod:`yolodet.inference.winograd_int8`); False: all by oneDNN's direct int8 kernel."""
    if len(calibration.ranges) != len(folded.layers) + 1:
        raise ValueError(f"the calibration has ranges for {len(calibration.ranges) - 1} layers, the model has "
                         f"{len(folded.layers)}")
    if not int8_available():
        raise RuntimeError("this PyTorch build has no oneDNN int8 convolution (torch.ops.onednn.qconv2d_pointwise)")
    return QuantizedNet(folded, calibration, winograd).eval()
