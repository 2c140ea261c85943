"""``evaluate``: run a detector over a dataset and score it with COCOeval, the Darknet way by default.

Darknet's COCO protocol (``darknet detector valid``, then the official COCO API): every detection with
``obj * cls > 0.005`` after per-class NMS at IoU 0.45 is written (no per-image cap); COCOeval scores at most
100 per image and category. The two Darknet conventions differ in preprocessing only:

* ``darknet-resize``: AlexeyAB/darknet (``letter_box=0``, the default of its cfgs) stretches the image.
* ``darknet-letterbox``: pjreddie/darknet (and AlexeyAB with ``letter_box=1``) keeps the aspect ratio.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from yolodet.inference.loader import InferenceDataset, inference_loader
from yolodet.data.images import DEFAULT_MAX_PIXELS, default_decoder
from yolodet.distributed import all_gather, current_world, shard
from yolodet.data.sample import DatasetError, DatasetSource
from yolodet.data.sources import to_coco_gt
from yolodet.inference.detector import Detector
from yolodet.inference.settings import EVAL_CONF_THRES, NMS_THRES, check_thresholds
from yolodet.evaluation.coco import (
    STAT_NAMES,
    ClassAP,
    category_mapping,
    coco_evaluate,
    detections_to_coco,
    per_class_ap,
)
from yolodet.modeling.model import Darknet

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """The outcome of :func:`evaluate`.

    Attributes:
        ap, ap50: COCO AP @ IoU .50:.95 and AP @ .50 (``stats[0]``, ``stats[1]``).
        stats: the 12 COCOeval numbers, named by :data:`yolodet.evaluation.STAT_NAMES`.
        per_class: one :class:`ClassAP` per model class, in class order.
        results: COCO results entries (``image_id``, ``category_id``, ``bbox = [x, y, w, h]`` original pixels,
            ``score``), ready for ``json.dump``.
        num_images: images evaluated (the dataset's samples, unreadable ones included: their objects count as
            missed).
        unreadable: ``(path, reason)`` of every image that could not be read.
        seconds: wall time of the inference loop (reading, preprocessing, network, NMS).
        images_per_s: readable images per second of that loop.
        category_ids, category_rule: class index -> category id, and the rule that chose it
            (``"coco80"`` or ``"identity"``, see :func:`yolodet.evaluation.category_mapping`).
        precision, recall_thresholds: COCOeval's ``eval['precision']`` ``[T, R, K, A, M]`` (None without
            detections) and the ``R`` axis; ``K`` follows ``eval_category_ids``. For precision-recall plots.
        protocol: the settings that produced these numbers (size, preprocess, thresholds, maxDets).
        summary: COCOeval's printed summary.
    """

    ap: float
    ap50: float
    stats: list[float]
    per_class: list[ClassAP]
    results: list[dict[str, Any]]
    num_images: int
    unreadable: list[tuple[Path, str]]
    seconds: float
    images_per_s: float
    category_ids: list[int]
    category_rule: str
    precision: np.ndarray | None
    recall_thresholds: np.ndarray
    eval_category_ids: list[int]
    protocol: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def num_unreadable(self) -> int:
        return len(self.unreadable)

    def stats_dict(self) -> dict[str, float]:
        return dict(zip(STAT_NAMES, self.stats))


def evaluate(model: Detector | Darknet, source: DatasetSource, *, img_size: int | Sequence[int] | None = None,
             preprocess: str | None = None, conf_thres: float = EVAL_CONF_THRES, nms_thres: float = NMS_THRES,
             batch_size: int = 8, workers: int = 0, device: str | torch.device | None = None,
             gt: dict[str, Any] | None = None, max_det: int = 100, decoder: str | None = None,
             progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> EvalResult:
    """COCO bbox evaluation of ``model`` on ``source``.

    Args:
        model: a :class:`Detector`, or a bare :class:`Darknet` (e.g. from the training loop, in train mode: it
            runs in eval mode for the call and gets its mode back afterwards).
        source: the images (``Sample.image``, ``Sample.image_id``) and, unless ``gt`` is given, the ground truth.
        img_size: network input size (int or (w, h)); None: the Detector's, or the cfg's for a model.
        preprocess: one of :data:`yolodet.preprocess.PREPROCESS_MODES`; None: the Detector's, or for a model
            :func:`yolodet.detector.default_preprocess` (AlexeyAB's rule: letterbox only if ``letter_box=1``).
        conf_thres, nms_thres: Darknet's candidate threshold and per-class NMS IoU (COCO ``valid``: 0.005, 0.45).
        batch_size, workers: inference batch size and image-loading processes.
        device: where the network runs; None: the Detector's, or the device the model's parameters are on.
        gt: COCO ground truth dict (pass the json itself for COCO sources, so crowd regions and segment areas
            count as in the official evaluation); None: built from ``source`` by :func:`yolodet.data.to_coco_gt`.
        max_det: COCOeval ``maxDets`` (largest value), per image and category.
        decoder: image decoder, ``"stb"`` (Darknet's) or ``"opencv"``; None: stb when built (see
            :mod:`yolodet.data.loader`).
        progress: show a tqdm progress bar (stderr).
        max_pixels: images above this many pixels are refused from their header (counted unreadable).

    Raises:
        ValueError: the model does not fit the ground truth (class count), or ``source`` has image ids the
            ground truth lacks.
    """
    check_thresholds(conf_thres, nms_thres)
    if not source.samples:
        raise DatasetError("the dataset has no images to evaluate")
    decoder = decoder or default_decoder()
    restore = model.model.training if isinstance(model, Detector) else model.training
    net = model.model if isinstance(model, Detector) else model
    try:
        detector = _as_detector(model, img_size, preprocess, device)
        gt = gt if gt is not None else to_coco_gt(source)
        class_ids, rule = category_mapping(net.num_classes, [c["id"] for c in gt["categories"]],
                                           source.category_ids)
        log.info("category ids: %s mapping (%d classes)", rule, len(class_ids))
        results, unreadable, seconds, n_read = _run(detector, source, class_ids, conf_thres=conf_thres,
                                                    nms_thres=nms_thres, batch_size=batch_size, workers=workers,
                                                    decoder=decoder, progress=progress, max_pixels=max_pixels)
    finally:
        net.train(restore)
    image_ids = [int(s.image_id) for s in source.samples]
    scores = coco_evaluate(gt, results, image_ids=image_ids, max_det=max_det)
    names = _category_names(gt, class_ids, detector.names)
    table = per_class_ap(scores, class_ids, names, _gt_counts(gt, image_ids))
    protocol = {"img_size": list(detector.img_size), "preprocess": detector.preprocess_mode,
                "precision": detector.precision,
                "conf_thres": conf_thres, "nms_thres": nms_thres, "max_det": max_det, "decoder": decoder}
    return EvalResult(ap=scores.stats[0], ap50=scores.stats[1], stats=scores.stats, per_class=table,
                      results=results, num_images=len(source.samples), unreadable=unreadable, seconds=seconds,
                      images_per_s=n_read / seconds if seconds > 0 else 0.0, category_ids=class_ids,
                      category_rule=rule, precision=scores.precision, recall_thresholds=scores.recall_thresholds,
                      eval_category_ids=scores.category_ids, protocol=protocol, summary=scores.summary)


def _as_detector(model: Detector | Darknet, img_size, preprocess, device) -> Detector:
    """The Detector to evaluate with. An ``optimize="auto"`` detector runs its optimised copy from the first
    batch on (a copy of it is changed, not the caller's): evaluation is many images, so building the copy always
    pays, and every image then goes through the same network, whatever batch it lands in."""
    detector = _detector(model, img_size, preprocess, device)
    if detector.optimize == "auto":
        detector = copy.copy(detector)
        detector.optimize = True
    return detector


def _detector(model: Detector | Darknet, img_size, preprocess, device) -> Detector:
    if isinstance(model, Detector):
        if img_size is None and preprocess is None and device is None:
            model.model.eval()
            return model
        return Detector(model.model, names=model.names, img_size=img_size or model.img_size,
                        preprocess=preprocess or model.preprocess_mode, device=device or model.device,
                        precision=model.precision, optimize=model.optimize, backend=model.backend)
    if not isinstance(model, Darknet):
        raise TypeError(f"model must be a Detector or a Darknet, got {type(model).__name__}")
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    return Detector(model, img_size=img_size, preprocess=preprocess, device=device)


def _run(detector: Detector, source: DatasetSource, class_ids: list[int], *, conf_thres: float, nms_thres: float,
         batch_size: int, workers: int, decoder: str, progress: bool, max_pixels: int | None
         ) -> tuple[list[dict[str, Any]], list[tuple[Path, str]], float, int]:
    """The inference loop: -> (results, unreadable, seconds, readable image count).

    Under torchrun each rank runs every ``world.size``-th image and the results are gathered on every rank in
    the one-process order, so the AP is the one-process AP exactly (each image's detections do not depend on
    the other images of its batch: the optimised copy runs image by image on the CPU).
    """
    samples = source.samples
    world = current_world()
    mine = shard(range(len(samples)), world)
    dataset = InferenceDataset([samples[i].image for i in mine], detector.img_size, detector.preprocess_mode,
                               decoder=decoder, max_pixels=max_pixels)
    loader = inference_loader(dataset, batch_size=batch_size, workers=workers,
                              pin_memory=detector.device.type == "cuda")
    per_image: dict[int, list[dict[str, Any]]] = {}
    unreadable: list[tuple[Path, str]] = []
    n_read = 0
    start = time.perf_counter()
    with tqdm(total=len(dataset), desc="eval", unit="img", disable=not progress or not world.main,
              leave=False) as bar:
        for batch in loader:
            for _, path, error in batch.failures:
                log.warning("unreadable image %s: %s (skipped; its objects count as missed)", path, error)
                unreadable.append((path, error))
            if len(batch):
                images = batch.images
                if detector.device.type == "cpu":  # ~1.5x faster mkldnn convolutions, same numbers
                    images = images.contiguous(memory_format=torch.channels_last)
                dets = detector.infer(images, batch.mappings, conf_thres=conf_thres, nms_thres=nms_thres)
                for position, det in zip(batch.indices, dets):
                    index = mine[position]
                    per_image[index] = detections_to_coco(det, samples[index].image_id, class_ids)
                n_read += len(batch)
            bar.update(len(batch) + len(batch.failures))
    seconds = time.perf_counter() - start
    if world.size > 1:
        parts = all_gather((per_image, unreadable, n_read, seconds), world)
        per_image = {i: r for part in parts for i, r in part[0].items()}
        unreadable = [u for part in parts for u in part[1]]
        n_read, seconds = sum(part[2] for part in parts), max(part[3] for part in parts)
    results = [r for i in sorted(per_image) for r in per_image[i]]
    log.info("%d images in %.1f s (%.1f images/s), %d unreadable, %d detections", n_read, seconds,
             n_read / max(seconds, 1e-9), len(unreadable), len(results))
    return results, unreadable, seconds, n_read


def _category_names(gt: dict[str, Any], class_ids: list[int], fallback: Sequence[str]) -> list[str]:
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    return [by_id.get(cid, fallback[i] if i < len(fallback) else str(cid)) for i, cid in enumerate(class_ids)]


def _gt_counts(gt: dict[str, Any], image_ids: Sequence[int]) -> dict[int, int]:
    """Non-crowd ground-truth boxes per category over ``image_ids``."""
    ids = set(image_ids)
    return dict(Counter(int(a["category_id"]) for a in gt.get("annotations", [])
                        if int(a["image_id"]) in ids and not a.get("iscrowd", 0)))
