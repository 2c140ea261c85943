"""COCO-side pieces of the evaluation: category ids, results entries, pycocotools ``COCOeval`` and its tables.

Everything here is pure (no model, no images): detections in, numbers out, so the AP arithmetic can be checked
against hand-computed values without running a network.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from yolodet.inference.postprocess import Detections

log = logging.getLogger(__name__)

__all__ = [
    "COCO80_TO_91", "STAT_NAMES", "ClassAP", "CocoScores", "category_mapping", "coco_evaluate",
    "detections_to_coco", "per_class_ap",
]

# Darknet's `coco_ids` (src/detector.c): class index of an 80-class COCO model -> official category id.
COCO80_TO_91: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)

# The 12 numbers of COCOeval.summarize() for bbox, in order.
STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)

_BOX_DECIMALS = 3  # results bbox precision (pixels); Darknet prints %f (6 decimals), 1e-3 px never moves an IoU


def category_mapping(num_classes: int, gt_category_ids: Sequence[int],
                     source_category_ids: Sequence[int] | None = None) -> tuple[list[int], str]:
    """Decide which COCO ``category_id`` each model class index is written as, from the ground truth.

    Rules, first match wins:

    1. ``coco80``: the model has 80 classes and the ground-truth categories are official COCO ids (all in
       :data:`COCO80_TO_91`, and either all 80 of them or some id above 80, so they cannot be a custom 1..N
       numbering) -> Darknet's 80 -> 91 table.
    2. ``identity``: ``source_category_ids`` (the json ids of a COCO source, in class order) when there is one
       id per class, else the sorted ground-truth ids when there is one per class (``1..N`` for sources
       converted by :func:`yolodet.data.to_coco_gt`).

    Returns:
        ``(ids, rule)``: ``ids[class_index]`` is the category id, ``rule`` is ``"coco80"`` or ``"identity"``.

    Raises:
        ValueError: the model's class count does not fit the ground truth.
    """
    gt_ids = sorted({int(c) for c in gt_category_ids})
    official = set(COCO80_TO_91)
    if num_classes == len(COCO80_TO_91) and gt_ids and set(gt_ids) <= official \
            and (len(gt_ids) == len(COCO80_TO_91) or gt_ids[-1] > len(COCO80_TO_91)):
        return list(COCO80_TO_91), "coco80"
    if source_category_ids is not None and len(source_category_ids) == num_classes \
            and set(int(c) for c in source_category_ids) <= set(gt_ids):
        return [int(c) for c in source_category_ids], "identity"
    if len(gt_ids) == num_classes:
        return gt_ids, "identity"
    raise ValueError(f"the model has {num_classes} classes but the ground truth has {len(gt_ids)} categories "
                     f"(ids {_short_list(gt_ids)}); the model does not fit this dataset")


def detections_to_coco(det: Detections, image_id: int, category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's detections (xyxy in original pixels, already clipped) -> COCO results entries.

    ``bbox = [x, y, w, h]`` with ``x = x1``, ``w = x2 - x1``: what Darknet's ``print_cocos`` writes after it
    clips ``xmin``/``xmax`` to ``[0, w]``. ``score`` keeps its float32 value (Darknet's ``%f`` would round it
    to 6 decimals).
    """
    if len(det) == 0:
        return []
    boxes = det.boxes.detach().cpu().double().numpy()
    xywh = np.round(np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), 1), _BOX_DECIMALS)
    scores = det.scores.detach().cpu().float().tolist()
    labels = det.labels.detach().cpu().tolist()
    image_id = int(image_id)
    return [{"image_id": image_id, "category_id": int(category_ids[c]), "bbox": b, "score": s}
            for b, s, c in zip(xywh.tolist(), scores, labels)]


