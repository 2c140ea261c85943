"""Inference-time optimisation: a frozen copy of a :class:`~yolodet.model.Darknet` that computes the same raw head
outputs faster, in fp32 or in a reduced precision.

``optimize_for_inference(model)`` never touches ``model`` (a training loop can keep training it). The copy:

- folds every ``[convolutional]`` BatchNorm into the convolution (fp32 outputs equal the unfolded model's within
  ~1e-6 relative);
- on the CPU, runs each convolution and its activation as *one* oneDNN primitive
  (``mkldnn::_convolution_pointwise``) with the weights reordered once into oneDNN's blocked layout (cached per
  input shape); leaky, relu, relu6, logistic, swish, tanh and linear fuse; mish runs after the conv in place in
  three elementwise passes (:func:`~yolodet.inference.frozen.mish_`: PyTorch's ``F.mish`` took 30% of yolov4's
  time), others (elu, selu ...) as their modules;
- in fp32 on the CPU, runs the 3x3 stride-1 convolutions with at least 64 channels on mid-sized maps by Winograd's
  F(4x4, 3x3), its 36 products one grouped oneDNN convolution (:mod:`yolodet.inference.winograd`, where
  :func:`~yolodet.inference.winograd.winograd_pays`; outputs within ~2e-5 relative of the direct convolution), for
  4x those layers' weights in memory (``winograd=False`` saves it);
- on the CPU, keeps freed activation memory in the C heap for the next forward instead of page-faulting it in again
  (:mod:`yolodet.inference.memory`);
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
(CUDA only), ``int8`` (CPU only: int8 convolutions with activation ranges calibrated on images,
:mod:`yolodet.inference.quantize`; on CPUs without VNNI its 3x3 stride-1 convolutions run as int8 Winograd
F(2x2, 3x3), :mod:`yolodet.inference.winograd_int8`, unless ``winograd=False``). ``"half"`` picks the device's
fast mode (:func:`fast_precision`): ``fp16`` on CUDA, ``bf16`` on a CPU with native bf16, ``int8`` on other CPUs
(fp32 where PyTorch has no oneDNN int8).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from yolodet.inference.calibrate import DEFAULT_NOTE, Calibration, calibrate
from yolodet.inference.frozen import FrozenConv, PairMaxPool, cpu_has_native_bf16, fold_batchnorm
from yolodet.inference.memory import keep_freed_memory
from yolodet.inference.quantize import QuantizedNet, int8_available, quantize_net
from yolodet.modeling.model import Darknet

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "FrozenConv", "InferenceModel", "PairMaxPool", "compute_dtype", "cpu_has_native_bf16",
           "fast_precision", "fold_batchnorm", "optimize_for_inference", "resolve_precision", "weights_version"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


def fast_precision(device: str | torch.device) -> str:
    """The device's fast mode: ``fp16`` on CUDA, ``bf16`` on CPUs with native bf16, ``int8`` on other CPUs (emulated
    bf16 is many times slower than fp32), ``fp32`` where PyTorch has no oneDNN int8 either."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return "fp16"
    if dev.type != "cpu":
        return "fp32"
    if cpu_has_native_bf16():
        return "bf16"
    return "int8" if int8_available() else "fp32"


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` (one of :data:`PRECISIONS`, or ``"half"``: :func:`fast_precision`) -> one of ``PRECISIONS``.

    Raises:
        ValueError: unknown name, or ``fp16`` on a non-CUDA device.
    """
    dev = torch.device(device)
    if precision == "half":
        fast = fast_precision(dev)
        if fast == "fp32":
            log.warning("%s has no fast reduced precision (no native bf16, no oneDNN int8): running fp32", dev)
        else:
            log.info("fast mode on %s: %s", dev, fast)
        return fast
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)} (or 'half')")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device, got {dev}; on the CPU use bf16 or int8")
    if precision == "int8" and (dev.type != "cpu" or not int8_available()):
        raise ValueError(f"precision int8 needs a CPU and a PyTorch with oneDNN int8 convolutions, got {dev}")
    if precision == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    return precision


@functools.lru_cache(maxsize=None)
def _warn_emulated_bf16() -> None:  # once per process, however many detectors are built
    log.warning("this CPU has no native bf16 (AVX-512 BF16, AMX or avx_ne_convert): bf16 runs emulated, many times "
                "slower than fp32")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a precision's network takes and computes in: ``"fp32"`` -> ``torch.float32``, ``"bf16"`` ->
    ``torch.bfloat16``, ``"fp16"`` -> ``torch.float16``, ``"int8"`` -> ``torch.float32`` (its input; it quantises
    inside)."""
    return _DTYPES[precision]


def weights_version(model: nn.Module) -> tuple:
    """A cheap fingerprint of ``model``'s tensors: changes when any parameter or buffer is replaced, moved or
    modified in place (optimizer steps, ``load_state_dict``), so a cached optimised copy knows it is stale."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


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
                           winograd: bool = True,
                           calibration: Calibration | str | os.PathLike | Sequence[np.ndarray] | None = None,
                           img_size: tuple[int, int] | None = None,
                           preprocess: str = "darknet-letterbox") -> InferenceModel:
    """A frozen, folded, fused copy of ``model`` for inference (``model`` itself is left untouched).

    Args:
        model: any :class:`Darknet` (train or eval mode, any device).
        precision: one of :data:`PRECISIONS` or ``"half"`` (see :func:`resolve_precision`).
        device: where to run; default: the device of ``model``'s parameters.
        channels_last: run in NHWC (faster with oneDNN and cuDNN; outputs are equal either way).
        micro_batch: split larger batches into forwards of this many images; ``"auto"``: 1 on the CPU (see the
            module docstring), the whole batch on CUDA; None: never split.
        calibration: ``int8`` only: a :class:`~yolodet.inference.calibrate.Calibration` (from an int8 file), or
            the images to calibrate on (a folder, RGB uint8 arrays; None: the bundled sample, with a warning),
            preprocessed with ``preprocess`` at ``img_size`` (w, h; default: the cfg's) as the detector will.

    Returns:
        An :class:`InferenceModel`; ``InferenceModel(x)`` equals ``model.eval()(x)`` within 1e-4 relative in fp32.
    """
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if device.type == "cpu":
        keep_freed_memory()  # every forward reuses the last one's freed pages (yolodet.inference.memory)
    with torch.no_grad():
        net = fold_batchnorm(model, winograd=winograd).to(device=device, dtype=compute_dtype(precision))
        if precision == "int8":
            channels_last = True  # oneDNN's int8 kernels take NHWC codes
            net = quantize_net(net, _calibration(net, calibration, img_size, preprocess), winograd)
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


def _calibration(folded: Darknet, source, img_size: tuple[int, int] | None, preprocess: str) -> Calibration:
    """A given :class:`Calibration` (checked against the model), or one measured on ``source`` with ``folded``."""
    if isinstance(source, Calibration):
        if len(source.ranges) != len(folded.layers) + 1:
            raise ValueError(f"the calibration has ranges for {len(source.ranges) - 1} layers, the model has "
                             f"{len(folded.layers)}")
        return source
    if source is None:
        log.warning(DEFAULT_NOTE)
    size = img_size or (folded.net.width, folded.net.height)
    cal = calibrate(folded, source, img_size=size, preprocess_mode=preprocess)
    log.info("int8: calibrated on %d images (%s) at %dx%d, %s", cal.images, cal.source, *size, preprocess)
    return cal
