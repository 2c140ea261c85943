"""The YOLOv3 training loss with Darknet's semantics (AlexeyAB ``yolo_layer.c``), vectorised, as named parts.

Darknet does not write a loss: it writes ``delta`` (minus the gradient w.r.t. the raw head output) and its
``backward_yolo_layer`` passes it on *without* the logistic derivative. Each term below is the function whose
autograd gradient is that ``delta``:

* **assignment**: each truth goes to the anchor (among *all* ``num`` anchors) whose (w, h) IoU with it is best;
  only a head whose ``mask`` holds that anchor trains it, at cell ``(int(cx * W), int(cy * H))``. With
  ``iou_thresh < 1`` every other anchor of the head with (w, h) IoU > ``iou_thresh`` gets the truth too.
* **objectness**: logistic (BCE with logits) towards 1 at assigned cells and 0 elsewhere, except predictions whose
  decoded box has IoU > ``ignore_thresh`` with some truth of the image (no objectness term), times
  ``obj_normalizer``.
* **classes**: logistic per class (multi-label) at assigned cells, ``label_smooth_eps`` applied, times
  ``cls_normalizer``. Two truths in one cell set both classes (Darknet's ``delta_yolo_class``).
* **box**, ``iou_loss=mse``: Darknet's ``delta = scale * (t - x)`` with ``scale = (2 - w*h) * iou_normalizer``
  (w, h: the truth as fractions of the input). For ``tx, ty`` the ``x`` it compares is the *activated*
  ``sigmoid(tx) * scale_x_y - (scale_x_y - 1) / 2`` while the gradient skips the sigmoid: that is exactly the
  gradient of ``scale * scale_x_y * BCE(tx, (t + (scale_x_y - 1)/2) / scale_x_y)``, which is what we compute
  (less the target's entropy, a constant, so the term is 0 at a perfect fit).
  ``tw, th`` get ``scale * (tw - log(w * net_w / anchor_w))^2 / 2``. Truths sharing a cell add up (Darknet
  accumulates).
* **box**, ``iou_loss=iou/giou/diou/ciou``: ``iou_normalizer * (1 - IoU-variant)`` of the decoded box
  (``torchvision.ops`` losses), no ``(2 - w*h)`` scale.
* ``new_coords=1`` (scaled-YOLOv4): the conv already applied the logistic; Darknet's deltas then flow through
  it, i.e. squared errors on the activated values: ``(x - t)^2 / 2`` for obj, classes and box terms, with
  ``tw = sqrt(w * net_w / (4 * anchor_w))``.

Reduction: Darknet sums ``delta`` over the batch and divides the learning rate by ``batch``. Here every part is a
sum over cells, anchors and images **divided by the number of images** in the call, so ``learning_rate`` keeps
Darknet's per-image meaning; with gradient accumulation the engine further divides by the number of
mini-batches per step (``subdivisions``), which reproduces Darknet's update exactly.

Warning: not implemented (rare in cfgs, documented differences): ``truth_thresh < 1``, ``max_delta`` gradient
clipping, the averaging of box deltas over several classes in one cell when ``iou_thresh < 1``, focal loss and
``objectness_smooth``. IoU-type box losses use the true gradient through the sigmoid/exp, where Darknet
approximates it. Darknet applies ``cls_normalizer`` only with ``counters_per_class``; here it always applies (the
default, 1, makes no difference).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, complete_box_iou_loss, distance_box_iou_loss
from torchvision.ops import generalized_box_iou_loss

from yolodet.modeling.blocks.yolo import HeadSpec, common_class_count

LOSS_PARTS = ("box", "obj", "cls", "total")


class YoloLoss:
    """Darknet's YOLOv3/v4 loss over every head (see the module docstring for the semantics).

    Call: ``loss(outputs, targets, input_size) -> {"box", "obj", "cls", "total"}`` (scalar tensors, each already
    divided by the batch size; ``total`` is their sum and the one to backpropagate).

    Args (call):
        outputs: raw head outputs, ``outputs[k]``: ``[B, A_k*(5+C), H_k, W_k]`` (any float dtype; computed in
            float32).
        targets: ``[M, 6]`` rows ``(image index in the batch, class, x1, y1, x2, y2)``, box corners as fractions
            of the network input (the format :func:`yolodet.data.train_dataset.collate_train` produces).
        input_size: network input ``(width, height)`` in pixels (anchors are in input pixels).
    """

    def __init__(self, heads: Sequence[HeadSpec]) -> None:
        self.num_classes = common_class_count(heads, "train")
        self.heads = list(heads)

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_size: tuple[int, int], seen: int = 0) -> dict[str, torch.Tensor]:
        """``seen`` (images trained on, Darknet's ``net.seen``) is accepted for the common loss interface; the
        ``[yolo]`` loss does not depend on it."""
        if len(outputs) != len(self.heads):
            raise ValueError(f"{len(outputs)} outputs for {len(self.heads)} heads")
        if targets.ndim != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets must be [M, 6] (image, class, x1, y1, x2, y2), got {tuple(targets.shape)}")
        device = outputs[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        batch = outputs[0].shape[0]
        parts = {"box": [], "obj": [], "cls": []}
        for spec, out in zip(self.heads, outputs):
            for name, value in yolo_head_loss(spec, out.float(), targets, input_size).items():
                parts[name].append(value)
        result = {name: torch.stack(values).sum() / batch for name, values in parts.items()}
        result["total"] = result["box"] + result["obj"] + result["cls"]
        return result


def yolo_head_loss(spec: HeadSpec, out: torch.Tensor, targets: torch.Tensor,
               input_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """One head: ``out`` [B, A*(5+C), H, W] float32 -> summed (not yet batch-divided) box/obj/cls terms."""
    b, _, h, w = out.shape
    a_count, c = spec.num_anchors, spec.classes
    if out.shape[1] != a_count * (5 + c):
        raise ValueError(f"head at layer {spec.layer}: {out.shape[1]} channels, expected {a_count * (5 + c)}")
    p = out.view(b, a_count, 5 + c, h, w).permute(0, 1, 3, 4, 2)  # [B, A, H, W, 5+C]
    net_w, net_h = input_size
    anchors = torch.tensor(spec.anchors, device=out.device, dtype=torch.float32)  # [A, 2] input pixels
    net = torch.tensor([net_w, net_h], device=out.device, dtype=torch.float32)

    img, cls = targets[:, 0].long(), targets[:, 1].long()
    truth = box_convert(targets[:, 2:6], "xyxy", "cxcywh")  # fractions of the input
    t_idx, a_idx = assign_anchors(spec, truth[:, 2:4] * net)
    bi, ti = img[t_idx], truth[t_idx]
    gi = (ti[:, 0] * w).long().clamp_(0, w - 1)
    gj = (ti[:, 1] * h).long().clamp_(0, h - 1)
    pos = p[bi, a_idx, gj, gi]  # [P, 5+C]

    box = _box_loss(spec, pos[:, :4], ti, gi, gj, anchors[a_idx], (w, h), net)

    # Objectness: 0 everywhere except ignored predictions (weight 0) and assigned cells (target 1).
    with torch.no_grad():
        weight = (~_ignored(spec, p[..., :4].detach(), img, truth, anchors, net)).float()
        target = torch.zeros_like(weight)
        weight[bi, a_idx, gj, gi] = 1.0
        target[bi, a_idx, gj, gi] = 1.0
    obj = spec.obj_normalizer * (weight * _logistic_loss(p[..., 4], target, spec.new_coords)).sum()

    # Classes at every assigned cell, multi-hot when truths share a cell.
    cell = ((bi * a_count + a_idx) * h + gj) * w + gi
    cells, inverse, cls_target = cell_class_targets(cell, cls[t_idx], c, spec.label_smooth_eps)
    first = torch.zeros(len(cells), dtype=torch.long, device=out.device)
    first.scatter_(0, inverse, torch.arange(len(cell), device=out.device))  # one assigned pair per cell
    cls_logits = pos[first, 5:]
    cls_loss = spec.cls_normalizer * _logistic_loss(cls_logits, cls_target, spec.new_coords).sum()
    return {"box": box, "obj": obj, "cls": cls_loss}


def cell_class_targets(cell: torch.Tensor, labels: torch.Tensor, classes: int, label_smooth_eps: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Darknet's class targets per assigned cell, multi-hot where truths share a cell.

    ``cell`` [P] flat cell index of each assigned (truth, anchor) pair, ``labels`` [P] its class ->
    (``cells`` [U] the distinct cells, ``inverse`` [P] each pair's row in them, ``target`` [U, classes], smoothed
    as Darknet's ``label_smooth_eps``: ``t * (1 - eps) + 0.5 * eps``).
    """
    cells, inverse = torch.unique(cell, return_inverse=True)
    target = torch.zeros(len(cells), classes, device=cell.device)
    target[inverse, labels] = 1.0
    if label_smooth_eps:
        target = target * (1 - label_smooth_eps) + 0.5 * label_smooth_eps
    return cells, inverse, target


def assign_anchors(spec: HeadSpec, truth_wh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Truth sizes [M, 2] (input pixels) -> (truth index, anchor index within this head's mask) of each pair the
    head trains: the best of all anchors when this head holds it, plus ``iou_thresh`` extras."""
    all_anchors = torch.tensor(spec.all_anchors, device=truth_wh.device, dtype=torch.float32)  # [num, 2]
    inter = torch.minimum(truth_wh[:, None], all_anchors[None]).prod(-1)  # boxes aligned at a corner
    iou = inter / (truth_wh.prod(-1)[:, None] + all_anchors.prod(-1)[None] - inter)  # [M, num]
    best = iou.argmax(1)  # first maximum, as Darknet's strict `>` scan
    mask = torch.tensor(spec.mask, device=truth_wh.device)
    chosen = best[:, None] == mask[None]  # [M, A]
    if spec.iou_thresh < 1.0:
        chosen |= iou[:, mask] > spec.iou_thresh
    t_idx, a_idx = chosen.nonzero(as_tuple=True)
    return t_idx, a_idx


def _activated_xy(raw: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
    xy = raw if spec.new_coords else raw.sigmoid()
    s = spec.scale_x_y
    return xy * s - (s - 1) / 2 if s != 1 else xy


def _decode_wh(raw: torch.Tensor, anchors: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
    """Raw (tw, th) -> size in input pixels (``exp`` argument capped so that a diverging net stays finite)."""
    return (raw.square() * 4 if spec.new_coords else raw.clamp(max=20).exp()) * anchors


def _box_loss(spec: HeadSpec, raw: torch.Tensor, truth: torch.Tensor, gi: torch.Tensor, gj: torch.Tensor,
              anchors: torch.Tensor, grid: tuple[int, int], net: torch.Tensor) -> torch.Tensor:
    """raw [P, 4] (tx, ty, tw, th) at the assigned cells, truth [P, 4] cxcywh fractions -> summed box term."""
    if raw.numel() == 0:
        return raw.sum()
    w, h = grid
    if spec.iou_loss == "mse":
        t_xy = truth[:, :2] * truth.new_tensor([w, h]) - torch.stack((gi, gj), 1)
        scale = ((2 - truth[:, 2] * truth[:, 3]) * spec.iou_normalizer)[:, None]
        size = truth[:, 2:4] * net / anchors
        s = spec.scale_x_y
        if spec.new_coords:
            xy_term = 0.5 * (_activated_xy(raw[:, :2], spec) - t_xy).square() / s
            t_wh = (size / 4).sqrt()
        else:
            target = (t_xy + (s - 1) / 2) / s
            xy_term = s * (F.binary_cross_entropy_with_logits(raw[:, :2], target, reduction="none")
                           - _entropy(target))  # minus a constant: same gradient, 0 at a perfect fit
            t_wh = size.clamp(min=1e-9).log()
        wh_term = 0.5 * (raw[:, 2:4] - t_wh).square()
        return (scale * (xy_term + wh_term)).sum()
    cells = torch.stack((gi, gj), 1).to(raw.dtype)
    xy = (cells + _activated_xy(raw[:, :2], spec)) / raw.new_tensor([w, h])
    pred = torch.cat((xy, _decode_wh(raw[:, 2:4], anchors, spec) / net), 1)
    pred, target = box_convert(pred, "cxcywh", "xyxy"), box_convert(truth, "cxcywh", "xyxy")
    if spec.iou_loss == "giou":
        loss = generalized_box_iou_loss(pred, target)
    elif spec.iou_loss == "diou":
        loss = distance_box_iou_loss(pred, target)
    elif spec.iou_loss == "ciou":
        loss = complete_box_iou_loss(pred, target)
    else:  # plain iou: torchvision only has the pairwise box_iou; take the matching pairs
        loss = 1 - _paired_iou(pred, target)
    return spec.iou_normalizer * loss.sum()


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of row i of ``a`` with row i of ``b`` (xyxy [P, 4] each) -> [P]."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh.prod(1)
    area = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area - inter).clamp(min=1e-12)


def _ignored(spec: HeadSpec, raw_box: torch.Tensor, img: torch.Tensor, truth: torch.Tensor,
             anchors: torch.Tensor, net: torch.Tensor) -> torch.Tensor:
    """[B, A, H, W] True where the decoded prediction overlaps some truth of its image by > ``ignore_thresh``."""
    b, a, h, w, _ = raw_box.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=raw_box.device), torch.arange(w, device=raw_box.device),
                            indexing="ij")
    grid = torch.stack((xs, ys), -1).to(raw_box.dtype)
    xy = (grid + _activated_xy(raw_box[..., :2], spec)) / raw_box.new_tensor([w, h])
    wh = _decode_wh(raw_box[..., 2:4], anchors[None, :, None, None], spec) / net
    pred = box_convert(torch.cat((xy, wh), -1), "cxcywh", "xyxy").view(b, -1, 4)
    truth_xyxy = box_convert(truth, "cxcywh", "xyxy")
    ignored = torch.zeros(b, a * h * w, dtype=torch.bool, device=raw_box.device)
    for i in img.unique().tolist():  # per image: the IoU matrix of one image stays small
        best = box_iou(pred[i], truth_xyxy[img == i]).amax(1)
        ignored[i] = best > spec.ignore_thresh
    return ignored.view(b, a, h, w)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy of soft targets (the minimum of BCE towards them)."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def _logistic_loss(x: torch.Tensor, target: torch.Tensor, activated: bool) -> torch.Tensor:
    """Darknet's logistic delta as a loss: BCE on logits, or (``new_coords``: ``x`` is already a probability)
    half the squared error."""
    if activated:
        return 0.5 * (x - target).square()
    return F.binary_cross_entropy_with_logits(x, target, reduction="none")
