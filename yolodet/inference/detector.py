"""The Python API users call: ``Detector.from_cfg(cfg, weights).predict(images)``; tools are thin wrappers."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch

from yolodet.device import DEFAULT_DEVICE, resolve_device
from yolodet.modeling.checkpoint import load_model
from yolodet.inference.decode import YoloDecoder
from yolodet.modeling.model import Darknet
from yolodet.inference.calibrate import read_calibration
from yolodet.inference.optimize import (
    InferenceModel,
    compute_dtype,
    optimize_for_inference,
    resolve_precision,
    weights_version,
)
from yolodet.inference.onnx_graph import require
from yolodet.inference.ort import OrtRunner
from yolodet.inference.postprocess import Detections, nms_settings, postprocess
from yolodet.inference.preprocess import PREPROCESS_MODES, Mapping, preprocess
from yolodet.inference.settings import CONF_THRES, NMS_THRES, check_thresholds, parse_size

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


def default_preprocess(model: Darknet) -> str:
    """Darknet's own resize, with AlexeyAB's geometry rule: letterbox only when ``[net]`` says ``letter_box=1``."""
    return "darknet-letterbox" if model.net.letter_box else "darknet-resize"


class Detector:
    """A YOLO model plus its preprocessing, decode and post-processing.

    Args:
        model: a :class:`Darknet` with detection heads (``[yolo]``, ``[Gaussian_yolo]``, ``[region]``,
            ``[detection]``).
        names: class names (index -> name); ``"class <i>"`` when None.
        img_size: network input size, an int or (w, h); the cfg's size when None.
        preprocess: one of :data:`yolodet.preprocess.PREPROCESS_MODES`; :func:`default_preprocess` when None.
        device: ``"auto"`` (default: CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... (see
            :func:`yolodet.device.resolve_device`).
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (CUDA) or ``"half"`` (the device's fast mode), see
            :mod:`yolodet.optimize`; decoding and NMS always run in fp32.
        optimize: ``True``: run a BN-folded, fused, channels_last copy of the model (:func:`optimize_for_inference`;
            same outputs within 1e-4 relative in fp32). ``"auto"`` (default): the same from the second forward on;
            in fp32 the first forward runs ``model`` as is, so a single image does not pay for optimising (about
            the time of one forward). ``False``: always ``model`` itself (under ``torch.autocast`` when
            ``precision`` is not fp32).
        backend: ``"torch"`` (default), or ``"onnxruntime"``: the network runs as an ONNX graph in ONNX Runtime
            (:class:`yolodet.inference.ort.OrtRunner`, fp32, rebuilt when the weights change); preprocessing,
            decoding and NMS are the same. Needs ``pip install yolodet[onnx]``.
        calibration: for ``int8`` (also what ``"half"`` is on CPUs without native bf16): a
            :class:`~yolodet.inference.calibrate.Calibration`, a folder of images or a list of RGB uint8 images to
            calibrate on (preprocessed as this detector does), or None: the bundled sample image, with a warning
            (:meth:`from_cfg` takes the calibration stored in an int8 file).

    ``model`` is put in eval mode and moved to ``device`` but otherwise left alone; the optimised copy is rebuilt
    whenever ``model``'s weights change (e.g. between evaluations in a training loop).
    """

    def __init__(self, model: Darknet, *, names: Sequence[str] | None = None,
                 img_size: int | Sequence[int] | None = None, preprocess: str | None = None,
                 device: str | torch.device = DEFAULT_DEVICE, precision: str = "fp32", optimize: bool | str = "auto",
                 backend: str = "torch", calibration=None) -> None:
        if not model.heads:
            raise ValueError(f"{model.cfg_path}: the cfg has no detection head ([yolo], [Gaussian_yolo], [region] or "
                             "[detection]); it is not a detector")
        self.preprocess_mode = preprocess or default_preprocess(model)
        if self.preprocess_mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocess {self.preprocess_mode!r}; known: {', '.join(PREPROCESS_MODES)}")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.img_size = parse_size(img_size, model)
        self.names = list(names) if names else [f"class {i}" for i in range(model.num_classes)]
        if len(self.names) != model.num_classes:
            raise ValueError(f"{len(self.names)} class names for a model with {model.num_classes} classes")
        self.decoder = YoloDecoder(model.heads)
        self.nms_kind, self.beta_nms = nms_settings(model.heads)  # the cfg's, as Darknet's detector applies them
        self.precision = resolve_precision(precision, self.device)
        if optimize not in (True, False, "auto"):
            raise ValueError(f"optimize must be True, False or 'auto', got {optimize!r}")
        if self.precision == "int8" and not optimize:
            raise ValueError("precision int8 runs an optimised copy; it needs optimize=True or 'auto'")
        self.optimize = optimize
        self.calibration = calibration
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        if backend == "onnxruntime":
            require("onnxruntime")
            if self.precision != "fp32":
                raise ValueError(f"the onnxruntime backend runs fp32 only, got precision {self.precision!r}")
        self.backend = backend
        self._runner: InferenceModel | OrtRunner | None = None
        self._runner_key: tuple | None = None
        self._forwards = 0

    @property
    def optimized(self) -> InferenceModel | OrtRunner | None:
        """The optimised copy of ``model`` that :meth:`infer` runs (None before it is first needed)."""
        return self._runner

    def build(self) -> None:
        """Make now what the next forward will run (the optimised copy with its int8 calibration, or the ONNX Runtime
        session) instead of inside that forward, so that the forward's time is the network's (``yolodet detect``'s
        "Predicted in"). Nothing to make where the next forward runs ``model`` itself (``optimize=False``, or the
        first forward of ``optimize="auto"`` in fp32)."""
        self._network()

    def _network(self) -> InferenceModel | OrtRunner | Darknet:
        """What the next forward runs: ``model`` itself, or its optimised copy or ONNX Runtime session (rebuilt
        when ``model``'s weights changed since it was made)."""
        if self.backend == "onnxruntime":
            key = weights_version(self.model)
            if self._runner is None or key != self._runner_key:
                self._runner = OrtRunner(self.model, device=self.device, img_size=self.img_size)
                self._runner_key = key
            return self._runner
        if not self.optimize or (self.optimize == "auto" and self.precision == "fp32" and self._forwards == 0):
            return self.model
        key = weights_version(self.model)
        if self._runner is None or key != self._runner_key:
            self._runner = optimize_for_inference(self.model, precision=self.precision, device=self.device,
                                                  calibration=self.calibration, img_size=self.img_size,
                                                  preprocess=self.preprocess_mode)
            self._runner_key = key
        return self._runner

    @classmethod
    def from_cfg(cls, cfg: str | os.PathLike | None, weights: str | os.PathLike | None = None, *,
                 allow_partial: bool = False, **kwargs) -> "Detector":
        """Build from a cfg and Darknet ``.weights`` or a yolodet checkpoint (see :func:`load_model`; a partial
        ``.weights`` file is an error unless ``allow_partial``); an int8 file also gives its calibration."""
        model = load_model(cfg, weights, allow_partial=allow_partial)
        if weights is not None and kwargs.get("calibration") is None:
            kwargs["calibration"] = read_calibration(weights, len(model.layers))
        return cls(model, **kwargs)

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Mapping]]:
        """RGB uint8 [H, W, 3] images -> network input [B, 3, h, w] on the device and their mappings."""
        arrays, mappings = zip(*(preprocess(im, self.img_size, self.preprocess_mode) for im in images))
        return torch.from_numpy(np.stack(arrays)).to(self.device), list(mappings)

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor, mappings: Sequence[Mapping] | None = None, *,
              conf_thres: float = CONF_THRES, nms_thres: float = NMS_THRES, max_det: int | None = None) -> list[Detections]:
        """A prepared batch [B, 3, h, w] -> detections (original pixels when ``mappings`` are given)."""
        check_thresholds(conf_thres, nms_thres)
        batch = batch.to(self.device, non_blocking=True)
        net = self._network()
        if net is self.model and self.precision != "fp32":
            with torch.autocast(self.device.type, dtype=compute_dtype(self.precision)):
                outputs = net(batch)
        else:
            outputs = net(batch)
        self._forwards += 1
        preds = self.decoder([o.float() for o in outputs], (batch.shape[3], batch.shape[2]))
        return postprocess(preds, conf_thres=conf_thres, nms_thres=nms_thres, mappings=mappings, max_det=max_det,
                           nms_kind=self.nms_kind, beta_nms=self.beta_nms)

    def predict(self, images: Sequence[np.ndarray], *, conf_thres: float = CONF_THRES, nms_thres: float = NMS_THRES,
                batch_size: int = 8, max_det: int | None = None) -> list[Detections]:
        """RGB uint8 images -> one :class:`Detections` per image, boxes xyxy in original pixels (on the CPU)."""
        results: list[Detections] = []
        for start in range(0, len(images), batch_size):
            batch, mappings = self.prepare(images[start:start + batch_size])
            dets = self.infer(batch, mappings, conf_thres=conf_thres, nms_thres=nms_thres, max_det=max_det)
            results.extend(d.to("cpu") for d in dets)
        return results
