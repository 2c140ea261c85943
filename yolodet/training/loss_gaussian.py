"""The ``[Gaussian_yolo]`` loss (Gaussian YOLOv3) with AlexeyAB's ``forward_gaussian_yolo_layer`` semantics.

Each anchor has ``9 + C`` channels ``[mu_x, s_x, mu_y, s_y, mu_w, s_w, mu_h, s_h, obj, cls...]``; Darknet activates
``mu_x, mu_y`` (logistic, then ``scale_x_y``), the four sigmas ``s``, ``obj`` and the classes (logistic), leaves
``mu_w, mu_h`` raw, writes ``delta`` w.r.t. those *activated* values and passes it on to the raw outputs without
the logistic derivative (as ``[yolo]``). Matching is ``[yolo]``'s (:func:`yolodet.training.loss.assign_anchors`:
best of all anchors by (w, h) IoU, ``iou_thresh`` extras); the parts:

* **obj**: logistic (BCE with logits, gradient ``obj_normalizer * (p - t)``) towards 1 at assigned cells and 0
  elsewhere, except predictions whose decoded box has IoU > ``ignore_thresh`` with a truth *and* some class
  probability > .25 (Darknet's ``compare_gaussian_yolo_class``): no objectness term.
* **cls**: logistic per class at assigned cells, multi-hot when truths share a cell, ``label_smooth_eps``.
  Warning: Darknet applies ``cls_normalizer`` here only with ``counters_per_class``; yolodet does as Darknet
  (``cls_normalizer`` has no effect), unlike its ``[yolo]`` loss.
* **box**: the Gaussian negative log-likelihood of the truth under ``N(mu, s)`` per coordinate, with Darknet's
  gradients: for ``d = t - mu`` (``t`` as in ``[yolo]``: ``x W - i``, ``log(w net_w / a_w)``) and
  ``k = (2 - w h) / 2 * N / (N + 1e-9)`` (``N`` the density with Darknet's ``s + .3`` in the normaliser),
  ``delta_mu = iou_normalizer * k * d / s^2`` and ``delta_s = uc_normalizer * k * (d^2 / s^3 - 1 / (s + .3))``,
  NaN/inf set to 0 and clipped to ``max_delta``, summed over the truths of a cell and divided by its number of
  positive class deltas (``averages_gaussian_yolo_deltas``). Because these deltas (w.r.t. the activated values)
  reach the raw outputs unchanged, no closed-form function of the raw outputs has them as its gradient; the box
  part is therefore ``-sum(delta * raw)`` (``delta`` detached: exactly Darknet's gradient) with its *value*
  replaced by the NLL ``(2 - w h) / 2 * sum(d^2 / (2 s^2) + log(s + .3))`` for logging.
* **box**, ``iou_loss=iou/giou/diou/ciou`` (Gaussian_yolov3_BDD.cfg: giou): the sigma deltas stay the Gaussian
  ones above (still with ``(2 - w h)`` and ``uc_normalizer``), the four means' deltas are replaced by Darknet's
  hand-derived IoU-variant derivatives of the decoded box (:func:`yolodet.training.iou_delta.darknet_iou_delta`,
  ``box.c``'s ``dx_box_iou``; ``dw, dh`` times ``exp(mu_w)``, ``exp(mu_h)``, no ``(2 - w h)``) times
  ``iou_normalizer``, then the same NaN fix, ``max_delta`` clip and averaging. These are not the gradient of any
  scalar (Darknet's ``dw`` is ``d/dright - d/dleft``, the sigmoid and anchor factors are skipped), so they enter
  the same detached surrogate. Warning: unlike yolodet's ``[yolo]`` IoU losses (true autograd gradients of the
  ``torchvision.ops`` losses), this reproduces Darknet's update exactly. Logged value: the NLL plus
  ``iou_normalizer * (1 - IoU-variant)`` (torchvision's variants).

Refused (:func:`gaussian_untrainable`): ``yolo_point`` other than center, ``objectness_smooth``,
``counters_per_class``, ``truth_thresh < 1``, ``iou_thresh_kind`` other than iou, ``map``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, complete_box_iou_loss, distance_box_iou_loss
from torchvision.ops import generalized_box_iou_loss

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.yolo import HeadSpec
from yolodet.training.iou_delta import darknet_iou_delta, paired_iou
from yolodet.training.loss import assign_anchors, cell_class_targets

SIGMA_CONST = 0.3  # Darknet's sigma_const in the Gaussian's normaliser
EPSILON = 1e-9
CLASS_MATCH = 0.25  # a prediction can be ignored only when some class probability exceeds this
_IOU_LOSSES = {"iou": lambda a, b: 1 - paired_iou(a, b), "giou": generalized_box_iou_loss,
               "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}  # for the logged value only


@dataclass(frozen=True)
class GaussianTrainSpec:
    """A ``[Gaussian_yolo]`` head's :class:`HeadSpec` and the training key it lacks."""

    head: HeadSpec
    uc_normalizer: float = 1.0

    @property
    def jitter(self) -> float:
        return self.head.jitter

    @property
    def random(self) -> float:
        return self.head.random

    @classmethod
    def from_block(cls, head: HeadSpec, block: CfgBlock) -> "GaussianTrainSpec":
        return cls(head, uc_normalizer=block.get_float("uc_normalizer", 1.0))


