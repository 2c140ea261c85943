"""yolodet.inference.predict and the detect subcommand on every kind of source: files, folders, videos, cameras
and network streams (a real MJPEG-over-HTTP server on 127.0.0.1), with bounded live capture, --max-frames, and
clear errors for sources that cannot be opened."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import FIXTURES, randomize
from yolodet.cli.main import main
from yolodet.inference.detector import Detector
from yolodet.inference.predict import Frame, predict
from yolodet.inference.sources import LiveCapture, MediaInput, SourceError, expand_sources
from yolodet.inference.writers import DetectionWriter
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights

TINY_CFG = FIXTURES / "tiny.cfg"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "tiny.weights"
    save_darknet_weights(randomize(Darknet.from_cfg(TINY_CFG)), path)
    return path


@pytest.fixture(scope="module")
def detector(tiny_weights: Path) -> Detector:
    return Detector.from_cfg(TINY_CFG, tiny_weights, device="cpu")


def _image(path: Path, seed: int, size=(96, 80)) -> Path:
    """Noise (no tied scores between cells, unlike a flat image)."""
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return path


def _video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path


class _MJPEGServer:
    """Serves ``frames`` JPEG frames as multipart/x-mixed-replace on 127.0.0.1, then drops the connection (a
    camera that dies mid-stream)."""

    def __init__(self, frames: int) -> None:
        count = frames

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for i in range(count):
                    ok, buf = cv2.imencode(".jpg", np.full((48, 64, 3), 30 * i % 255, np.uint8))
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                     % len(buf) + buf.tobytes() + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.02)

            def log_message(self, *args) -> None:
                pass

        self.server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        self.thread = threading.Thread(target=self.server.handle_request, daemon=True)

    def __enter__(self) -> "_MJPEGServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(timeout=10)
        self.server.server_close()


def test_expand_sources_knows_cameras_and_streams(tmp_path: Path) -> None:
    img = _image(tmp_path / "a.png", 100)
    inputs, problems = expand_sources([str(img), "0", "rtsp://cam.local/live", "https://x/y.mjpg", "nope.jpg"])
    assert [(i.kind, i.name) for i in inputs] == [("image", str(img)), ("camera", "0"),
                                                  ("stream", "rtsp://cam.local/live"), ("stream", "https://x/y.mjpg")]
    assert problems == ["nope.jpg: no such file or folder"]
    assert inputs[2].stem == "cam.local_live" and inputs[1].stem == "camera0"


def test_predict_yields_one_frame_per_image_and_video_frame(tiny_weights: Path, tmp_path: Path) -> None:
    detector = Detector.from_cfg(TINY_CFG, tiny_weights, device="cpu", optimize=False)  # one network for both
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        _image(folder / f"{i}.png", 60 * i)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    video = _video(tmp_path / "clip.mp4", 5)
    frames = list(predict(detector, [str(folder), str(video), "missing.png"], batch_size=1, workers=0,
                          max_frames=4))
    errors = [f for f in frames if f.error]
    assert sorted(f.source for f in errors) == sorted(["missing.png", str(folder / "broken.jpg")])
    images = [f for f in frames if not f.error and f.index is None]
    assert len(images) == 3 and all(f.size == (96, 80) and f.image.shape == (80, 96, 3) for f in images)
    video_frames = [f for f in frames if f.index is not None]
    assert [f.index for f in video_frames] == [0, 1, 2, 3]  # --max-frames 4 of 5
    # the same as the Detector itself on the same pixels (batch 1 both: oneDNN's choice of kernel depends on it)
    direct = detector.predict([f.image for f in images], batch_size=1)
    for frame, det in zip(images, direct):
        assert torch.equal(frame.detections.boxes, det.boxes) and torch.equal(frame.detections.labels, det.labels)


def test_the_network_is_built_before_the_first_frame_is_timed(tiny_weights: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    """A frame's ``ms`` ("Predicted in") is the network's time: the optimised copy (int8: with its calibration)
    exists before the first forward, not made inside it."""
    detector = Detector.from_cfg(TINY_CFG, tiny_weights, device="cpu", precision="bf16")
    built_first = []
    infer = Detector.infer
    monkeypatch.setattr(Detector, "infer", lambda self, *a, **k: (built_first.append(self.optimized is not None),
                                                                  infer(self, *a, **k))[1])
    frames = list(predict(detector, [str(_image(tmp_path / "a.png", 1))], workers=0))
    assert len(frames) == 1 and frames[0].error is None and built_first == [True]


def test_unopenable_camera_and_stream_are_source_errors() -> None:
    with pytest.raises(SourceError, match="cannot open camera 7: no such camera"):
        LiveCapture(MediaInput(None, "camera", "7"))
    with pytest.raises(SourceError, match="cannot open stream http://127.0.0.1:9/x.mjpg"):
        LiveCapture(MediaInput(None, "stream", "http://127.0.0.1:9/x.mjpg"))


@pytest.mark.parametrize("source", ["7", "http://127.0.0.1:9/x.mjpg"])
def test_detect_on_a_source_that_cannot_open_exits_2(source: str, tiny_weights: Path, tmp_path: Path,
                                                      caplog) -> None:
    argv = ["detect", source, "--cfg", str(TINY_CFG), "--weights", str(tiny_weights), "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "cannot open" in caplog.text and "Traceback" not in caplog.text
    assert json.loads((tmp_path / "detections.json").read_text())["images"] == []


def test_a_stream_that_dies_keeps_the_frames_so_far(tiny_weights: Path, tmp_path: Path) -> None:
    with _MJPEGServer(frames=6) as server:
        argv = ["detect", server.url, "--cfg", str(TINY_CFG), "--weights", str(tiny_weights), "--output",
                str(tmp_path), "--save-txt"]
        assert main(argv) == 0
    records = json.loads((tmp_path / "detections.json").read_text())["images"]
    assert 1 <= len(records) <= 6 and [r["frame"] for r in records] == list(range(len(records)))
    assert all(r["file"] == server.url for r in records)
    video = next(tmp_path.glob("*.mp4"))
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(records)
    cap.release()
    assert len(list((tmp_path / "labels").glob("*.txt"))) == len(records)
    assert not list(tmp_path.glob(".*.tmp.mp4"))


def test_live_capture_keeps_only_the_newest_frame() -> None:
    """A consumer slower than the stream gets the newest frames and the rest are dropped, not queued."""
    with _MJPEGServer(frames=12) as server:
        with LiveCapture(MediaInput(None, "stream", server.url)) as capture:
            got = 0
            for _ in capture:
                got += 1
                time.sleep(0.1)  # five stream frames arrive per frame taken
        assert got + capture.dropped == 12 and capture.dropped > 0


def test_max_frames_ends_a_live_source(tiny_weights: Path, tmp_path: Path) -> None:
    with _MJPEGServer(frames=10) as server:
        argv = ["detect", server.url, "--cfg", str(TINY_CFG), "--weights", str(tiny_weights), "--output",
                str(tmp_path), "--max-frames", "2"]
        assert main(argv) == 0
    assert len(json.loads((tmp_path / "detections.json").read_text())["images"]) == 2


def test_writer_formats(detector: Detector, tmp_path: Path) -> None:
    img = _image(tmp_path / "x.png", 128)
    [frame] = [f for f in predict(detector, [str(img)], workers=0)]
    writer = DetectionWriter(tmp_path / "out", detector.names, save_txt=True)
    writer.add(frame)
    writer.add(Frame(MediaInput(Path("gone.jpg"), "image"), error="gone.jpg: no such file"))
    doc = json.loads(writer.close({"cfg": "tiny"}).read_text())
    assert doc["model"] == {"cfg": "tiny"}
    assert doc["failed"] == [{"file": "gone.jpg", "error": "gone.jpg: no such file"}]
    [record] = doc["images"]
    assert (record["width"], record["height"], record["frame"]) == (96, 80, None)
    lines = (tmp_path / "out" / "labels" / "x.txt").read_text().splitlines()
    assert len(lines) == len(record["detections"])
    assert (tmp_path / "out" / "x.png").is_file()
