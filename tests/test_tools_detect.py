"""tools/detect.py end to end: outputs written, unreadable inputs reported and skipped, meaningful exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import FIXTURES, OFFICIAL_TINY, ROOT, need_shared, randomize
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights

DETECT = ROOT / "tools" / "detect.py"
SAMPLE = ROOT / "yolodet" / "assets" / "zebras.jpg"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DETECT), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """Random weights for the tiny fixture cfg, heads biased so some boxes pass the threshold."""
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=5)
    with torch.no_grad():
        for h in model.heads:
            model.layers[h.layer - 1].conv.bias.add_(2.0)
    path = tmp_path_factory.mktemp("w") / "tiny.weights"
    save_darknet_weights(model, path)
    return path


def test_bad_image_is_reported_and_skipped(tmp_path: Path, tiny_weights: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.jpg"), np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    cv2.imwrite(str(inputs / "b.png"), np.full((40, 40, 3), 200, np.uint8))
    (inputs / "broken.jpg").write_bytes(b"definitely not a jpeg")
    out = tmp_path / "out"
    res = run(str(inputs), "--cfg", str(FIXTURES / "tiny.cfg"), "--weights", str(tiny_weights), "--output", str(out),
              "--save-txt", "--conf-thres", "0.3")
    assert res.returncode == 1, res.stderr  # partial success
    assert "broken.jpg" in res.stderr
    data = json.loads((out / "detections.json").read_text())
    assert [Path(r["file"]).name for r in data["images"]] == ["a.jpg", "b.png"]
    assert [Path(f["file"]).name for f in data["failed"]] == ["broken.jpg"]
    assert (out / "a.jpg").is_file() and (out / "b.png").is_file()
    assert (out / "labels" / "a.txt").is_file()
    assert data["model"]["preprocess"] == "darknet-resize"
    for record in data["images"]:
        for d in record["detections"]:
            x1, y1, x2, y2 = d["box_xyxy"]
            assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
            assert d["name"] == f"class {d['class_id']}" and d["score"] > 0.3


def test_exit_codes_for_bad_invocations(tmp_path: Path, tiny_weights: Path) -> None:
    res = run(str(tmp_path / "missing.jpg"), "--cfg", str(FIXTURES / "tiny.cfg"), "--weights", str(tiny_weights),
              "--output", str(tmp_path / "o1"))
    assert res.returncode == 2 and "no such file" in res.stderr
    bad_cfg = tmp_path / "bad.cfg"
    bad_cfg.write_text("[net]\nwidth=64\nheight=64\n[convolutional]\nfilters=abc\n")
    res = run(str(SAMPLE), "--cfg", str(bad_cfg), "--weights", str(tiny_weights), "--output", str(tmp_path / "o2"))
    assert res.returncode == 2 and "bad.cfg:5" in res.stderr and "Traceback" not in res.stderr
    res = run(str(SAMPLE), "--cfg", str(FIXTURES / "tiny.cfg"), "--weights", str(OFFICIAL_TINY if OFFICIAL_TINY.exists()
              else SAMPLE), "--output", str(tmp_path / "o3"))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_video_input(tmp_path: Path, tiny_weights: Path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    res = run(str(video), "--cfg", str(FIXTURES / "tiny.cfg"), "--weights", str(tiny_weights), "--output", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "detections.json").read_text())
    assert [r["frame"] for r in data["images"]] == [0, 1, 2, 3]
    assert (out / "clip.mp4").is_file()


def test_sample_with_official_weights(tmp_path: Path) -> None:
    """The README demo path: the bundled sample with yolov3-tiny finds the zebras."""
    weights = need_shared(OFFICIAL_TINY)
    out = tmp_path / "out"
    res = run("--weights", str(weights), "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert "zebra: 96%" in res.stdout
    names = [d["name"] for d in json.loads((out / "detections.json").read_text())["images"][0]["detections"]]
    assert names.count("zebra") == 4
    assert (out / "zebras.jpg").is_file()
