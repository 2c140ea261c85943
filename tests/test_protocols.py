"""The named COCO protocols: each Darknet program's candidate threshold and NMS IoU."""

from __future__ import annotations

import pytest

from yolodet.evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOLS, ProtocolError, get_protocol


def test_protocol_numbers_are_the_darknet_programs() -> None:
    assert (get_protocol("alexeyab-valid").conf_thres, get_protocol("alexeyab-valid").nms_thres) == (0.001, 0.6)
    assert (get_protocol("darknet-map").conf_thres, get_protocol("darknet-map").nms_thres) == (0.005, 0.45)
    assert (get_protocol("pjreddie-valid").conf_thres, get_protocol("pjreddie-valid").nms_thres) == (0.005, 0.45)
    assert DEFAULT_PROTOCOL in PROTOCOLS


def test_unknown_protocol_lists_the_names() -> None:
    with pytest.raises(ProtocolError, match="known: alexeyab-valid, darknet-map, pjreddie-valid"):
        get_protocol("valid")
