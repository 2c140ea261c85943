"""YoloLoss against a line-by-line Python port of AlexeyAB's ``forward_yolo_layer`` deltas.

Darknet's ``delta`` is minus the gradient w.r.t. the raw head output (its backward adds it unchanged), so the
autograd gradient of ``batch * loss["total"]`` must equal ``-delta`` element by element.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from yolodet.modeling.blocks.yolo import HeadSpec
from yolodet.training.loss import YoloLoss
from yolodet.modeling.model import Darknet

NET = (64, 64)


def _heads(**changes) -> list[HeadSpec]:
    model = Darknet.from_cfg(FIXTURES / "overfit.cfg")
    return [replace(h, **changes) for h in model.heads]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _iou_cxcywh(a, b) -> float:
    ax1, ax2, ay1, ay2 = a[0] - a[2] / 2, a[0] + a[2] / 2, a[1] - a[3] / 2, a[1] + a[3] / 2
    bx1, bx2, by1, by2 = b[0] - b[2] / 2, b[0] + b[2] / 2, b[1] - b[3] / 2, b[1] + b[3] / 2
    iw, ih = min(ax2, bx2) - max(ax1, bx1), min(ay2, by2) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def darknet_delta(raw: np.ndarray, spec: HeadSpec, truths: list[list[tuple]]) -> np.ndarray:
    """AlexeyAB ``forward_yolo_layer`` (mse, new_coords=0), loops as in C. ``truths[b]``: (cx, cy, w, h, class)
    as fractions of the input. Returns delta shaped like ``raw`` [B, A*(5+C), H, W]."""
    b_count, _, h, w = raw.shape
    a_count, c = spec.num_anchors, spec.classes
    raw = raw.reshape(b_count, a_count, 5 + c, h, w)
    out = raw.copy()
    s = spec.scale_x_y
    out[:, :, 0:2] = _sigmoid(raw[:, :, 0:2]) * s - (s - 1) / 2
    out[:, :, 4:] = _sigmoid(raw[:, :, 4:])
    delta = np.zeros_like(out)
    net_w, net_h = NET
    for b in range(b_count):
        for j in range(h):
            for i in range(w):
                for n in range(a_count):
                    aw, ah = spec.anchors[n]
                    pred = ((i + out[b, n, 0, j, i]) / w, (j + out[b, n, 1, j, i]) / h,
                            math.exp(raw[b, n, 2, j, i]) * aw / net_w, math.exp(raw[b, n, 3, j, i]) * ah / net_h)
                    best_iou = max([_iou_cxcywh(pred, t) for t in truths[b]], default=0.0)
                    delta[b, n, 4, j, i] = spec.obj_normalizer * (0 - out[b, n, 4, j, i])
                    if best_iou > spec.ignore_thresh:
                        delta[b, n, 4, j, i] = 0
        for t in truths[b]:
            cx, cy, tw, th, cls = t
            best_iou, best_n = 0.0, 0
            for n, (aw, ah) in enumerate(spec.all_anchors):
                iou = _iou_cxcywh((0, 0, aw / net_w, ah / net_h), (0, 0, tw, th))
                if iou > best_iou:
                    best_iou, best_n = iou, n
            i, j = int(cx * w), int(cy * h)
            chosen = [spec.mask.index(best_n)] if best_n in spec.mask else []
            if spec.iou_thresh < 1:
                for n in spec.mask:
                    aw, ah = spec.all_anchors[n]
                    if n != best_n and _iou_cxcywh((0, 0, aw / net_w, ah / net_h), (0, 0, tw, th)) > spec.iou_thresh:
                        chosen.append(spec.mask.index(n))
            for m in chosen:
                aw, ah = spec.anchors[m]
                scale = (2 - tw * th) * spec.iou_normalizer
                targets = (cx * w - i, cy * h - j, math.log(tw * net_w / aw), math.log(th * net_h / ah))
                values = (out[b, m, 0, j, i], out[b, m, 1, j, i], raw[b, m, 2, j, i], raw[b, m, 3, j, i])
                for k in range(4):
                    delta[b, m, k, j, i] += scale * (targets[k] - values[k])
                delta[b, m, 4, j, i] = spec.obj_normalizer * (1 - out[b, m, 4, j, i])
                if delta[b, m, 5 + cls, j, i]:
                    delta[b, m, 5 + cls, j, i] = 1 - out[b, m, 5 + cls, j, i]
                else:
                    for k in range(c):
                        delta[b, m, 5 + k, j, i] = (k == cls) - out[b, m, 5 + k, j, i]
    return delta.reshape(b_count, a_count * (5 + c), h, w)


TRUTHS = [
    [(0.30, 0.40, 0.20, 0.30, 0), (0.32, 0.41, 0.22, 0.28, 1), (0.80, 0.70, 0.60, 0.55, 1)],  # two in one cell
    [(0.55, 0.25, 0.15, 0.16, 1)],
    [],  # an image without objects
]


def _targets(truths) -> torch.Tensor:
    rows = [(b, cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            for b, ts in enumerate(truths) for cx, cy, w, h, cls in ts]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def _raw_outputs(heads, batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [4, 8]  # overfit.cfg at 64x64: strides 16 and 8
    return [torch.randn(batch, h.num_anchors * (5 + h.classes), s, s, generator=g) * 0.5
            for h, s in zip(heads, sizes)]


@pytest.mark.parametrize("changes", [{}, {"scale_x_y": 1.05}, {"iou_thresh": 0.25}, {"ignore_thresh": 0.1},
                                     {"obj_normalizer": 2.0, "iou_normalizer": 0.07}],
                         ids=["default", "scale_x_y", "iou_thresh", "ignore_low", "normalizers"])
def test_gradient_equals_darknet_delta(changes) -> None:
    heads = _heads(**changes)
    truths = TRUTHS if "iou_thresh" not in changes else [TRUTHS[0][2:], TRUTHS[1], []]  # no multi-class cells
    outputs = [o.requires_grad_() for o in _raw_outputs(heads, len(truths))]
    loss = YoloLoss(heads)(outputs, _targets(truths), NET)
    (loss["total"] * len(truths)).backward()
    for spec, out in zip(heads, outputs):
        expected = -darknet_delta(out.detach().double().numpy(), spec, truths)
        np.testing.assert_allclose(out.grad.numpy(), expected, atol=2e-5, err_msg=f"head at layer {spec.layer}")


def test_truth_goes_to_the_head_holding_its_best_anchor() -> None:
    heads = _heads()
    loss_fn = YoloLoss(heads)
    # 28x28 px at 64x64: best of all anchors is #3 (26,26) -> mask 3,4,5 = first head (4x4 grid), cell (2, 1)
    truth = torch.tensor([[0, 1, 0.6 - 14 / 64, 0.3 - 14 / 64, 0.6 + 14 / 64, 0.3 + 14 / 64]])
    outputs = [torch.zeros(1, h.num_anchors * (5 + h.classes), s, s, requires_grad=True)
               for h, s in zip(heads, (4, 8))]
    loss_fn(outputs, truth, NET)["total"].backward()
    obj0 = outputs[0].grad.view(1, 3, 7, 4, 4)[0, :, 4]
    assert (obj0 < 0).nonzero().tolist() == [[0, 1, 2]]  # anchor 0 of the mask (#3), row 1, column 2
    assert (outputs[1].grad.view(1, 3, 7, 8, 8)[0, :, 4] >= 0).all()  # second head: background only
    cls = outputs[0].grad.view(1, 3, 7, 4, 4)[0, 0, 5:, 1, 2]
    assert cls[1] < 0 < cls[0]  # pushed towards class 1, away from class 0


def test_ignore_thresh_removes_objectness_penalty_of_good_non_assigned_predictions() -> None:
    heads = _heads()
    spec = heads[1]
    # second head (8x8), truth centred in cell (3, 3), size exactly anchor #1 (14x22): assigned to mask index 1.
    cx, cy, w, h = 3.5 / 8, 3.5 / 8, 14 / 64, 22 / 64
    truth = torch.tensor([[0, 0, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])
    out1 = torch.zeros(1, 21, 8, 8)
    view = out1.view(1, 3, 7, 8, 8)
    # anchor #0 (10x10) at the same cell predicting the truth's box exactly: IoU 1 > ignore_thresh, not assigned
    view[0, 0, 2, 3, 3] = math.log(14 / 10)
    view[0, 0, 3, 3, 3] = math.log(22 / 10)
    outputs = [torch.zeros(1, 21, 4, 4, requires_grad=True), out1.requires_grad_()]
    YoloLoss(heads)(outputs, truth, NET)["total"].backward()
    grad = outputs[1].grad.view(1, 3, 7, 8, 8)[0, :, 4, 3, 3]
    assert grad[0] == 0  # ignored
    assert grad[1] < 0  # the assigned anchor is pushed up
    assert grad[2] > 0  # anchor #2 predicts a different box: pushed down
    assert spec.ignore_thresh == 0.7


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou", "mse"])
def test_box_losses_vanish_at_a_perfect_prediction(kind: str) -> None:
    heads = _heads(iou_loss=kind)
    cx, cy, w, h = 2.5 / 4, 1.5 / 4, 26 / 64, 26 / 64  # anchor #3, first head, cell centre
    truth = torch.tensor([[0, 0, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])
    perfect = torch.zeros(1, 21, 4, 4)  # sigmoid(0) = .5 = centre offset, exp(0) * anchor = size
    worse = perfect.clone()
    worse.view(1, 3, 7, 4, 4)[0, 0, :4, 1, 2] = torch.tensor([1.0, -1.0, 0.5, -0.3])
    empty = torch.zeros(1, 21, 8, 8)
    good = YoloLoss(heads)([perfect, empty], truth, NET)["box"]
    bad = YoloLoss(heads)([worse, empty], truth, NET)["box"]
    assert torch.isfinite(bad) and good.item() == pytest.approx(0.0, abs=1e-5) and bad > 0.01


def test_new_coords_gradient_is_the_squared_error_through_the_logistic() -> None:
    heads = _heads(new_coords=True)
    truth = _targets([[(0.3, 0.4, 0.2, 0.3, 1)]])
    logits = [o.requires_grad_() for o in _raw_outputs(heads, 1)]
    probs = [o.sigmoid() for o in logits]  # the conv's logistic (new_coords cfgs use activation=logistic)
    loss = YoloLoss(heads)(probs, truth, NET)
    loss["total"].backward()
    for out, spec in zip(logits, heads):
        p = out.detach().sigmoid().view(1, 3, 7, *out.shape[2:])
        g = out.grad.view_as(p)
        positives = g[0, :, 4] < 0
        # negatives: d/dx of 0.5 * p^2 = p * p * (1 - p)
        expected = (p * p * (1 - p))[0, :, 4][~positives]
        torch.testing.assert_close(g[0, :, 4][~positives], expected * spec.obj_normalizer)
    assert all(torch.isfinite(v) for v in loss.values())


def test_loss_is_a_mean_over_images_and_parts_add_up() -> None:
    heads = _heads()
    outputs = _raw_outputs(heads, 2)
    truths = TRUTHS[:2]
    one = YoloLoss(heads)(outputs, _targets(truths), NET)
    doubled = YoloLoss(heads)([torch.cat((o, o)) for o in outputs], _targets(truths + truths), NET)
    for key in one:
        torch.testing.assert_close(one[key], doubled[key])
    torch.testing.assert_close(one["total"], one["box"] + one["obj"] + one["cls"])


def test_no_targets_gives_only_background_objectness() -> None:
    heads = _heads()
    loss = YoloLoss(heads)(_raw_outputs(heads, 2), torch.zeros(0, 6), NET)
    assert loss["box"] == 0 and loss["cls"] == 0 and loss["obj"] > 0


def test_bad_arguments_are_reported() -> None:
    heads = _heads()
    with pytest.raises(ValueError, match="targets must be"):
        YoloLoss(heads)(_raw_outputs(heads, 1), torch.zeros(3, 5), NET)
    with pytest.raises(ValueError, match="outputs for 2 heads"):
        YoloLoss(heads)(_raw_outputs(heads, 1)[:1], torch.zeros(0, 6), NET)
