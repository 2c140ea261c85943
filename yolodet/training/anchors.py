"""Anchors from a dataset: k-means on (w, h) with the distance ``1 - IoU`` (YOLOv2 paper; Darknet's
``detector calc_anchors``).

Box sizes are taken as Darknet's ``calc_anchors`` takes them: the label's relative width/height times the network
width/height (images are stretched to the network size). IoU of two sizes is computed with the boxes sharing a
corner, the same rule training uses to assign a truth to an anchor.

Warning: AlexeyAB's ``calc_anchors`` clusters with OpenCV's Euclidean ``kmeans`` and only *reports* the mean IoU;
we cluster on IoU directly (what the anchors are used for), seeded k-means++ style, so results differ slightly.
"""

from __future__ import annotations

import numpy as np

from yolodet.data.sample import DatasetSource
from yolodet.errors import SettingError

__all__ = ["box_sizes", "kmeans_anchors", "mean_best_iou", "wh_iou"]


def box_sizes(source: DatasetSource, width: int, height: int) -> np.ndarray:
    """``float64[N, 2]`` (w, h) of every box of ``source`` in network pixels (``width`` x ``height``)."""
    boxes = [s.boxes for s in source.samples if len(s.boxes)]
    if not boxes:
        raise SettingError("the dataset has no boxes to compute anchors from")
    b = np.concatenate(boxes).astype(np.float64)
    return np.stack(((b[:, 2] - b[:, 0]) * width, (b[:, 3] - b[:, 1]) * height), 1)


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of sizes ``[N, 2]`` and ``[K, 2]`` aligned at a corner -> ``[N, K]``."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh.prod(1)[:, None] + anchors.prod(1)[None] - inter)


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the best anchor IoU (Darknet's "avg IoU")."""
    return float(wh_iou(wh, anchors).max(1).mean())


def kmeans_anchors(wh: np.ndarray, k: int, *, iterations: int = 300, seed: int = 0) -> tuple[np.ndarray, float]:
    """``k`` anchors ``[k, 2]`` (sorted by area, as cfgs list them) and their mean best IoU.

    Lloyd iterations: assign each size to the anchor of highest IoU, move each anchor to the mean of its sizes;
    k-means++ initialisation with ``1 - IoU`` distances; an emptied cluster restarts at the worst-covered box.
    """
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2 or len(wh) == 0:
        raise ValueError(f"expected box sizes [N, 2], got shape {wh.shape}")
    if not 1 <= k <= len(wh):
        raise SettingError(f"need 1 <= k <= number of boxes ({len(wh)}), got k={k}")
    rng = np.random.default_rng(seed)
    centers = wh[[rng.integers(len(wh))]]
    while len(centers) < k:
        d = 1 - wh_iou(wh, centers).max(1)
        p = d / d.sum() if d.sum() > 0 else np.full(len(wh), 1 / len(wh))
        centers = np.vstack((centers, wh[rng.choice(len(wh), p=p)]))
    assign = None
    for _ in range(iterations):
        iou = wh_iou(wh, centers)
        new = iou.argmax(1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = wh[assign == j]
            centers[j] = members.mean(0) if len(members) else wh[iou.max(1).argmin()]
    centers = centers[np.argsort(centers.prod(1))]
    return centers, mean_best_iou(wh, centers)
