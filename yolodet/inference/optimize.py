"""Inference-time optimisation: a frozen copy of a :class:`~yolodet.model.Darknet` that computes the same raw head
outputs faster, in fp32 or in a reduced precision.

``optimize_for_inference(model)`` never touches ``model`` (a training loop can keep training it). The copy:

- folds every ``[convolutional]`` BatchNorm into the convolution (fp32 outputs equal the unfolded model's within
  ~1e-6 relative);
- on the CPU, runs each convolution and its activation as *one* oneDNN primitive
  (``mkldnn::_convolution_pointwise``) with the weights reordered once into oneDNN's blocked layout (cached per
  input shape); leaky, relu, relu6, logistic, swish, tanh and linear fuse, others (mish ...) run after the conv;
- in fp32 on the CPU, runs the wide mid-resolution 3x3 stride-1 convolutions by Winograd's F(4x4, 3x3)
  (:mod:`yolodet.winograd`, where :func:`~yolodet.winograd.winograd_pays`; outputs within ~1e-5 relative of the
  direct convolution): yolov3 at 416 322 -> 265 ms, yolov4 at 608 847 -> 721 ms on a 2-core AVX-512 EPYC, for
  4x those layers' weights in memory (yolov3 +260 MB, yolov4 at 608 +730 MB; ``winograd=False`` saves it);
- runs 2x2/2 ``[maxpool]`` as one elementwise maximum of four strided views (:class:`PairMaxPool`, exact);
- keeps activations in ``channels_last`` (NHWC), the layout oneDNN and cuDNN convolve fastest;
- on the CPU, runs a batch one image at a time: the early full-resolution layers of a batch of 8 spill out of the
  caches and become memory-bound (2-core EPYC, 416x416, yolov3-tiny: 35 ms/image one by one vs 46 ms/image as a
  batch of 8 with AVX2, 30 vs 35 ms/image with AVX-512; yolov3 with AVX2: 375 vs 394 ms/image);
- casts the weights once to the compute dtype of ``precision`` (``bf16``, or ``fp16`` on CUDA) instead of per call
  as ``torch.autocast`` would; every layer of a Darknet cfg (conv, pool, upsample, route, shortcut) is safe in
  these dtypes. Outputs come back as float32, so decoding and NMS stay in fp32.

Precision (``PRECISIONS``): ``fp32`` (exact), ``bf16`` (CPUs with native bf16 -- AVX-512 BF16/AMX, or
``avx_ne_convert`` -- run it through oneDNN; elsewhere it is correct but emulated and slower than fp32), ``fp16``
(CUDA only). ``"half"`` picks the device's fast mode (:func:`fast_precision`): ``fp16`` on CUDA, ``bf16`` on a
CPU with native bf16, ``fp32`` on other CPUs.
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from yolodet.modeling.blocks.conv import ConvBlock
from yolodet.modeling.blocks.structural import MaxPool
from yolodet.modeling.model import Darknet
from yolodet.inference.winograd import Winograd3x3, winograd_pays

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "FrozenConv", "InferenceModel", "PairMaxPool", "compute_dtype", "cpu_has_native_bf16",
           "fast_precision", "fold_batchnorm", "optimize_for_inference", "resolve_precision", "weights_version"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MAX_PACKED = 4  # input sizes a FrozenConv keeps reordered weights for (yolov3: 248 MB each)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (else PyTorch emulates them, slowly)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fast_precision(device: str | torch.device) -> str:
    """The device's fast mode: ``fp16`` on CUDA, ``bf16`` on CPUs with native bf16, else ``fp32`` (emulated bf16
    is many times slower than fp32, so there is nothing faster to pick)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return "fp16"
    return "bf16" if dev.type == "cpu" and cpu_has_native_bf16() else "fp32"


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` (one of :data:`PRECISIONS`, or ``"half"``: :func:`fast_precision`) -> one of ``PRECISIONS``.

    Raises:
        ValueError: unknown name, or ``fp16`` on a non-CUDA device.
    """
    dev = torch.device(device)
    if precision == "half":
        fast = fast_precision(dev)
        if fast == "fp32":
            log.warning("%s has no fast reduced precision (no native bf16 on this CPU): running fp32", dev)
        return fast
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)} (or 'half')")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device, got {dev}; on the CPU use bf16")
    if precision == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    return precision


@functools.lru_cache(maxsize=None)
def _warn_emulated_bf16() -> None:  # once per process, however many detectors are built
    log.warning("this CPU has no native bf16 (AVX-512 BF16, AMX or avx_ne_convert): bf16 runs emulated, many times "
                "slower than fp32")


def compute_dtype(precision: str) -> torch.dtype:
    """``"fp32"`` -> ``torch.float32``, ``"bf16"`` -> ``torch.bfloat16``, ``"fp16"`` -> ``torch.float16``."""
    return _DTYPES[precision]


def weights_version(model: nn.Module) -> tuple:
    """A cheap fingerprint of ``model``'s tensors: changes when any parameter or buffer is replaced, moved or
    modified in place (optimizer steps, ``load_state_dict``), so a cached optimised copy knows it is stale."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


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


def _mkldnn_conv_ok() -> bool:
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


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
        self._packed: dict[tuple, torch.Tensor] = {}  # input (C, H, W, dtype) -> oneDNN-layout weight
        self.winograd = winograd  # F(4x4, 3x3) allowed where it pays (fp32 on the CPU)
        self._winograd: Winograd3x3 | None = None  # built on the first input that pays (fp32 CPU, 3x3 s1 p1)

    def darknet_tensors(self) -> list[torch.Tensor]:
        raise TypeError("an optimised (BN-folded) model cannot be saved as Darknet weights; save the original")

    def _apply(self, fn, recurse=True):  # .to()/.half()/...: the packed and transformed weights are stale
        self._packed = {}
        self._winograd = None
        return super()._apply(fn, recurse)

    def _use_winograd(self, x: torch.Tensor) -> bool:
        """fp32 on the CPU, a 3x3 stride-1 'same' convolution of a shape where F(4x4, 3x3) is faster."""
        return (self.winograd and x.dtype == self.weight.dtype == torch.float32 and x.device.type == "cpu"
                and self.weight.shape[-2:] == (3, 3)
                and self.stride == (1, 1) and self.padding == (1, 1) and self.dilation == (1, 1)
                and self.groups == 1 and winograd_pays(x.shape[1], self.weight.shape[0], *x.shape[-2:]))

    def _use_onednn(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or x.dtype != self.weight.dtype or not _mkldnn_conv_ok():
            return False
        return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and cpu_has_native_bf16())

    def forward(self, x: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        if self._use_winograd(x):
            if self._winograd is None:
                self._winograd = Winograd3x3(self.weight, self.bias)
            return self._activate_(self._winograd(x))
        if self._use_onednn(x):
            # oneDNN picks the weight layout by input size; the batch size does not change it (measured), the
            # spatial size can (a mismatched layout is reordered on every call: up to 3x slower).
            key = (*x.shape[1:], x.dtype)
            packed = self._packed.get(key)
            if packed is None:
                if len(self._packed) >= _MAX_PACKED:
                    del self._packed[next(iter(self._packed))]  # the oldest: bounds memory for varying sizes
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight, list(self.padding), list(self.stride), list(self.dilation), self.groups,
                    list(x.shape))
                self._packed[key] = packed
            y = torch.ops.mkldnn._convolution_pointwise(
                x, packed, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
                self._attr, self._scalars, "")
            return self.act(y) if self._act_after else y
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.act(y)

    def _activate_(self, y: torch.Tensor) -> torch.Tensor:
        """The activation on a fresh conv output (leaky and relu in place)."""
        if self._attr == "leaky_relu":
            return F.leaky_relu_(y, self._scalars[0])
        if self._attr == "relu":
            return y.relu_()
        return self.act(y)


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


class InferenceModel(nn.Module):
    """An optimised, frozen copy of a Darknet (see the module docstring). Build with :func:`optimize_for_inference`.

    ``forward(x)``: x [B, C, H, W] float in [0, 1] (any device/dtype/layout) -> the raw head outputs of
    :meth:`Darknet.forward` as **float32** tensors (channels_last memory) on ``device``. Runs under
    ``torch.inference_mode``.

    Attributes:
        net: the folded Darknet copy (its ``heads``, ``net``, ``num_classes`` are the original's).
        precision: one of :data:`PRECISIONS`; ``dtype`` its compute dtype.
        device, memory_format: where and in which layout the network runs.
        micro_batch: images per forward of ``net`` (a larger batch is split and the outputs concatenated); None:
            the whole batch at once.
    """

    def __init__(self, net: Darknet, *, precision: str, device: torch.device, channels_last: bool,
                 micro_batch: int | None) -> None:
        super().__init__()
        self.net = net
        self.precision = precision
        self.dtype = compute_dtype(precision)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.micro_batch = micro_batch

    @property
    def heads(self):
        return self.net.heads

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("an InferenceModel is frozen (BN folded); train the original model instead")
        return super().train(False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.micro_batch and x.shape[0] > self.micro_batch:
            parts = [self._run(chunk) for chunk in x.split(self.micro_batch)]
            return [torch.cat(heads) for heads in zip(*parts)]
        return self._run(x)

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=self.memory_format)
        return [o.float() for o in self.net(x)]


def optimize_for_inference(model: Darknet, *, precision: str = "fp32", device: str | torch.device | None = None,
                           channels_last: bool = True, micro_batch: int | None | str = "auto",
                           winograd: bool = True) -> InferenceModel:
    """A frozen, folded, fused copy of ``model`` for inference (``model`` itself is left untouched).

    Args:
        model: any :class:`Darknet` (train or eval mode, any device).
        precision: one of :data:`PRECISIONS` or ``"half"`` (see :func:`resolve_precision`).
        device: where to run; default: the device of ``model``'s parameters.
        channels_last: run in NHWC (faster with oneDNN and cuDNN; outputs are equal either way).
        micro_batch: split larger batches into forwards of this many images; ``"auto"``: 1 on the CPU (see the
            module docstring), the whole batch on CUDA; None: never split.

    Returns:
        An :class:`InferenceModel`; ``InferenceModel(x)`` equals ``model.eval()(x)`` within 1e-4 relative in fp32.
    """
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    with torch.no_grad():
        net = fold_batchnorm(model, winograd=winograd).to(device=device, dtype=compute_dtype(precision))
        if channels_last:
            # Activations are what matters: oneDNN reorders the weights itself and cuDNN goes NHWC when the input
            # is. Converting conv weights too would cost start-up time for nothing; the torchvision modules of
            # [backbone] cfgs are converted (their convs are not FrozenConv).
            for layer in net.layers:
                if not isinstance(layer, FrozenConv):
                    layer.to(memory_format=torch.channels_last)
    if micro_batch == "auto":
        micro_batch = 1 if device.type == "cpu" else None
    elif micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
        raise ValueError(f"micro_batch must be a positive int, None or 'auto', got {micro_batch!r}")
    return InferenceModel(net, precision=precision, device=device, channels_last=channels_last,
                          micro_batch=micro_batch).eval()
