"""COCO evaluation that reproduces Darknet's numbers.

:func:`evaluate` runs a :class:`~yolodet.detector.Detector` (or a bare ``Darknet`` model, e.g. from the training
loop) over a :class:`~yolodet.data.DatasetSource` and scores it with pycocotools ``COCOeval`` (bbox). The
COCO-side pieces (:func:`category_mapping`, :func:`detections_to_coco`, :func:`coco_evaluate`) are pure and usable
on their own; :func:`pr_curve_figure` draws AP50 precision-recall curves from a result.

Darknet conventions (``preprocess=``): ``"darknet-resize"`` is AlexeyAB/darknet's default (plain resize,
``letter_box=0``); ``"darknet-letterbox"`` is pjreddie/darknet's (aspect kept, gray bars).
"""

from yolodet.evaluation.coco import (
    COCO80_TO_91,
    STAT_NAMES,
    ClassAP,
    CocoScores,
    category_mapping,
    coco_evaluate,
    detections_to_coco,
    per_class_ap,
)
from yolodet.evaluation.plots import pr_curve_figure
from yolodet.evaluation.runner import EvalResult, evaluate

__all__ = [
    "COCO80_TO_91", "STAT_NAMES", "ClassAP", "CocoScores", "EvalResult", "category_mapping", "coco_evaluate",
    "detections_to_coco", "evaluate", "per_class_ap", "pr_curve_figure",
]
