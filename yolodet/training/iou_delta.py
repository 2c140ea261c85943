"""Darknet's hand-derived IoU-loss deltas (AlexeyAB ``box.c``: ``dx_box_iou``), vectorised.

Darknet does not differentiate its IoU losses automatically: ``dx_box_iou`` writes, for a predicted box and its
truth (both ``cxcywh`` fractions of the input), the derivative of the IoU variant w.r.t. the prediction's
``(x, y, w, h)`` as it was derived in g-darknet (GIoU) and DIoU-darknet (DIoU, CIoU). It is close to, not equal
to, the true gradient: ``d/dw`` and ``d/dh`` are ``d/dright - d/dleft`` ("not divided by 2"), the intersection
is not clamped at 0, and for disjoint boxes GIoU/DIoU/CIoU keep only their penalty term. A layer that uses it
(``[Gaussian_yolo]``; ``[yolo]`` the same way) writes these numbers into ``delta`` as they are, so a loss that
must reproduce Darknet's update uses them as a detached ``delta`` (see :mod:`yolodet.training.loss_gaussian`).
"""

from __future__ import annotations

import math

import torch

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def darknet_iou_delta(pred: torch.Tensor, truth: torch.Tensor, kind: str) -> torch.Tensor:
    """Darknet's ``dx_box_iou(pred, truth, kind)``: ``pred``, ``truth`` [P, 4] ``cxcywh`` -> [P, 4] the
    derivatives ``(dx, dy, dw, dh)`` of the ``kind`` IoU (one of :data:`IOU_KINDS`), Darknet's ``(dt, db, dl,
    dr)``. Branches and formulas follow ``box.c`` line by line (including its quirks); in float64 it matches Darknet's
    float32 arithmetic to about 1e-6 relative."""
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind {kind!r}; known: {', '.join(IOU_KINDS)}")
    px, py, pw, ph = pred.unbind(1)
    tx, ty, tw, th = truth.unbind(1)
    top, bot, left, right = py - ph / 2, py + ph / 2, px - pw / 2, px + pw / 2
    p_t, p_b = torch.minimum(top, bot), torch.maximum(top, bot)
    p_l, p_r = torch.minimum(left, right), torch.maximum(left, right)
    t_t, t_b, t_l, t_r = ty - th / 2, ty + th / 2, tx - tw / 2, tx + tw / 2
    zero = torch.zeros_like(px)

    x_area = (p_b - p_t) * (p_r - p_l)
    ih = torch.minimum(p_b, t_b) - torch.maximum(p_t, t_t)
    iw = torch.minimum(p_r, t_r) - torch.maximum(p_l, t_l)
    inter = iw * ih  # Darknet does not clamp it
    union = x_area + (t_b - t_t) * (t_r - t_l) - inter
    disjoint = (iw <= 0) | (ih <= 0)
    # d(area), d(intersection), d(union), d(enclosing area) w.r.t. top, bottom, left, right
    d_x = torch.stack((-(p_r - p_l), p_r - p_l, -(p_b - p_t), p_b - p_t))
    d_i = torch.stack((torch.where(p_t > t_t, -iw, zero), torch.where(p_b < t_b, iw, zero),
                       torch.where(p_l > t_l, -ih, zero), torch.where(p_r < t_r, ih, zero)))
    d_u = d_x - d_i
    c_w = torch.maximum(p_r, t_r) - torch.minimum(p_l, t_l)
    c_h = torch.maximum(p_b, t_b) - torch.minimum(p_t, t_t)
    c_area = c_w * c_h
    d_c = torch.stack((torch.where(p_t < t_t, -c_w, zero), torch.where(p_b > t_b, c_w, zero),
                       torch.where(p_l < t_l, -c_h, zero), torch.where(p_r > t_r, c_h, zero)))

    p = torch.where(union > 0, (union * d_i - inter * d_u) / union.square(), zero)  # [4 (t, b, l, r), P]
    dt, db, dl, dr = p.unbind(0)
    dt = torch.where(top < bot, dt, db)  # Darknet's "corner selection" (only a degenerate box changes)
    dl = torch.where(left < right, dl, dr)
    p = torch.stack((dt, db, dl, dr))
    if kind == "giou":
        penalty = (c_area * d_u - union * d_c) / c_area.square()
        p = torch.where(c_area > 0, p + penalty, p)
        p = torch.where(disjoint, penalty, p)
    dt, db, dl, dr = p.unbind(0)
    delta = torch.stack((dl + dr, dt + db, dr - dl, db - dt), 1)  # dx, dy, dw, dh ("not divided by 2")
    if kind in ("diou", "ciou"):
        delta = _distance_term(delta, pred, truth, (p_t, p_b, p_l, p_r), (t_t, t_b, t_l, t_r), disjoint,
                               inter / union if kind == "ciou" else None)
    return delta


def _distance_term(delta: torch.Tensor, pred: torch.Tensor, truth: torch.Tensor, p_tblr: tuple, t_tblr: tuple,
                   disjoint: torch.Tensor, iou: torch.Tensor | None) -> torch.Tensor:
    """DIoU's centre-distance term (and, given the IoU, CIoU's aspect-ratio term) as ``box.c`` adds it: added to
    the IoU part, replacing it for disjoint boxes."""
    px, py, pw, ph = pred.unbind(1)
    tx, ty, tw, th = truth.unbind(1)
    p_t, p_b, p_l, p_r = p_tblr
    t_t, t_b, t_l, t_r = t_tblr
    one, zero = torch.ones_like(px), torch.zeros_like(px)
    c_w = torch.maximum(px + pw / 2, tx + tw / 2) - torch.minimum(px - pw / 2, tx - tw / 2)
    c_h = torch.maximum(py + ph / 2, ty + th / 2) - torch.minimum(py - ph / 2, ty - th / 2)
    c = c_w.square() + c_h.square()
    s = (px - tx).square() + (py - ty).square()
    dcw_dx = torch.where(p_r > t_r, one, zero) - torch.where(p_l < t_l, one, zero)
    dcw_dw = torch.where(p_r > t_r, 0.5 * one, zero) - torch.where(p_l < t_l, -0.5 * one, zero)
    dch_dy = torch.where(p_b > t_b, one, zero) - torch.where(p_t < t_t, one, zero)
    dch_dh = torch.where(p_b > t_b, 0.5 * one, zero) - torch.where(p_t < t_t, -0.5 * one, zero)
    term = torch.stack(((2 * (tx - px) * c - 2 * c_w * dcw_dx * s) / c.square(),
                        (2 * (ty - py) * c - 2 * c_h * dch_dy * s) / c.square(),
                        2 * c_w * dcw_dw * s / c.square(), 2 * c_h * dch_dh * s / c.square()), 1)
    if iou is not None:  # CIoU: alpha * d(aspect-ratio term)
        diff = torch.atan(tw / th) - torch.atan(pw / ph)
        ar_loss = 4 / math.pi ** 2 * diff.square()
        alpha = ar_loss / (1 - iou + ar_loss + 0.000001)
        term = term + torch.stack((zero, zero, alpha * 8 / math.pi ** 2 * diff * ph,
                                   -alpha * 8 / math.pi ** 2 * diff * pw), 1)
    added = torch.where((c > 0)[:, None], delta + term, delta)
    return torch.where(disjoint[:, None], term, added)


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of row i of ``a`` with row i of ``b`` (``xyxy`` [P, 4] each) -> [P]."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh.prod(1)
    return inter / ((a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter).clamp(min=1e-12)
