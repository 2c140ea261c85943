"""Detection for detection against ``darknet detector valid`` (AlexeyAB's C program, ``../shared/oracle``).

coco128, official yolov3-tiny weights, AlexeyAB's ``valid`` protocol (thresh 0.001, NMS 0.6), three settings:
plain resize, ``letter_box=1`` in the cfg (``valid`` ignores the ``-letter_box`` flag), and ``nms_kind=diounms``
with ``beta_nms=0.6`` in every ``[yolo]`` (``diounms_sort``, its DIoU term on original-image pixels). A Darknet
detection matches a yolodet one of the same image and class with IoU > 0.99 and |score difference| < 1e-3 (one to
one); at least 99.5% of each side's detections must match. Slow: Darknet C runs 3 x 128 images without SIMD
(minutes on two shared cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import COCO128, OFFICIAL_TINY, SHARED, need_shared
from detection_matching import darknet_valid, match_detections, yolodet_valid
from yolodet.data.images import stb_available

SETTINGS = {
    "resize": lambda text: text,
    "letterbox": lambda text: text.replace("[net]", "[net]\nletter_box=1", 1),
    "diounms": lambda text: text.replace("[yolo]", "[yolo]\nnms_kind=diounms\nbeta_nms=0.6"),
}


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_detections_match_darknet_detector_valid(setting: str, oracle, tmp_path: Path) -> None:
    images = sorted(need_shared(COCO128 / "images").glob("*.jpg"))
    base = need_shared(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg")
    need_shared(OFFICIAL_TINY)
    if not stb_available():
        pytest.skip("yolodet._stb_image is not built: Darknet's numbers need its decoder")
    cfg = tmp_path / f"yolov3-tiny-{setting}.cfg"
    cfg.write_text(SETTINGS[setting](base.read_text()))
    theirs = darknet_valid(oracle, cfg, OFFICIAL_TINY, images, tmp_path)
    ours = yolodet_valid(cfg, OFFICIAL_TINY, images)
    matched = match_detections(ours, theirs)
    print(f"{setting}: {matched} matched, Darknet {len(theirs)}, yolodet {len(ours)}")
    assert len(theirs) > 1000
    assert matched >= 0.995 * len(theirs) and matched >= 0.995 * len(ours), (
        f"{setting}: {matched} matched of Darknet's {len(theirs)} / yolodet's {len(ours)}")