@dataclass
class CocoScores:
    """What ``COCOeval`` (bbox) gives back.

    Attributes:
        stats: the 12 summary numbers, named by :data:`STAT_NAMES` (-1 where undefined, as pycocotools).
        precision: ``eval['precision']`` ``[T=10 IoUs, R=101 recalls, K categories, A=4 areas, M=3 maxDets]``
            (-1 where a category has no ground truth); None when there were no detections at all.
        category_ids: the category id of each ``K`` slot (sorted ground-truth ids).
        recall_thresholds: ``[R]`` recall values of the ``R`` axis.
        summary: the text ``COCOeval.summarize()`` prints.
    """

    stats: list[float]
    precision: np.ndarray | None
    category_ids: list[int]
    recall_thresholds: np.ndarray
    summary: str


def coco_evaluate(gt: dict[str, Any], results: Sequence[dict[str, Any]], *,
                  image_ids: Sequence[int] | None = None, max_det: int = 100) -> CocoScores:
    """Run pycocotools ``COCOeval`` (bbox) on ``results`` against the ground-truth dict ``gt``.

    Args:
        gt: COCO ground truth (``images``, ``annotations``, ``categories``); not modified.
        results: COCO results entries; not modified (pycocotools gets copies).
        image_ids: the images evaluated (default: every ground-truth image). Images without detections
            count, their ground truth as misses; images without ground truth count, their detections as false
            positives.
        max_det: the largest of COCOeval's ``maxDets`` (``[1, 10, max_det]``), per image and category.

    Raises:
        ValueError: a result names an image that is not in ``gt``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # pycocotools prints progress; we log instead
        coco_gt = COCO()
        coco_gt.dataset = {"images": list(gt["images"]), "annotations": list(gt.get("annotations", [])),
                           "categories": list(gt["categories"]), "info": gt.get("info", {})}
        coco_gt.createIndex()
    known = set(coco_gt.getImgIds())
    ids = sorted(known) if image_ids is None else sorted({int(i) for i in image_ids})
    missing = [i for i in ids if i not in known] + sorted({r["image_id"] for r in results} - known)
    if missing:
        raise ValueError(f"image ids {_short_list(missing)} are not in the ground truth")
    cat_ids = sorted(coco_gt.getCatIds())
    params_rec = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
    if not results:
        log.warning("no detections at all: every AP is 0")
        return CocoScores([0.0] * len(STAT_NAMES), None, cat_ids, params_rec, "(no detections)")
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = ids
        ev.params.maxDets = [1, 10, int(max_det)]
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    return CocoScores([float(s) for s in ev.stats], ev.eval["precision"], list(ev.params.catIds),
                      np.asarray(ev.params.recThrs), summary.getvalue().rstrip("\n"))


@dataclass(frozen=True)
class ClassAP:
    """One row of the per-class table (``ap``/``ap50`` are NaN for a category without ground truth)."""

    index: int
    name: str
    category_id: int
    num_gt: int
    ap: float
    ap50: float


def per_class_ap(scores: CocoScores, class_ids: Sequence[int], names: Sequence[str],
                 gt_counts: dict[int, int]) -> list[ClassAP]:
    """Per-class AP (IoU .50:.95) and AP50 from ``scores.precision`` (area all, largest maxDets), in model class
    order (``class_ids[i]`` is class ``i``'s category id)."""
    slot = {cid: k for k, cid in enumerate(scores.category_ids)}
    rows = []
    for i, (cid, name) in enumerate(zip(class_ids, names)):
        ap = ap50 = float("nan")
        if scores.precision is not None and cid in slot:
            p = scores.precision[:, :, slot[cid], 0, -1]
            ap, ap50 = _mean_valid(p), _mean_valid(p[0])
        elif scores.precision is None and gt_counts.get(cid, 0):
            ap = ap50 = 0.0
        rows.append(ClassAP(i, name, int(cid), int(gt_counts.get(cid, 0)), ap, ap50))
    return rows


def _mean_valid(p: np.ndarray) -> float:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _short_list(values: Sequence[int], limit: int = 8) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")
