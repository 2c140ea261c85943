"""``[yolo]``: a detection head. In the model it is the identity (its input is the raw head output); what it
knows (anchors, classes, ``scale_x_y``, ``new_coords``, loss settings) is kept as a :class:`HeadSpec` that decode
and the loss read."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from yolodet.modeling.blocks.base import MAX_ANCHORS, BuildContext, HeadBlock
from yolodet.cfg import CfgBlock
from yolodet.modeling.registry import BLOCKS

log = logging.getLogger(__name__)

IOU_LOSSES = ("mse", "iou", "giou", "diou", "ciou")


@dataclass(frozen=True)
class HeadSpec:
    """Everything a ``[yolo]`` section says about its head.

    Attributes:
        layer: Darknet layer index of the ``[yolo]`` block.
        anchors: [A, 2] (w, h) in network-input pixels, the anchors this head predicts (``mask`` applied).
        all_anchors: [num, 2] every anchor of the cfg line (used for best-anchor assignment in training).
        mask: indices of ``anchors`` within ``all_anchors``.
        classes: number of classes; the head has ``A * (5 + classes)`` channels laid out per anchor as
            ``[tx, ty, tw, th, obj, cls...]``.
        stride: input pixels per grid cell at the cfg's network size.
    """

    layer: int
    anchors: tuple[tuple[float, float], ...]
    all_anchors: tuple[tuple[float, float], ...]
    mask: tuple[int, ...]
    classes: int
    stride: int
    scale_x_y: float = 1.0
    new_coords: bool = False
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    iou_thresh: float = 1.0
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    max_delta: float = float("inf")
    random: float = 0.0
    jitter: float = 0.2
    label_smooth_eps: float = 0.0
    nms_kind: str = "default"
    beta_nms: float = 0.6
    kind: str = "yolo"

    @property
    def per_anchor(self) -> int:
        """Channels per anchor: ``5 + classes`` (``[yolo]``), ``9 + classes`` (``[Gaussian_yolo]``: x, y, w, h
        each with a sigma, ``[mu_x, s_x, mu_y, s_y, mu_w, s_w, mu_h, s_h, obj, cls...]``)."""
        return self.classes + (9 if self.kind == "gaussian_yolo" else 5)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    def anchor_tensor(self) -> torch.Tensor:
        """[A, 2] anchors (w, h) in input pixels."""
        return torch.tensor(self.anchors, dtype=torch.float32)


def common_class_count(heads: "Sequence[HeadSpec]", purpose: str) -> int:
    """The class count shared by every head (decode and the loss need one); ValueError otherwise."""
    if not heads:
        raise ValueError(f"the model has no [yolo] heads to {purpose}")
    classes = {h.classes for h in heads}
    if len(classes) != 1:
        raise ValueError(f"heads disagree on the class count: {sorted(classes)}")
    return classes.pop()


class YoloHead(HeadBlock):
    """Identity: the raw [B, A*(5+C), H, W] conv output *is* the head output; decode happens elsewhere."""


# Darknet keys that tune only Darknet's own training/tracking/NMS internals; accepted (so official cfgs load)
# but not used by yolodet.
_TOLERATED = ("resize", "focal_loss", "counters_per_class", "objectness_smooth", "map",
              "thresh", "delta_normalizer", "embedding_layer", "track_history_size", "sim_thresh",
              "dets_for_track", "dets_for_show", "track_ciou_norm", "show_details", "uc_normalizer")


@BLOCKS.register("yolo", keys=("mask", "anchors", "classes", "num", "jitter", "ignore_thresh", "truth_thresh",
                               "iou_thresh", "scale_x_y", "new_coords", "iou_loss", "iou_normalizer",
                               "obj_normalizer", "cls_normalizer", "max_delta", "random", "label_smooth_eps",
                               "nms_kind", "beta_nms")
                 + _TOLERATED)
def build_yolo(block: CfgBlock, ctx: BuildContext) -> YoloHead:
    """A YOLOv3/v4 detection head (checks that the previous layer has ``len(mask) * (classes + 5)`` filters)."""
    return YoloHead(*_head_spec(block, ctx, "yolo"))


NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")


def _head_spec(block: CfgBlock, ctx: BuildContext, kind: str) -> tuple[HeadSpec, tuple[int, int, int]]:
    coords = 9 if kind == "gaussian_yolo" else 5
    classes = block.get_int("classes", 20)
    if classes < 1:
        raise block.error(f"must be >= 1, got {classes}", "classes")
    flat = block.get_floats("anchors")
    num = block.get_int("num", len(flat) // 2)
    if not 1 <= num <= MAX_ANCHORS:
        raise block.error(f"must be in [1, {MAX_ANCHORS}], got {num}", "num")
    mask = tuple(block.get_ints("mask", list(range(num))))
    if any(m < 0 for m in mask):
        raise block.error(f"mask indices must be >= 0, got {list(mask)}", "mask")
    used = max(num, max(mask) + 1)
    if used > num:  # Darknet reads biases[2*m] past its num*2 array: undefined; the anchors line says what is meant
        if used * 2 > len(flat):
            raise block.error(f"mask index {max(mask)} is outside the {num} anchors (num={num}, and the anchors "
                              f"line has {len(flat) // 2} pairs)", "mask")
        log.warning("%s:%d: [yolo] mask: index %d >= num=%d; Darknet would read past its anchors array "
                    "(undefined boxes); yolodet uses pair %d of the anchors line", block.path,
                    block.key_lines.get("mask", block.line), max(mask), num, max(mask))
    elif len(flat) != 2 * num:  # Darknet's parse_yolo reads the first num pairs; missing ones stay 0.5
        log.warning("%s:%d: [yolo] anchors: %d numbers for num=%d; as Darknet, the first %d pairs are used%s",
                    block.path, block.key_lines.get("anchors", block.line), len(flat), num, num,
                    " (the missing ones are 0.5)" if len(flat) < 2 * num else "")
    flat = (flat + [0.5] * (2 * used))[:2 * used]
    all_anchors = tuple(zip(flat[0::2], flat[1::2]))
    c, h, w = ctx.in_shape
    expected = len(mask) * (classes + coords)
    if c != expected:
        raise block.error(f"the previous layer ({ctx.index - 1}) has {c} filters but len(mask) * (classes + "
                          f"{coords}) = {len(mask)} * ({classes} + {coords}) = {expected}", "classes")
    nms_kind = block.get_str("nms_kind", "default")
    if nms_kind not in NMS_KINDS:  # Darknet: anything else is "default" (do_nms_sort) without a word
        raise block.error(f"unknown nms_kind {nms_kind!r} (Darknet would silently use default); known: "
                          f"{', '.join(NMS_KINDS)}", "nms_kind")
    if nms_kind == "cornersnms" and kind == "yolo":  # parse_yolo knows only greedynms and diounms
        nms_kind = "default"
    iou_loss = block.get_str("iou_loss", "mse")
    if iou_loss not in IOU_LOSSES:
        raise block.error(f"unknown iou_loss {iou_loss!r}; known: {', '.join(IOU_LOSSES)}", "iou_loss")
    net_w = ctx.net.width
    spec = HeadSpec(
        layer=ctx.index, anchors=tuple(all_anchors[m] for m in mask), all_anchors=all_anchors, mask=mask,
        classes=classes, stride=max(1, net_w // w), scale_x_y=block.get_float("scale_x_y", 1.0),
        new_coords=bool(block.get_int("new_coords", 0)), ignore_thresh=block.get_float("ignore_thresh", 0.5),
        truth_thresh=block.get_float("truth_thresh", 1.0), iou_thresh=block.get_float("iou_thresh", 1.0),
        iou_loss=iou_loss, iou_normalizer=block.get_float("iou_normalizer", 0.75),
        obj_normalizer=block.get_float("obj_normalizer", 1.0), cls_normalizer=block.get_float("cls_normalizer", 1.0),
        max_delta=block.get_float("max_delta", float("inf")), random=block.get_float("random", 0.0),
        jitter=block.get_float("jitter", 0.2), label_smooth_eps=block.get_float("label_smooth_eps", 0.0),
        nms_kind=nms_kind, beta_nms=block.get_float("beta_nms", 0.6), kind=kind,
    )
    return spec, (c, h, w)


@BLOCKS.register("gaussian_yolo", keys=("mask", "anchors", "classes", "num", "scale_x_y", "nms_kind", "beta_nms",
                                        "jitter", "ignore_thresh", "truth_thresh", "iou_thresh", "iou_loss",
                                        "iou_normalizer", "obj_normalizer", "cls_normalizer", "max_delta",
                                        "random", "label_smooth_eps"))
def build_gaussian_yolo(block: CfgBlock, ctx: BuildContext) -> YoloHead:
    """``[Gaussian_yolo]`` (Gaussian YOLOv3): ``len(mask) * (classes + 9)`` channels (a sigma per box coord)."""
    return YoloHead(*_head_spec(block, ctx, "gaussian_yolo"))
