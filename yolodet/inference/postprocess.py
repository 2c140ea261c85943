"""Decoded predictions -> per-image detections: Darknet's candidate rule, per-class NMS, mapping back.

Darknet's rule (``get_yolo_detections`` + ``do_nms_sort``): a prediction is a candidate when its objectness is
above ``conf_thres``; then every class whose ``obj * cls`` is above ``conf_thres`` becomes one detection
(multi-label). NMS runs per class (``torchvision.ops.batched_nms``) on unclipped boxes; boxes are then mapped
back to the original image and clipped, as Darknet does when it prints or writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torchvision.ops import batched_nms

from yolodet.inference.boxes import cxcywh_to_xyxy
from yolodet.inference.preprocess import Mapping


@dataclass
class Detections:
    """Detections of one image.

    Attributes:
        boxes: [N, 4] xyxy (original-image pixels after mapping, network-input pixels otherwise).
        scores: [N] ``obj * cls``.
        labels: [N] int64 class indices.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to(self, device: str | torch.device) -> "Detections":
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))


def candidates(pred: torch.Tensor, conf_thres: float) -> Detections:
    """One image's decoded rows [N, 5+C] -> every (box, class) pair passing Darknet's rule, boxes xyxy."""
    pred = pred[pred[:, 4] > conf_thres]
    scores = pred[:, 4:5] * pred[:, 5:]
    rows, labels = (scores > conf_thres).nonzero(as_tuple=True)
    return Detections(cxcywh_to_xyxy(pred[rows, :4]), scores[rows, labels], labels)


def postprocess(preds: torch.Tensor, *, conf_thres: float = 0.25, nms_thres: float = 0.45,
                mappings: Sequence[Mapping] | None = None, max_det: int | None = None) -> list[Detections]:
    """Decoded predictions [B, N, 5+C] (see :class:`yolodet.decode.YoloDecoder`) -> one :class:`Detections` per
    image, sorted by score (descending).

    Args:
        mappings: one per image; boxes are mapped to original pixels and clipped when given.
        max_det: keep at most this many detections per image (all when None, as Darknet).
    """
    results = []
    for i, pred in enumerate(preds):
        det = candidates(pred, conf_thres)
        keep = batched_nms(det.boxes.float(), det.scores.float(), det.labels, nms_thres)
        if max_det is not None:
            keep = keep[:max_det]
        boxes = det.boxes[keep]
        if mappings is not None:
            boxes = mappings[i].to_original(boxes)
        results.append(Detections(boxes, det.scores[keep], det.labels[keep]))
    return results
