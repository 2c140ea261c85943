"""Decode against values computed by hand from Darknet's formulas (yolo_layer.c)."""

from __future__ import annotations

import math

import pytest
import torch

from yolodet.modeling.blocks.yolo import HeadSpec
from yolodet.inference.decode import YoloDecoder


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
