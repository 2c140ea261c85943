"""The Python API users call: ``Detector.from_cfg(cfg, weights).predict(images)``; tools are thin wrappers."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch

from yolodet.modeling.checkpoint import load_model
from yolodet.inference.decode import YoloDecoder
from yolodet.modeling.model import Darknet
from yolodet.inference.optimize import (
    InferenceModel,
    compute_dtype,
    optimize_for_inference,
    resolve_precision,
    weights_version,
)
from yolodet.inference.postprocess import Detections, nms_settings, postprocess
from yolodet.inference.preprocess import PREPROCESS_MODES, Mapping, preprocess

log = logging.getLogger(__name__)


def default_preprocess(model: Darknet) -> str:
    """Darknet's own resize, with AlexeyAB's geometry rule: letterbox only when ``[net]`` says ``letter_box=1``."""
    return "darknet-letterbox" if model.net.letter_box else "darknet-resize"


def parse_size(size: int | Sequence[int] | None, model: Darknet) -> tuple[int, int]:
    """``None`` -> the cfg's (width, height); ``416`` -> (416, 416); ``(w, h)`` as is. Checked against strides."""
    if size is None:
        w, h = model.net.width, model.net.height
    elif isinstance(size, int):
        w = h = size
    else:
        w, h = (int(size[0]), int(size[1]))
    stride = max((head.stride for head in model.heads), default=1)
    if w < 1 or h < 1 or (model.heads and (w % stride or h % stride)):
        raise ValueError(f"image size {w}x{h} must be a positive multiple of the largest head stride ({stride})")
    return w, h


class Detector:
    """A YOLO model plus its preprocessing, decode and post-processing.

    Args:
        model: a :class:`Darknet` with ``[yolo]`` heads.
        names: class names (index -> name); ``"class <i>"`` when None.
        img_size: network input size, an int or (w, h); the cfg's size when None.
        preprocess: one of :data:`yolodet.preprocess.PREPROCESS_MODES`; :func:`default_preprocess` when None.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (CUDA) or ``"half"`` (the device's fast mode), see
            :mod:`yolodet.optimize`; decoding and NMS always run in fp32.
        optimize: ``True``: run a BN-folded, fused, channels_last copy of the model (:func:`optimize_for_inference`;
            same outputs within 1e-4 relative in fp32). ``"auto"`` (default): the same from the second forward on;
            in fp32 the first forward runs ``model`` as is, so a single image does not pay for optimising (about
            the time of one forward). ``False``: always ``model`` itself (under ``torch.autocast`` when
            ``precision`` is not fp32).

    ``model`` is put in eval mode and moved to ``device`` but otherwise left alone; the optimised copy is rebuilt
    whenever ``model``'s weights change (e.g. between evaluations in a training loop).
    """

    def __init__(self, model: Darknet, *, names: Sequence[str] | None = None,
                 img_size: int | Sequence[int] | None = None, preprocess: str | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32", optimize: bool | str = "auto") -> None:
        if not model.heads:
            raise ValueError(f"{model.cfg_path}: the cfg has no [yolo] heads; it is not a detector")
        self.preprocess_mode = preprocess or default_preprocess(model)
        if self.preprocess_mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocess {self.preprocess_mode!r}; known: {', '.join(PREPROCESS_MODES)}")
        self.device = torch.device(device)
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
        self.optimize = optimize
        self._runner: InferenceModel | None = None
        self._runner_key: tuple | None = None
        self._forwards = 0

    @property
    def optimized(self) -> InferenceModel | None:
        """The optimised copy of ``model`` that :meth:`infer` runs (None before it is first needed)."""
        return self._runner

    def _network(self) -> InferenceModel | Darknet:
        """What the next forward runs: ``model`` itself, or its optimised copy (rebuilt when ``model``'s weights
        changed since it was made)."""
        if not self.optimize or (self.optimize == "auto" and self.precision == "fp32" and self._forwards == 0):
            return self.model
        key = weights_version(self.model)
        if self._runner is None or key != self._runner_key:
            self._runner = optimize_for_inference(self.model, precision=self.precision, device=self.device)
            self._runner_key = key
        return self._runner

    @classmethod
    def from_cfg(cls, cfg: str | os.PathLike | None, weights: str | os.PathLike | None = None,
                 **kwargs) -> "Detector":
        """Build from a cfg and Darknet ``.weights`` or a yolodet checkpoint (see :func:`load_model`)."""
        return cls(load_model(cfg, weights), **kwargs)

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Mapping]]:
        """RGB uint8 [H, W, 3] images -> network input [B, 3, h, w] on the device and their mappings."""
        arrays, mappings = zip(*(preprocess(im, self.img_size, self.preprocess_mode) for im in images))
        return torch.from_numpy(np.stack(arrays)).to(self.device), list(mappings)

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor, mappings: Sequence[Mapping] | None = None, *, conf_thres: float = 0.25,
              nms_thres: float = 0.45, max_det: int | None = None) -> list[Detections]:
        """A prepared batch [B, 3, h, w] -> detections (original pixels when ``mappings`` are given)."""
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

    def predict(self, images: Sequence[np.ndarray], *, conf_thres: float = 0.25, nms_thres: float = 0.45,
                batch_size: int = 8, max_det: int | None = None) -> list[Detections]:
        """RGB uint8 images -> one :class:`Detections` per image, boxes xyxy in original pixels (on the CPU)."""
        results: list[Detections] = []
        for start in range(0, len(images), batch_size):
            batch, mappings = self.prepare(images[start:start + batch_size])
            dets = self.infer(batch, mappings, conf_thres=conf_thres, nms_thres=nms_thres, max_det=max_det)
            results.extend(d.to("cpu") for d in dets)
        return results
