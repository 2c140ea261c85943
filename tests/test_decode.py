"""Decode against values computed by hand from Darknet's formulas (yolo_layer.c, gaussian_yolo_layer.c,
region_layer.c, detection_layer.c)."""

from __future__ import annotations

import math

import pytest
import torch

from yolodet.modeling.blocks.yolo import HeadSpec
from yolodet.modeling.blocks.yolov1 import DetectionSpec
from yolodet.modeling.blocks.yolov2 import RegionSpec
from yolodet.inference.decode import DecodeError, YoloDecoder


def _head(**kw) -> HeadSpec:
    base = dict(layer=0, anchors=((10.0, 20.0), (30.0, 40.0)), all_anchors=((10.0, 20.0), (30.0, 40.0)),
                mask=(0, 1), classes=2, stride=32)
    return HeadSpec(**{**base, **kw})


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize("scale_x_y", [1.0, 1.2])
def test_classic_decode_one_cell(scale_x_y: float) -> None:
    head = _head(scale_x_y=scale_x_y)
    out = torch.zeros(1, 2 * 7, 2, 3)  # grid W=3, H=2 on a 96x64 input
    # anchor 1 at cell (i=2, j=1): tx, ty, tw, th, obj, c0, c1
    out[0, 7:14, 1, 2] = torch.tensor([_logit(0.25), _logit(0.75), math.log(2.0), math.log(0.5), _logit(0.9),
                                       _logit(0.2), _logit(0.6)])
    pred = YoloDecoder([head])([out], (96, 64))
    assert pred.shape == (1, 2 * 2 * 3, 7)
    row = pred[0, 1 * 6 + 1 * 3 + 2]  # anchor, row, column order
    sx = 0.25 * scale_x_y - (scale_x_y - 1) / 2
    sy = 0.75 * scale_x_y - (scale_x_y - 1) / 2
    expected = [(2 + sx) / 3 * 96, (1 + sy) / 2 * 64, 2.0 * 30, 0.5 * 40, 0.9, 0.2, 0.6]
    torch.testing.assert_close(row, torch.tensor(expected), atol=1e-4, rtol=1e-5)
    # a zero cell: sigmoid(0) = 0.5 everywhere, exp(0) = 1
    torch.testing.assert_close(pred[0, 0], torch.tensor([0.5 / 3 * 96, 0.5 / 2 * 64, 10, 20, 0.5, 0.5, 0.5]))


