"""The ``[Gaussian_yolo]`` loss against Darknet's own training deltas (``tests/oracle/delta_dump.c`` running
AlexeyAB's ``forward_gaussian_yolo_layer`` with ``state.train = 1``): yolodet's gradient w.r.t. the raw head output
must be minus Darknet's ``l.delta``, uncertainty channels included, for ``iou_loss=mse`` and the IoU losses
(iou/giou/diou/ciou, Darknet's hand-derived ``dx_box_iou``), with the official Gaussian_yolov3_BDD.cfg's settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert, box_iou

from conftest import FIXTURES, SHARED, need_shared
from test_loss_region import TRUTHS, assert_deltas_match, compare_with_darknet, delta_exe  # noqa: F401
from yolodet.modeling.model import Darknet
from yolodet.training.criterion import build_loss, check_trainable
from yolodet.training.loss_gaussian import GaussianTrainSpec

GAUSSIAN = FIXTURES / "gaussian.cfg"
BDD_CFG = SHARED / "data" / "darknet-zoo" / "Gaussian_yolov3_BDD.cfg"
TWO_CLASS_TRUTHS = TRUTHS.copy()
TWO_CLASS_TRUTHS[:, 4] = [1, 0, 0, 1, 1]
# A second box in the cell of box 0 with the same anchor: box deltas add up and are averaged over the classes.
TWO_CLASS_TRUTHS = np.concatenate([TWO_CLASS_TRUTHS, [[0.31, 0.41, 0.21, 0.29, 0]]]).astype(np.float32)

# The box settings of the official Gaussian_yolov3_BDD.cfg (its [Gaussian_yolo] heads, all three alike).
BDD = {"uc_normalizer=0.7": "uc_normalizer=1.0", "cls_normalizer=3": "cls_normalizer=1.0",
       "scale_x_y=1.1": "scale_x_y=1.0", "truth_thresh=1": "truth_thresh=1\niou_thresh=0.213\niou_loss=giou"}
# For the IoU losses, boxes that predictions (about their anchors' sizes, near their cells' centres) only partly
# overlap, contain, or miss: a thin anchor (2x8 pixels) in the head, thin truths at the edge of their cells, and
# a truth of another aspect ratio than its anchor (CIoU's term).
THIN = {"mask=2,3,4": "mask=0,1,2", "anchors=6,8,": "anchors=2,8,"}
IOU_TRUTHS = (np.array([[16.5, 28, 1.5, 6, 0], [40.5, 8.5, 16, 24, 1], [55.5, 48.5, 1.5, 6, 1], [12, 52, 14, 12, 0],
                        [27, 37, 12, 20, 1], [4.5, 4, 2, 7, 1], [44, 20, 4, 30, 0], [20, 44, 30, 4, 1]])
              / [64, 64, 64, 64, 1]).astype(np.float32)  # pixels of the 64x64 input -> fractions


def _edits(base: dict[str, str], iou_loss: str, extra: str = "") -> dict[str, str]:
    return {**base, "truth_thresh=1": f"truth_thresh=1\niou_loss={iou_loss}{extra}"}


VARIANTS = {
    "normalizers-scale_x_y": ({}, TWO_CLASS_TRUTHS),
    "iou_thresh-label_smooth-max_delta": ({"truth_thresh=1": "truth_thresh=1\niou_thresh=0.2\nlabel_smooth_eps=0.1"
                                           "\nmax_delta=0.3", "ignore_thresh=.5": "ignore_thresh=.3"},
                                          TWO_CLASS_TRUTHS),
    "giou-bdd": (BDD, TWO_CLASS_TRUTHS),
    "giou-bdd-partial-overlaps": ({**BDD, **THIN}, IOU_TRUTHS),
    **{f"{kind}-partial-overlaps": (_edits(THIN, kind), IOU_TRUTHS) for kind in ("giou", "iou", "diou", "ciou")},
    "giou-shared-cells": (_edits({}, "giou"), TWO_CLASS_TRUTHS),
    "ciou-iou_thresh-max_delta": (_edits({"ignore_thresh=.5": "ignore_thresh=.3"}, "ciou",
                                         "\niou_thresh=0.2\nmax_delta=0.05"), TWO_CLASS_TRUTHS),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_gaussian_gradient_is_darknets_delta(variant: str, delta_exe: Path, tmp_path: Path) -> None:
    edits, truths = VARIANTS[variant]
    text = GAUSSIAN.read_text()
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    [(ours, theirs)] = compare_with_darknet(text, truths, 0, delta_exe, tmp_path)
    assert_deltas_match(ours, theirs)
    sigmas = theirs.reshape(3, 11, 8, 8)[:, [1, 3, 5, 7]]
    assert np.abs(sigmas).max() > 0  # the uncertainty channels are trained


def test_gaussian_loss_prefers_a_confident_correct_box() -> None:
    model = Darknet.from_cfg(GAUSSIAN)
    loss = build_loss(model)
    cx, cy, w, h = 4.5 / 8, 4.5 / 8, 24 / 64, 20 / 64  # anchor 3's size, centred in cell (4, 4)
    target = torch.tensor([[0, 1, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])
    out = torch.zeros(1, 33, 8, 8)
    out.view(3, 11, 8, 8)[1, (1, 3, 5, 7)] = -3.0  # small sigmas everywhere
    sure = loss([out], target, (64, 64))["box"]
    out.view(3, 11, 8, 8)[1, (1, 3, 5, 7)] = 3.0
    unsure = loss([out], target, (64, 64))["box"]
    assert sure.item() < unsure.item()  # d = .5 - .5 = 0 at the centre, log(s + .3) decides


def test_official_bdd_cfg_is_trainable() -> None:
    model = Darknet.from_cfg(need_shared(BDD_CFG))
    check_trainable(model)
    loss = build_loss(model)
    settings = {(h.head.iou_loss, h.head.iou_normalizer, h.uc_normalizer, h.head.cls_normalizer, h.head.iou_thresh,
                 h.head.scale_x_y) for h in loss.heads if isinstance(h, GaussianTrainSpec)}
    assert len(loss.heads) == 3 and settings == {("giou", 0.5, 1.0, 1.0, 0.213, 1.0)}  # what BDD above tests
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(2, 3 * 19, 512 // s, 512 // s, generator=g).requires_grad_() for s in (32, 16, 8)]
    targets = torch.tensor([[0, 3, .1, .2, .4, .6], [1, 9, .5, .5, .9, .7], [1, 0, .02, .03, .05, .09]])
    parts = loss(outputs, targets, (512, 512))
    parts["total"].backward()
    assert all(torch.isfinite(v) for v in parts.values()) and parts["box"].item() > 0
    assert all(o.grad.abs().sum() > 0 for o in outputs)


@pytest.mark.parametrize("iou_loss", ["giou", "ciou"])
def test_iou_box_deltas_fit_a_box(iou_loss: str) -> None:
    """SGD on the box part alone, the official BDD settings: Darknet's IoU deltas (the means) move the predicted
    box of the assigned anchor (24x20, cell (3, 4)) onto its truth."""
    text = GAUSSIAN.read_text()
    for old, new in {**BDD, "iou_loss=giou": f"iou_loss={iou_loss}"}.items():
        text = text.replace(old, new)
    torch.manual_seed(0)
    model = Darknet.from_cfg_text(text, "bdd-like.cfg").eval()
    loss = build_loss(model)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([[0, 1, 0.2, 0.3, 0.55, 0.75]])
    opt = torch.optim.SGD(model.parameters(), lr=3e-3)
    ious = []
    for _ in range(20):
        [out] = model(x)
        r = out[0].view(3, 11, 8, 8)[1, :, 4, 3]
        box = torch.stack(((3 + r[0].sigmoid()) / 8, (4 + r[2].sigmoid()) / 8, r[4].exp() * 24 / 64,
                           r[6].exp() * 20 / 64))
        ious.append(box_iou(box_convert(box[None], "cxcywh", "xyxy"), target[:, 2:]).item())
        opt.zero_grad()
        loss([out], target, (64, 64))["box"].backward()
        opt.step()
    assert ious[-1] > ious[0] + 0.1 and all(b > a for a, b in zip(ious, ious[1:]))
