"""Tests for yolodet.boxes: hand-computed conversions and round trips."""

from __future__ import annotations

import pytest
import torch

from yolodet.inference.boxes import clip_xyxy, cxcywh_to_xyxy, xyxy_to_cxcywh, xyxy_to_xywh

XYXY = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 1.0, 1.0]])
CXCYWH = torch.tensor([[20.0, 40.0, 20.0, 40.0], [0.5, 0.5, 1.0, 1.0]])
XYWH = torch.tensor([[10.0, 20.0, 20.0, 40.0], [0.0, 0.0, 1.0, 1.0]])


def test_known_values() -> None:
    torch.testing.assert_close(xyxy_to_cxcywh(XYXY), CXCYWH)
    torch.testing.assert_close(cxcywh_to_xyxy(CXCYWH), XYXY)
    torch.testing.assert_close(xyxy_to_xywh(XYXY), XYWH)


def test_round_trip_any_leading_dims() -> None:
    boxes = cxcywh_to_xyxy(torch.rand(2, 5, 4, dtype=torch.float64) + torch.tensor([0.0, 0.0, 0.1, 0.1]))
    assert boxes.shape == (2, 5, 4)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


def test_inputs_not_modified_and_empty() -> None:
    boxes = XYXY.clone()
    out = xyxy_to_xywh(boxes)
    assert torch.equal(boxes, XYXY) and out.data_ptr() != boxes.data_ptr()
    assert xyxy_to_cxcywh(torch.zeros(0, 4)).shape == (0, 4)


def test_clip_xyxy() -> None:
    boxes = torch.tensor([[-5.0, 3.0, 700.0, 500.0], [1.0, 2.0, 3.0, 4.0]])
    clipped = clip_xyxy(boxes, 640, 480)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 3.0, 640.0, 480.0], [1.0, 2.0, 3.0, 4.0]]))
    assert boxes[0, 0] == -5.0  # input untouched


@pytest.mark.parametrize("fn", [cxcywh_to_xyxy, xyxy_to_cxcywh, xyxy_to_xywh])
def test_wrong_last_dim(fn) -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        fn(torch.zeros(3, 5))