def test_new_coords_decode() -> None:
    head = _head(new_coords=True, scale_x_y=2.0)
    out = torch.zeros(1, 14, 1, 1)
    out[0, :7, 0, 0] = torch.tensor([0.3, 0.6, 0.5, 1.5, 0.8, 0.1, 0.7])  # already logistic in the conv
    row = YoloDecoder([head])([out], (32, 32))[0, 0]
    expected = [(0.3 * 2 - 0.5) * 32, (0.6 * 2 - 0.5) * 32, 0.25 * 4 * 10, 2.25 * 4 * 20, 0.8, 0.1, 0.7]
    torch.testing.assert_close(row, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_multiple_heads_concatenate_and_inputs_untouched() -> None:
    heads = [_head(layer=3), _head(layer=7, anchors=((5.0, 5.0), (6.0, 6.0)))]
    outs = [torch.randn(2, 14, 2, 2), torch.randn(2, 14, 4, 4)]
    copies = [o.clone() for o in outs]
    pred = YoloDecoder(heads)(outs, (64, 64))
    assert pred.shape == (2, 2 * 4 + 2 * 16, 7)
    for o, c in zip(outs, copies):
        assert torch.equal(o, c)
    with pytest.raises(ValueError, match="outputs for"):
        YoloDecoder(heads)(outs[:1], (64, 64))


def _region(**kw) -> RegionSpec:
    base = dict(layer=0, anchors=((1.5, 2.0), (3.0, 0.5)), classes=2, coords=4, softmax=True, stride=32)
    return RegionSpec(**{**base, **kw})


@pytest.mark.parametrize("softmax", [True, False])
def test_region_decode_one_cell(softmax: bool) -> None:
    """get_region_box: x = (i + sigmoid(tx)) / W, w = exp(tw) * anchor / W (anchors in cells); the detection's
    objectness is 1 and its prob sigmoid(obj) * softmax(cls) (softmax=1) or * the raw cls (softmax=0)."""
    out = torch.zeros(1, 2 * 7, 2, 3)  # grid W=3, H=2 on a 96x64 input
    out[0, 7:14, 1, 2] = torch.tensor([_logit(0.25), _logit(0.75), math.log(2.0), math.log(0.5), _logit(0.8),
                                       math.log(3.0), 0.0])
    pred = YoloDecoder([_region(softmax=softmax)])([out], (96, 64))
    assert pred.shape == (1, 2 * 2 * 3, 7)
    row = pred[0, 1 * 6 + 1 * 3 + 2]
    cls = [0.8 * 0.75, 0.8 * 0.25] if softmax else [0.8 * math.log(3.0), 0.0]
    expected = [(2 + 0.25) / 3 * 96, (1 + 0.75) / 2 * 64, 2.0 * 3.0 / 3 * 96, 0.5 * 0.5 / 2 * 64, 1.0, *cls]
    torch.testing.assert_close(row, torch.tensor(expected), atol=1e-4, rtol=1e-5)
    # anchor 0 at cell (0, 0), all zeros: centre of the cell, the anchor's size, prob 0.5 * 0.5 (softmax)
    zero_cls = [0.25, 0.25] if softmax else [0.0, 0.0]
    torch.testing.assert_close(pred[0, 0], torch.tensor([0.5 * 32, 0.5 * 32, 1.5 * 32, 2.0 * 32, 1.0, *zero_cls]))


def test_gaussian_decode_one_cell() -> None:
    """get_gaussian_yolo_detections: the box from the mus as [yolo]; score obj * cls * (1 - mean(sigmoid sigmas))."""
    head = _head(kind="gaussian_yolo")
    out = torch.zeros(1, 2 * 11, 1, 2)  # grid W=2, H=1 on a 64x32 input
    sig = [0.1, 0.2, 0.3, 0.6]  # mean 0.3
    out[0, 11:22, 0, 1] = torch.tensor([_logit(0.25), _logit(sig[0]), _logit(0.5), _logit(sig[1]), math.log(2.0),
                                        _logit(sig[2]), math.log(0.5), _logit(sig[3]), _logit(0.9), _logit(0.2),
                                        _logit(0.6)])
    pred = YoloDecoder([head])([out], (64, 32))
    assert pred.shape == (1, 2 * 2, 7)
    row = pred[0, 2 + 1]
    expected = [(1 + 0.25) * 32, 0.5 * 32, 2.0 * 30, 0.5 * 40, 0.9, 0.2 * 0.7, 0.6 * 0.7]
    torch.testing.assert_close(row, torch.tensor(expected), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("softmax, sqrt", [(False, True), (True, False)])
def test_detection_decode_one_cell(softmax: bool, sqrt: bool) -> None:
    """get_detection_detections on the flat layout [classes per cell | conf per box | 4 coords per box]:
    x = (tx + col) / side, w = tw^2 (sqrt=1) or tw, prob = conf * cls, objectness 1 (no threshold)."""
    side, classes, num = 2, 3, 2
    spec = DetectionSpec(layer=0, classes=classes, num=num, coords=4, side=side, softmax=softmax, sqrt=sqrt, stride=32)
    cells = side * side
    flat = torch.zeros(cells * (classes + num * 5))
    cell, box = 2, 1  # row 1, col 0
    flat[cell * classes:(cell + 1) * classes] = torch.tensor([0.5, -2.0, 1.0])
    flat[cells * classes + cell * num + box] = -0.4
    coords = cells * (classes + num) + (cell * num + box) * 4
    flat[coords:coords + 4] = torch.tensor([0.25, 0.5, 0.6, 0.3])
    pred = YoloDecoder([spec])([flat.reshape(1, -1, 1, 1)], (64, 96))
    assert pred.shape == (1, cells * num, 5 + classes)
    row = pred[0, cell * num + box]
    cls = torch.tensor([0.5, -2.0, 1.0])
    cls = cls.softmax(0) if softmax else cls
    wh = [0.36, 0.09] if sqrt else [0.6, 0.3]
    expected = torch.tensor([(0 + 0.25) / 2 * 64, (1 + 0.5) / 2 * 96, wh[0] * 64, wh[1] * 96, 1.0, *(-0.4 * cls)])
    torch.testing.assert_close(row, expected, atol=1e-4, rtol=1e-5)


def test_undecodable_heads_are_refused_clearly(tmp_path, monkeypatch) -> None:
    with pytest.raises(DecodeError, match="coords=5"):
        YoloDecoder([_region(coords=5)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DecodeError, match="tree=data/9k.tree: the file is not found"):
        YoloDecoder([_region(tree="data/9k.tree")])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "9k.tree").write_text("n00002452 -1\n")
    with pytest.raises(DecodeError, match="softmax_tree"):
        YoloDecoder([_region(tree="data/9k.tree")])
