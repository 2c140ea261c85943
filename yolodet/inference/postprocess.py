"""Decoded predictions -> per-image detections: Darknet's candidate rule, per-class NMS, mapping back.

Darknet's rule (``get_yolo_detections`` + ``do_nms_sort``): a prediction is a candidate when its objectness is
above ``conf_thres``; then every class whose ``obj * cls`` is above ``conf_thres`` becomes one detection
(multi-label). NMS runs per class (``torchvision.ops.batched_nms``) on unclipped boxes; boxes are then mapped
back to the original image and clipped, as Darknet does when it prints or writes them.

``nms_kind`` other than ``default`` (read from the cfg's last head, as ``detector test/valid/map`` read
``net.layers[net.n - 1]``) follows AlexeyAB's ``diounms_sort``: per class, greedy in descending score, a later box
is suppressed when ``metric(kept, box) > nms_thres`` with ``greedynms``: DIoU with exponent 0.6
(``box_diou``: ``IoU - (d^2 / c^2)^0.6``), ``diounms``: ``IoU - (d^2 / c^2)^beta_nms`` (``box_diounms``),
``cornersnms``: IoU (the corner averaging is commented out in Darknet). ``d`` is the centre distance and ``c`` the
diagonal of the enclosing box. Unlike IoU, ``d^2 / c^2`` changes when the axes are scaled differently, so the
units matter (``diou_units``): ``detector valid`` asks ``get_network_boxes`` for absolute boxes (``relative=0``),
original-image pixels (``"pixels"``, the default); ``detector test``, ``map`` and ``demo`` for relative ones,
fractions of the image's width and height (``"fractions"``). The two differ only where the image was resized to
another aspect ratio (not letterboxed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torchvision.ops import batched_nms, box_iou

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


NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")
DIOU_UNITS = ("pixels", "fractions")


def nms_settings(heads: Sequence) -> tuple[str, float]:
    """(nms_kind, beta_nms) Darknet applies for a model's heads: those of the last head (Darknet reads the
    network's last layer). ``("default", 0.6)`` without heads."""
    if not heads:
        return "default", 0.6
    last = heads[-1]
    return getattr(last, "nms_kind", "default"), getattr(last, "beta_nms", 0.6)


def diou_matrix(boxes: torch.Tensor, beta: float) -> torch.Tensor:
    """[N, 4] xyxy -> [N, N] ``IoU - (d^2 / c^2) ** beta`` (Darknet's ``box_diounms``; IoU where ``c == 0``)."""
    iou = box_iou(boxes, boxes)
    lt = torch.minimum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.maximum(boxes[:, None, 2:], boxes[None, :, 2:])
    c = ((rb - lt) ** 2).sum(-1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    d = ((centre[:, None] - centre[None]) ** 2).sum(-1)
    return torch.where(c > 0, iou - (d / c.clamp_min(1e-30)) ** beta, iou)


def darknet_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, thresh: float, kind: str,
                beta: float = 0.6, scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """AlexeyAB's ``diounms_sort`` (see the module docstring) -> kept indices, by descending score.

    Args:
        boxes: [N, 4] xyxy; scale: (w, h) that boxes are divided by first, to bring them to the units Darknet
            computes the DIoU term in (it is not invariant to a per-axis scale; IoU is).
    """
    if kind not in NMS_KINDS:
        raise ValueError(f"unknown nms_kind {kind!r}; known: {', '.join(NMS_KINDS)}")
    if kind in ("default", "cornersnms") or boxes.numel() == 0:
        return batched_nms(boxes.float(), scores.float(), labels, thresh)
    exponent = 0.6 if kind == "greedynms" else beta
    boxes = boxes.double() / boxes.new_tensor([scale[0], scale[1], scale[0], scale[1]]).double()
    kept = []
    for k in labels.unique():
        idx = (labels == k).nonzero(as_tuple=True)[0]
        idx = idx[scores[idx].argsort(descending=True, stable=True)]
        metric = diou_matrix(boxes[idx], exponent) > thresh
        suppressed = torch.zeros(len(idx), dtype=torch.bool)
        for i in range(len(idx)):
            if suppressed[i]:
                continue
            kept.append(idx[i])
            suppressed[i + 1:] |= metric[i, i + 1:]
    if not kept:
        return labels.new_zeros(0)
    kept_t = torch.stack(kept)
    return kept_t[scores[kept_t].argsort(descending=True, stable=True)]


def _diou_scale(mapping: Mapping | None, units: str) -> tuple[float, float]:
    """(w, h) that network-input boxes are divided by so the DIoU term is computed in ``units``."""
    if mapping is None:
        return 1.0, 1.0
    if units == "fractions":
        return mapping.new_w, mapping.new_h
    return mapping.new_w / mapping.orig_w, mapping.new_h / mapping.orig_h  # the offset does not change DIoU


def postprocess(preds: torch.Tensor, *, conf_thres: float = 0.25, nms_thres: float = 0.45,
                mappings: Sequence[Mapping] | None = None, max_det: int | None = None, nms_kind: str = "default",
                beta_nms: float = 0.6, diou_units: str = "pixels") -> list[Detections]:
    """Decoded predictions [B, N, 5+C] (see :class:`yolodet.decode.YoloDecoder`) -> one :class:`Detections` per
    image, sorted by score (descending).

    Args:
        mappings: one per image; boxes are mapped to original pixels and clipped when given.
        max_det: keep at most this many detections per image (all when None, as Darknet).
        nms_kind, beta_nms: Darknet's ``[yolo]`` keys (see the module docstring and :func:`nms_settings`).
        diou_units: ``"pixels"`` (``detector valid``) or ``"fractions"`` (``detector test``/``map``): the units
            of the DIoU-based kinds' centre-distance term, with ``mappings`` (network-input pixels without).
    """
    if diou_units not in DIOU_UNITS:
        raise ValueError(f"unknown diou_units {diou_units!r}; known: {', '.join(DIOU_UNITS)}")
    results = []
    for i, pred in enumerate(preds):
        det = candidates(pred, conf_thres)
        scale = _diou_scale(mappings[i] if mappings is not None else None, diou_units)
        keep = darknet_nms(det.boxes, det.scores, det.labels, nms_thres, nms_kind, beta_nms, scale)
        if max_det is not None:
            keep = keep[:max_det]
        boxes = det.boxes[keep]
        if mappings is not None:
            boxes = mappings[i].to_original(boxes)
        results.append(Detections(boxes, det.scores[keep], det.labels[keep]))
    return results
