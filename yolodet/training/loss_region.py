"""The YOLOv2 ``[region]`` loss with AlexeyAB's ``forward_region_layer`` semantics, vectorised, as named parts.

Darknet writes ``delta`` w.r.t. the raw head input (its logistic gradients included) and ``backward_region_layer``
passes it on unchanged; each term below is the function whose autograd gradient is that ``delta`` (with
``sigma = sigmoid``, ``W x H`` the grid, anchors in grid cells):

* **no object**: every prediction, ``noobject_scale * sigma(t_o)^2 / 2``, except those whose decoded box has IoU
  ``> thresh`` with some truth of the image (no objectness term).
* **prior** (``seen < 12800`` images): every prediction is pulled towards its anchor at the cell centre,
  ``.01 * [(sigma(t_x) - .5)^2 + (sigma(t_y) - .5)^2 + t_w^2 + t_h^2] / 2``.
* **assignment**: each truth goes to cell ``(int(x * W), int(y * H))`` and to the anchor whose (w, h) IoU with it
  is best (strict ``>``, first maximum); the (w, h) compared is the *predicted* size, or the anchor's with
  ``bias_match=1``. At an assigned prediction the terms of the next three bullets *replace* the no-object and
  prior terms; when two truths land on one prediction the later one wins (Darknet overwrites).
* **box**: ``coord_scale * [(sigma(t_x) - (x W - i))^2 + (sigma(t_y) - (y H - j))^2 + (t_w - log(w W / a_w))^2
  + (t_h - log(h H / a_h))^2] / 2``.
  Warning: AlexeyAB's region layer passes ``coord_scale`` alone, pjreddie's ``coord_scale * (2 - w h)``;
  yolodet follows AlexeyAB (the Darknet the oracle builds).
* **object**: ``object_scale * (sigma(t_o) - 1)^2 / 2``, or towards the (detached) IoU of the decoded box with the
  truth when ``rescore=1``.
* **classes**: ``softmax=1``: ``class_scale`` times the cross-entropy of the softmax (its gradient is Darknet's
  ``class_scale * (onehot - p)``); ``softmax=0``: Darknet applies no activation to the class channels, so the
  term is ``class_scale * (c - onehot)^2 / 2`` on the raw values.

Reduction as :mod:`yolodet.training.loss`: sums divided by the number of images in the call.

Refused (:func:`region_untrainable`): ``tree=`` (yolo9000's softmax tree), ``coords != 4``, ``classfix``,
``focal_loss`` and ``map=``. Warning: Darknet reads at most ``max`` (200) truths per image; yolodet uses them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.yolov2 import RegionSpec

PRIOR_IMAGES = 12800  # Darknet: `if (*(state.net.seen) < 12800)`
PRIOR_SCALE = 0.01


@dataclass(frozen=True)
class RegionTrainSpec:
    """A ``[region]`` head's training keys (``parse_region``'s defaults), next to its :class:`RegionSpec`."""

    head: RegionSpec
    thresh: float = 0.5
    coord_scale: float = 1.0
    object_scale: float = 1.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    rescore: bool = False
    jitter: float = 0.2
    random: float = 0.0

    @classmethod
    def from_block(cls, head: RegionSpec, block: CfgBlock) -> "RegionTrainSpec":
        """Read the training keys of the cfg section ``block`` (the ``[region]`` of ``head``)."""
        return cls(head, thresh=block.get_float("thresh", 0.5), coord_scale=block.get_float("coord_scale", 1.0),
                   object_scale=block.get_float("object_scale", 1.0),
                   noobject_scale=block.get_float("noobject_scale", 1.0),
                   class_scale=block.get_float("class_scale", 1.0), rescore=bool(block.get_int("rescore", 0)),
                   jitter=block.get_float("jitter", 0.2), random=block.get_float("random", 0.0))


def region_untrainable(head: RegionSpec, block: CfgBlock) -> str | None:
    """Why yolodet cannot train this ``[region]`` head (None: it can)."""
    if head.tree:
        return "tree= (yolo9000's softmax tree) is not trainable in yolodet"
    if head.coords != 4:
        return f"coords={head.coords}: only coords=4 is trainable"
    for key in ("classfix", "focal_loss"):
        if block.get_int(key, 0):
            return f"{key}={block.get_int(key, 0)} is not trainable in yolodet (only 0)"
    if head.map:
        return "map= (class remapping) is not trainable in yolodet"
    return None


def region_head_loss(spec: RegionTrainSpec, out: torch.Tensor, targets: torch.Tensor, seen: int
                     ) -> dict[str, torch.Tensor]:
    """One head: ``out`` [B, A*(5+C), H, W] float32, ``targets`` [M, 6] (image, class, x1, y1, x2, y2 as fractions),
    ``seen``: images trained on so far (Darknet's ``net.seen``) -> summed box/obj/cls terms (not batch-divided)."""
    head = spec.head
    b, _, h, w = out.shape
    a_count, c = head.num_anchors, head.classes
    if out.shape[1] != a_count * (5 + c):
        raise ValueError(f"[region] at layer {head.layer}: {out.shape[1]} channels, expected {a_count * (5 + c)}")
    p = out.view(b, a_count, 5 + c, h, w).permute(0, 1, 3, 4, 2)  # [B, A, H, W, 5+C]
    anchors = head.anchor_tensor().to(out.device)  # [A, 2] grid cells
    grid = out.new_tensor([w, h])
    keep = targets[:, 1] < c  # Darknet skips truths whose class the cfg does not have
    img, cls = targets[keep, 0].long(), targets[keep, 1].long()
    truth = box_convert(targets[keep, 2:6], "xyxy", "cxcywh")  # [M, 4] fractions

    xy, wh, obj = p[..., :2].sigmoid(), p[..., 2:4], p[..., 4].sigmoid()
    with torch.no_grad():
        ys, xs = torch.meshgrid(torch.arange(h, device=out.device), torch.arange(w, device=out.device), indexing="ij")
        cells = torch.stack((xs, ys), -1).to(out.dtype)  # [H, W, 2]
        pred = torch.cat(((cells + xy) / grid, wh.clamp(max=20).exp() * anchors[None, :, None, None] / grid), -1)
        noobj = torch.full((b, a_count, h, w), spec.noobject_scale, device=out.device)
        for i in img.unique().tolist():
            best = box_iou(box_convert(pred[i].view(-1, 4), "cxcywh", "xyxy"),
                           box_convert(truth[img == i], "cxcywh", "xyxy")).amax(1)
            noobj[i].view(-1)[best > spec.thresh] = 0.0
        bi, ai, gj, gi, ti = _assign(spec, truth, img, wh.detach(), anchors, grid)
        free = torch.ones(b, a_count, h, w, device=out.device)
        free[bi, ai, gj, gi] = 0.0  # assigned predictions: Darknet overwrites the no-object and prior deltas

    obj_loss = 0.5 * (free * noobj * obj.square()).sum()
    prior = out.new_zeros(())
    if seen < PRIOR_IMAGES:
        prior = PRIOR_SCALE * 0.5 * (free[..., None] * torch.cat(((xy - 0.5).square(), wh.square()), -1)).sum()

    tb = truth[ti]
    t_xy = tb[:, :2] * grid - torch.stack((gi, gj), 1)
    t_wh = (tb[:, 2:4] * grid / anchors[ai]).clamp(min=1e-9).log()
    box = spec.coord_scale * 0.5 * ((xy[bi, ai, gj, gi] - t_xy).square().sum()
                                    + (wh[bi, ai, gj, gi] - t_wh).square().sum())
    obj_target = torch.ones_like(t_xy[:, 0])
    if spec.rescore:
        with torch.no_grad():
            box_iou_pairs = box_iou(box_convert(pred[bi, ai, gj, gi], "cxcywh", "xyxy"),
                                    box_convert(tb, "cxcywh", "xyxy")).diagonal()
        obj_target = box_iou_pairs
    obj_loss = obj_loss + spec.object_scale * 0.5 * (obj[bi, ai, gj, gi] - obj_target).square().sum()

    logits = p[bi, ai, gj, gi, 5:]
    if head.softmax:
        cls_loss = F.cross_entropy(logits, cls[ti], reduction="sum")
    else:
        cls_loss = 0.5 * (logits - F.one_hot(cls[ti], c).to(logits.dtype)).square().sum()
    return {"box": box + prior, "obj": obj_loss, "cls": spec.class_scale * cls_loss}


def _assign(spec: RegionTrainSpec, truth: torch.Tensor, img: torch.Tensor, wh_raw: torch.Tensor,
            anchors: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(image, anchor, row, column, truth index) of each assigned prediction, one per prediction (the last truth
    assigned to it wins, as Darknet overwrites its deltas)."""
    b, a_count, h, w, _ = wh_raw.shape
    gi = (truth[:, 0] * w).long().clamp_(0, w - 1)
    gj = (truth[:, 1] * h).long().clamp_(0, h - 1)
    if spec.head.bias_match:
        sizes = (anchors / grid).expand(len(truth), a_count, 2)
    else:  # the predicted size at the truth's cell
        sizes = wh_raw[img, :, gj, gi].clamp(max=20).exp() * anchors / grid  # [M, A, 2]
    inter = torch.minimum(sizes, truth[:, None, 2:4]).prod(-1)  # centred boxes
    iou = inter / (sizes.prod(-1) + truth[:, None, 2:4].prod(-1) - inter)
    ai = iou.argmax(1)  # first maximum (Darknet's strict `>` scan; anchor 0 when every IoU is 0)
    key = ((img * a_count + ai) * h + gj) * w + gi
    uniq, inverse = torch.unique(key, return_inverse=True)
    last = torch.full((len(uniq),), -1, dtype=torch.long, device=truth.device)
    last.scatter_reduce_(0, inverse, torch.arange(len(key), device=truth.device), "amax")
    return img[last], ai[last], gj[last], gi[last], last
