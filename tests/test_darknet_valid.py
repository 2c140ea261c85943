"""Detection for detection against ``darknet detector valid`` (AlexeyAB's C program, ``../shared/oracle``).

coco128, official yolov3-tiny weights, AlexeyAB's ``valid`` protocol (thresh 0.001, NMS 0.6), three settings:
plain resize, ``letter_box=1`` in the cfg (``valid`` ignores the ``-letter_box`` flag), and ``nms_kind=diounms``
with ``beta_nms=0.6`` in every ``[yolo]`` (``diounms_sort``, its DIoU term on original-image pixels). A Darknet
detection matches a yolodet one of the same image and class with IoU > 0.99 and |score difference| < 1e-3 (one to
one); at least 99.5% of each side's detections must match. Slow: Darknet C runs 3 x 128 images without SIMD
(minutes on two shared cores).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from conftest import COCO128, OFFICIAL_TINY, SHARED, need_shared
from yolodet.data.images import read_image_stb, stb_available
from yolodet.evaluation.protocols import get_protocol
from yolodet.inference.detector import Detector

SETTINGS = {
    "resize": lambda text: text,
    "letterbox": lambda text: text.replace("[net]", "[net]\nletter_box=1", 1),
    "diounms": lambda text: text.replace("[yolo]", "[yolo]\nnms_kind=diounms\nbeta_nms=0.6"),
}
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
            60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def _darknet_valid(oracle, cfg: Path, images: list[Path], workdir: Path) -> list[dict]:
    exe = oracle.darknet_executable()
    (workdir / "valid.txt").write_text("".join(f"{p}\n" for p in images))
    (workdir / "results").mkdir(exist_ok=True)
    (workdir / "coco.data").write_text(
        f"classes=80\nvalid={workdir / 'valid.txt'}\nnames={SHARED / 'data' / 'darknet-cfg' / 'coco.names'}\n"
        f"results={workdir / 'results'}\neval=coco\n")
    p = subprocess.run([exe, "detector", "valid", str(workdir / "coco.data"), str(cfg), str(OFFICIAL_TINY),
                        "-out", "dk"], cwd=workdir, capture_output=True, text=True, errors="replace", timeout=1800)
    out = workdir / "results" / "dk.json"
    assert p.returncode == 0 and out.exists(), p.stdout[-2000:] + p.stderr[-2000:]
    return json.loads(out.read_text())


def _yolodet(cfg: Path, images: list[Path]) -> list[dict]:
    protocol = get_protocol("alexeyab-valid")
    detector = Detector.from_cfg(cfg, OFFICIAL_TINY, optimize=False)
    out = []
    for path in images:
        [det] = detector.predict([read_image_stb(path)], conf_thres=protocol.conf_thres,
                                 nms_thres=protocol.nms_thres)
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            out.append({"image_id": int(path.stem), "category_id": COCO_IDS[label],
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    return out


def match_detections(ours: list[dict], theirs: list[dict]) -> int:
    """How many of ``theirs`` have a one-to-one partner in ``ours``: same image and category, IoU > 0.99,
    |score difference| < 1e-3."""
    def group(dets):
        g: dict[tuple[int, int], list[dict]] = {}
        for d in dets:
            g.setdefault((d["image_id"], d["category_id"]), []).append(d)
        return g

    def xyxy(dets):
        b = torch.tensor([d["bbox"] for d in dets], dtype=torch.float64)
        return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)

    a, b = group(ours), group(theirs)
    matched = 0
    for key, mine in a.items():
        other = b.get(key, [])
        if not other:
            continue
        iou = box_iou(xyxy(mine), xyxy(other)).numpy()
        sdiff = np.abs(np.array([d["score"] for d in mine])[:, None] - np.array([d["score"] for d in other])[None])
        ok = (iou > 0.99) & (sdiff < 1e-3)
        used = np.zeros(len(other), bool)
        for i in np.argsort(-iou.max(1)):
            cand = np.nonzero(ok[i] & ~used)[0]
            if len(cand):
                used[cand[np.argmax(iou[i, cand])]] = True
                matched += 1
    return matched


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
    theirs = _darknet_valid(oracle, cfg, images, tmp_path)
    ours = _yolodet(cfg, images)
    matched = match_detections(ours, theirs)
    print(f"{setting}: {matched} matched, Darknet {len(theirs)}, yolodet {len(ours)}")
    assert len(theirs) > 1000
    assert matched >= 0.995 * len(theirs) and matched >= 0.995 * len(ours), (
        f"{setting}: {matched} matched of Darknet's {len(theirs)} / yolodet's {len(ours)}")
