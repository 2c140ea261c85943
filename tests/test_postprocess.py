"""Darknet's candidate rule (obj > thresh, then each class with obj*cls > thresh) and per-class NMS."""

from __future__ import annotations

import torch

from yolodet.inference.postprocess import postprocess
from yolodet.inference.preprocess import Mapping


def _row(cx, cy, w, h, obj, *cls):
    return [cx, cy, w, h, obj, *cls]


def test_candidate_rule_is_multilabel_and_obj_gated() -> None:
    preds = torch.tensor([[
        _row(50, 50, 20, 20, 0.9, 0.5, 0.4),   # both classes: 0.45, 0.36
        _row(10, 10, 4, 4, 0.2, 1.0, 1.0),     # obj below thresh: nothing, although obj*cls would be 0.2
        _row(80, 80, 10, 10, 0.5, 0.2, 0.9),   # class 1 only: 0.45 (class 0: 0.1)
    ]])
    [det] = postprocess(preds, conf_thres=0.25, nms_thres=0.45)
    got = sorted(zip(det.labels.tolist(), [round(s, 4) for s in det.scores.tolist()]))
    assert got == [(0, 0.45), (1, 0.36), (1, 0.45)]
    assert det.scores.tolist() == sorted(det.scores.tolist(), reverse=True)


def test_nms_is_per_class() -> None:
    preds = torch.tensor([[
        _row(50, 50, 20, 20, 1.0, 0.9, 0.0),
        _row(51, 50, 20, 20, 1.0, 0.8, 0.0),   # same class, IoU ~0.9: suppressed
        _row(51, 50, 20, 20, 1.0, 0.0, 0.7),   # other class, same place: kept
        _row(70, 50, 20, 20, 1.0, 0.6, 0.0),   # same class, IoU 0: kept
    ]])
    [det] = postprocess(preds, conf_thres=0.25, nms_thres=0.45)
    assert sorted(zip(det.labels.tolist(), [round(s, 4) for s in det.scores.tolist()])) == [
        (0, 0.6), (0, 0.9), (1, 0.7)]


def test_mapping_back_and_clipping() -> None:
    # letterboxed 200x100 image in a 100x100 input: content 100x50 at pad_y 25, scale 2
    mapping = Mapping(orig_w=200, orig_h=100, net_w=100, net_h=100, new_w=100, new_h=50, pad_x=0, pad_y=25)
    preds = torch.tensor([[_row(50, 50, 20, 10, 1.0, 1.0), _row(95, 30, 20, 20, 1.0, 1.0)]])
    [det] = postprocess(preds, conf_thres=0.25, nms_thres=0.45, mappings=[mapping])
    boxes = sorted(det.boxes.tolist())
    assert boxes[0] == [80.0, 40.0, 120.0, 60.0]
    assert boxes[1] == [170.0, 0.0, 200.0, 30.0]  # clipped to the image


def test_empty_and_max_det() -> None:
    preds = torch.zeros(2, 5, 7)
    assert [len(d) for d in postprocess(preds)] == [0, 0]
    preds = torch.tensor([[_row(10 * i, 10, 5, 5, 1.0, 0.5 + i / 100) for i in range(10)]])
    [det] = postprocess(preds, max_det=3)
    assert len(det) == 3 and det.scores[0] > det.scores[-1]
