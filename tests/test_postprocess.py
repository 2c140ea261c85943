"""Darknet's candidate rule (obj > thresh, then each class with obj*cls > thresh) and per-class NMS."""

from __future__ import annotations

import pytest
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


# -- nms_kind (AlexeyAB's diounms_sort) ---------------------------------------------------------------------------
def _two_boxes() -> torch.Tensor:
    """Two same-class boxes 20x20 shifted by 8 px: IoU = 12*20 / (800 - 240) = 0.4286, centre distance^2 = 64,
    enclosing diagonal^2 = 28^2 + 20^2 = 1184."""
    return torch.tensor([[_row(50, 50, 20, 20, 1.0, 0.9), _row(58, 50, 20, 20, 1.0, 0.8)]])


def test_default_nms_is_iou() -> None:
    iou = 240 / 560
    [det] = postprocess(_two_boxes(), conf_thres=0.25, nms_thres=iou - 0.01)
    assert len(det) == 1
    [det] = postprocess(_two_boxes(), conf_thres=0.25, nms_thres=iou + 0.01)
    assert len(det) == 2


def test_diounms_subtracts_the_centre_distance_term() -> None:
    iou, ratio = 240 / 560, 64 / 1184
    for beta in (0.6, 1.0):
        metric = iou - ratio ** beta  # Darknet's box_diounms
        [det] = postprocess(_two_boxes(), conf_thres=0.25, nms_thres=metric - 0.01, nms_kind="diounms",
                            beta_nms=beta)
        assert len(det) == 1, beta
        [det] = postprocess(_two_boxes(), conf_thres=0.25, nms_thres=metric + 0.01, nms_kind="diounms",
                            beta_nms=beta)
        assert len(det) == 2, beta
    # between DIoU and IoU: default suppresses, diounms keeps both
    between = iou - ratio ** 0.6 / 2
    assert len(postprocess(_two_boxes(), conf_thres=0.25, nms_thres=between)[0]) == 1
    assert len(postprocess(_two_boxes(), conf_thres=0.25, nms_thres=between, nms_kind="diounms")[0]) == 2


def test_greedynms_uses_exponent_0_6_whatever_beta() -> None:
    metric = 240 / 560 - (64 / 1184) ** 0.6  # box_diou: the exponent is fixed at 0.6
    for beta in (0.3, 1.0):
        [det] = postprocess(_two_boxes(), conf_thres=0.25, nms_thres=metric - 0.01, nms_kind="greedynms",
                            beta_nms=beta)
        assert len(det) == 1
        [det] = postprocess(_two_boxes(), conf_thres=0.25, nms_thres=metric + 0.01, nms_kind="greedynms",
                            beta_nms=beta)
        assert len(det) == 2


def _shifted_in_y() -> torch.Tensor:
    """Two same-class 20x20 boxes in network pixels, the second 8 px lower: IoU = 240 / 560."""
    return torch.tensor([[_row(50, 50, 20, 20, 1.0, 0.9), _row(50, 58, 20, 20, 1.0, 0.8)]])


# plain resize of a 200x100 image to 100x100 (x scaled by 2), and its letterbox (content 100x50 at pad_y 25)
RESIZED = Mapping(orig_w=200, orig_h=100, net_w=100, net_h=100, new_w=100, new_h=100, pad_x=0, pad_y=0)
BOXED = Mapping(orig_w=200, orig_h=100, net_w=100, net_h=100, new_w=100, new_h=50, pad_x=0, pad_y=25)
SQUARE = 240 / 560 - (64 / 1184) ** 0.6  # in network pixels: d^2 = 8^2, c^2 = 20^2 + 28^2
DIOU_IN_UNITS = {
    # original pixels: boxes 40x20, dy = 8: d^2 = 64, c^2 = 40^2 + 28^2
    (RESIZED, "pixels"): 240 / 560 - (64 / 2384) ** 0.6,
    (RESIZED, "fractions"): SQUARE,  # both axes / 100
    (BOXED, "pixels"): SQUARE,  # both axes x 2
    # fractions: boxes 0.2 x 0.4, dy = 8/50: d^2 = 0.0256, c^2 = 0.2^2 + 0.56^2
    (BOXED, "fractions"): 240 / 560 - (0.0256 / 0.3536) ** 0.6,
}


@pytest.mark.parametrize("mapping, units", list(DIOU_IN_UNITS), ids=["resize-pixels", "resize-fractions",
                                                                   "letterbox-pixels", "letterbox-fractions"])
def test_diou_term_is_computed_in_the_units_asked(mapping: Mapping, units: str) -> None:
    """``detector valid`` computes DIoU on original-image pixels, ``test``/``map`` on fractions of the image: a
    per-axis scale changes ``d^2 / c^2``. The pair is suppressed just below the metric, kept just above it."""
    metric = DIOU_IN_UNITS[mapping, units]
    for thresh, expected in ((metric - 0.005, 1), (metric + 0.005, 2)):
        [det] = postprocess(_shifted_in_y(), conf_thres=0.25, nms_thres=thresh, nms_kind="diounms",
                            mappings=[mapping], diou_units=units)
        assert len(det) == expected, (thresh, expected)


def test_diou_units_default_to_detector_valid_and_are_checked() -> None:
    thresh = (DIOU_IN_UNITS[RESIZED, "pixels"] + SQUARE) / 2  # pixels suppress, fractions keep both
    [det] = postprocess(_shifted_in_y(), conf_thres=0.25, nms_thres=thresh, nms_kind="diounms", mappings=[RESIZED])
    assert len(det) == 1
    with pytest.raises(ValueError, match="diou_units"):
        postprocess(_shifted_in_y(), nms_kind="diounms", diou_units="relative")


def test_nms_kind_comes_from_the_last_head() -> None:
    from yolodet.inference.postprocess import nms_settings
    from yolodet.modeling.model import Darknet

    text = ("[net]\nwidth=32\nheight=32\n[convolutional]\nfilters=18\nsize=1\n[yolo]\nmask=0,1,2\nclasses=1\n"
            "anchors=1,1,2,2,3,3\nnms_kind=diounms\nbeta_nms=0.7\n")
    assert nms_settings(Darknet.from_cfg_text(text).heads) == ("diounms", 0.7)
    cornered = Darknet.from_cfg_text(text.replace("diounms", "cornersnms"))  # parse_yolo: unknown -> default
    assert nms_settings(cornered.heads)[0] == "default"