def gaussian_untrainable(head: HeadSpec, block: CfgBlock) -> str | None:
    """Why yolodet cannot train this ``[Gaussian_yolo]`` head (None: it can)."""
    for key, default in (("yolo_point", "center"), ("iou_thresh_kind", "iou")):
        if block.get_str(key, default) != default:
            return f"{key}={block.get_str(key, default)} is not trainable in yolodet (only {default})"
    for key in ("objectness_smooth", "counters_per_class", "map"):
        if block.has(key) and block.get_str(key) not in ("", "0"):
            return f"{key}= is not trainable for [Gaussian_yolo] in yolodet"
    if head.truth_thresh < 1:
        return f"truth_thresh={head.truth_thresh} is not trainable in yolodet (only 1)"
    return None


def gaussian_head_loss(spec: GaussianTrainSpec, out: torch.Tensor, targets: torch.Tensor,
                       input_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """One head: ``out`` [B, A*(9+C), H, W] float32, ``targets`` [M, 6] (image, class, x1, y1, x2, y2 as fractions
    of the input), ``input_size`` (width, height) pixels -> summed box/obj/cls terms (not batch-divided)."""
    head = spec.head
    b, _, h, w = out.shape
    a_count, c = head.num_anchors, head.classes
    if out.shape[1] != a_count * (9 + c):
        raise ValueError(f"[Gaussian_yolo] at layer {head.layer}: {out.shape[1]} channels, expected "
                         f"{a_count * (9 + c)}")
    p = out.view(b, a_count, 9 + c, h, w).permute(0, 1, 3, 4, 2)  # [B, A, H, W, 9+C]
    net = out.new_tensor(input_size)
    grid = out.new_tensor([w, h])
    anchors = head.anchor_tensor().to(out.device)  # [A, 2] input pixels
    img, cls = targets[:, 0].long(), targets[:, 1].long()
    truth = box_convert(targets[:, 2:6], "xyxy", "cxcywh")  # fractions
    t_idx, a_idx = assign_anchors(head, truth[:, 2:4] * net)
    bi, ti = img[t_idx], truth[t_idx]
    gi = (ti[:, 0] * w).long().clamp_(0, w - 1)
    gj = (ti[:, 1] * h).long().clamp_(0, h - 1)

    with torch.no_grad():
        act = _activate(p[..., :8].detach(), head.scale_x_y)  # [B, A, H, W, 8] mu/sigma pairs
        weight = (~_ignored(p.detach(), act, img, truth, anchors, grid, net, head.ignore_thresh)).float()
        target = torch.zeros_like(weight)
        weight[bi, a_idx, gj, gi] = 1.0
        target[bi, a_idx, gj, gi] = 1.0
    obj = head.obj_normalizer * (weight * F.binary_cross_entropy_with_logits(p[..., 8], target,
                                                                             reduction="none")).sum()

    cell = ((bi * a_count + a_idx) * h + gj) * w + gi
    cells, inverse, cls_target = cell_class_targets(cell, cls[t_idx], c, head.label_smooth_eps)
    logits = p.reshape(-1, 9 + c)[cells, 9:]
    cls_loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum")

    with torch.no_grad():
        positives = (cls_target - logits.detach().sigmoid() > 0).sum(1).clamp(min=1)  # per cell
        t_box = torch.cat((ti[:, :2] * grid - torch.stack((gi, gj), 1),
                           (ti[:, 2:4] * net / anchors[a_idx]).clamp(min=1e-9).log()), 1)  # [P, 4]
        scale = 2 - ti[:, 2] * ti[:, 3]
        pos = act[bi, a_idx, gj, gi]
        mu_delta, iou_term = None, None
        if head.iou_loss != "mse":
            pred = torch.cat(((torch.stack((gi, gj), 1) + pos[:, (0, 2)]) / grid,
                              pos[:, (4, 6)].exp() * anchors[a_idx] / net), 1)
            mu_delta, iou_term = _iou_mu_delta(pred, ti, pos[:, (4, 6)], head.iou_loss)
        delta, nll = _gaussian_delta(pos, t_box, scale, head.iou_normalizer, spec.uc_normalizer,
                                     head.max_delta, mu_delta)
        if iou_term is not None:  # the logged value: the NLL plus the means' IoU loss
            nll = nll + head.iou_normalizer * iou_term
        cell_delta = torch.zeros(len(cells), 8, device=out.device, dtype=delta.dtype)
        cell_delta.index_add_(0, inverse, delta)
        cell_delta = (cell_delta / positives[:, None]).to(out.dtype)
    raw_box = p.reshape(-1, 9 + c)[cells, :8]
    surrogate = -(cell_delta * raw_box).sum()
    box = surrogate + (nll.sum().to(out.dtype) - surrogate).detach()
    return {"box": box, "obj": obj, "cls": cls_loss}


def _activate(raw: torch.Tensor, scale_x_y: float) -> torch.Tensor:
    """Raw [..., 8] -> Darknet's activated ``[mu_x, s_x, mu_y, s_y, mu_w, s_w, mu_h, s_h]``."""
    act = raw.sigmoid()
    act[..., (0, 2)] = act[..., (0, 2)] * scale_x_y - (scale_x_y - 1) / 2
    act[..., (4, 6)] = raw[..., (4, 6)]
    return act


def _gaussian_delta(act: torch.Tensor, t_box: torch.Tensor, scale: torch.Tensor, iou_normalizer: float,
                    uc_normalizer: float, max_delta: float, mu_delta: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Darknet's ``delta_gaussian_yolo_box`` for P pairs: activated [P, 8], targets [P, 4] (tx, ty, tw, th),
    scale [P], ``mu_delta`` [P, 4] (the IoU-loss deltas replacing the Gaussian ones of the means, or None) ->
    (delta [P, 8] in the channel order of ``act``, float64; NLL [P])."""
    act, t_box, scale = act.double(), t_box.double(), scale.double()[:, None]
    mu, s = act[:, 0::2], act[:, 1::2]  # [P, 4] each
    d = t_box - mu
    z = d / s
    density = torch.exp(-0.5 * z.square()) / (math.sqrt(2 * math.pi) * (s + SIGMA_CONST))
    k = 0.5 * density / (density + EPSILON) * scale
    d_mu = iou_normalizer * (k * z / s if mu_delta is None else mu_delta.double())
    d_s = uc_normalizer * k * (z.square() / s - 1 / (s + SIGMA_CONST))
    delta = torch.stack((d_mu, d_s), -1).reshape(len(act), 8)  # interleave back to mu_x, s_x, ...
    delta = torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)  # Darknet's fix_nan_inf
    if math.isfinite(max_delta):
        delta = delta.clamp(-max_delta, max_delta)
    nll = 0.5 * scale[:, 0] * (0.5 * z.square() + (s + SIGMA_CONST).log()).sum(1)
    return delta, nll


def _iou_mu_delta(pred: torch.Tensor, truth: torch.Tensor, raw_wh: torch.Tensor, kind: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``iou_loss != mse``: the deltas of the four means as Darknet writes them, ``pred``/``truth`` [P, 4]
    ``cxcywh`` fractions, ``raw_wh`` [P, 2] -> (``dx_box_iou`` with ``dw, dh`` times ``exp(raw)`` [P, 4] float64,
    ``1 -`` the IoU variant [P] for the logged value)."""
    pred, truth = pred.double(), truth.double()
    pred = torch.cat((pred[:, :2], torch.where(pred[:, 2:] == 0, 1.0, pred[:, 2:])), 1)  # Darknet: w == 0 -> 1
    delta = darknet_iou_delta(pred, truth, kind)
    delta[:, 2:] = delta[:, 2:] * raw_wh.double().exp()  # "apply gradient of e^delta_t ONLY for w,h"
    finite = pred.clamp(max=1e6)  # an overflowed exp (Darknet: delta 0) must not make the logged value NaN
    return delta, _IOU_LOSSES[kind](box_convert(finite, "cxcywh", "xyxy"), box_convert(truth, "cxcywh", "xyxy"))


def _ignored(p: torch.Tensor, act: torch.Tensor, img: torch.Tensor, truth: torch.Tensor, anchors: torch.Tensor,
             grid: torch.Tensor, net: torch.Tensor, thresh: float) -> torch.Tensor:
    """[B, A, H, W] True where the decoded box has IoU > ``thresh`` with a truth of its image and some class
    probability exceeds :data:`CLASS_MATCH`."""
    b, a, h, w, _ = p.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij")
    cells = torch.stack((xs, ys), -1).to(p.dtype)
    xy = (cells + act[..., (0, 2)]) / grid
    wh = act[..., (4, 6)].clamp(max=20).exp() * anchors[None, :, None, None] / net
    pred = box_convert(torch.cat((xy, wh), -1), "cxcywh", "xyxy").view(b, -1, 4)
    matchable = (p[..., 9:].sigmoid() > CLASS_MATCH).any(-1).view(b, -1)
    truth_xyxy = box_convert(truth, "cxcywh", "xyxy")
    ignored = torch.zeros(b, a * h * w, dtype=torch.bool, device=p.device)
    for i in img.unique().tolist():
        best = box_iou(pred[i], truth_xyxy[img == i]).amax(1)
        ignored[i] = (best > thresh) & matchable[i]
    return ignored.view(b, a, h, w)
