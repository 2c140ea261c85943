"""End-to-end training (tools/train.py): overfitting from scratch, Darknet/OpenCV export, exact resume, and
surviving Ctrl-C and SIGKILL."""

from __future__ import annotations

import csv
import importlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT, randomize
from yolodet.cfg.edit import set_classes
from yolodet.modeling.checkpoint import CheckpointError, load_checkpoint, load_model
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights

CFG = FIXTURES / "overfit.cfg"  # 64x64, 2 classes, 2 heads
TRAIN = ROOT / "tools" / "train.py"


def make_shapes_dataset(root: Path, n: int = 8, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """A Darknet-layout dataset (``.data``, names, image list, YOLO txt labels) of ``n`` noisy grey images with
    1-3 non-overlapping shapes: class 0 = red rectangle, class 1 = blue ellipse. Returns the ``.data`` path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        img = rng.integers(90, 160, (h, w, 3)).astype(np.uint8)
        boxes, lines = [], []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(16, 40)), int(rng.integers(16, 40))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if any(x0 < o[2] and o[0] < x0 + bw and y0 < o[3] and o[1] < y0 + bh for o in boxes):
                continue
            boxes.append((x0, y0, x0 + bw, y0 + bh))
            c = int(rng.integers(0, 2))
            if c == 0:
                cv2.rectangle(img, (x0, y0), (x0 + bw - 1, y0 + bh - 1), (230, 40, 40), -1)
            else:
                cv2.ellipse(img, (x0 + bw // 2, y0 + bh // 2), (bw // 2, bh // 2), 0, 0, 360, (40, 60, 230), -1)
            lines.append(f"{c} {(x0 + bw / 2) / w:.6f} {(y0 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        path = root / "images" / f"{i}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        (root / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    (root / "list.txt").write_text("\n".join(paths) + "\n")
    (root / "shapes.names").write_text("rectangle\nellipse\n")
    data = root / "shapes.data"
    data.write_text(f"classes=2\ntrain={root / 'list.txt'}\nvalid={root / 'list.txt'}\nnames={root / 'shapes.names'}\n")
    return data


def _train_main(argv: list[str]) -> int:
    """tools/train.py main() in this process, on one thread (tiny models: threads only add overhead, and a busy
    machine makes extra OpenMP threads very slow); the thread count is restored afterwards."""
    sys.path.insert(0, str(TRAIN.parent))
    try:
        train = importlib.import_module("train")
    finally:
        sys.path.pop(0)
    threads = torch.get_num_threads()
    try:
        return train.main(train.get_args_parser().parse_args([str(a) for a in [*argv, "--threads", 1]]))
    finally:
        torch.set_num_threads(threads)


def _history(run: Path) -> list[dict[str, float]]:
    with open(run / "results.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory) -> Path:
    """From scratch, no augmentation, 8 images, 400 steps of 8: the run folder."""
    root = tmp_path_factory.mktemp("overfit")
    data = make_shapes_dataset(root / "data")
    run = root / "run"
    rc = _train_main(["--cfg", CFG, "--data", data, "--output", run, "--max-batches", 400, "--steps", 200, 300,
                      "--workers", 0, "--eval-interval", 100, "--no-augment", "--no-progress"])
    assert rc == 0
    return run


def test_overfits_a_handful_of_images_from_scratch(overfit_run: Path) -> None:
    history = _history(overfit_run)
    assert history[-1]["step"] == 400
    assert history[-1]["ap50"] >= 0.9, [(r["step"], r["ap50"]) for r in history if not math.isnan(r["ap50"])]
    for part in ("box", "obj", "cls", "total"):
        values = [r[part] for r in history]
        assert all(math.isfinite(v) for v in values), part
        first, last = np.mean(values[:20]), np.mean(values[-20:])
        assert last < 0.1 * first, (part, first, last)
    assert (overfit_run / "results.png").stat().st_size > 1000
    for name in ("last.pt", "best.pt", "best.weights", "final.weights"):
        assert (overfit_run / name).is_file(), name


def test_finetuned_weights_match_in_opencv(tmp_path: Path) -> None:
    """Fine-tune a 2-class model from "COCO-like" 7-class weights, then read final.weights with OpenCV."""
    data = make_shapes_dataset(tmp_path / "data", n=4)
    source = randomize(Darknet.from_cfg_text(set_classes(CFG.read_text(), 7)), seed=0)
    save_darknet_weights(source, tmp_path / "seven.weights")
    run = tmp_path / "run"
    assert _train_main(["--cfg", CFG, "--data", data, "--weights", tmp_path / "seven.weights", "--output", run,
                        "--epochs", 3, "--batch-size", 4, "--lr", 0.001, "--freeze", 4, "--eval-interval", 0,
                        "--workers", 0, "--no-progress", "--quiet"]) == 0
    model = load_model(None, run / "last.pt")  # eval mode: BN running statistics, as in the .weights file
    assert not torch.equal(model.layers[6].conv.weight, source.layers[6].conv.weight)  # it did train
    assert torch.equal(model.layers[2].conv.weight, source.layers[2].conv.weight)  # frozen
    (tmp_path / "model.cfg").write_text(model.cfg_text)
    net = cv2.dnn.readNetFromDarknet(str(tmp_path / "model.cfg"), str(run / "final.weights"))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    net.setInput(x.numpy())  # OpenCV's Darknet importer runs batch size 1
    theirs = net.forward([f"conv_{h.layer - 1}" for h in model.heads])
    with torch.no_grad():
        ours = model(x)
    for a, b in zip(ours, theirs):
        assert np.asarray(b).std() > 0.02  # freshly initialised heads are small, but far from degenerate
        np.testing.assert_allclose(a.numpy().reshape(-1), np.asarray(b).reshape(-1), atol=1e-3)


def test_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=6)
    (tmp_path / "data" / "images" / "5.png").write_bytes(b"corrupt")  # skipped and logged, never a crash
    common = ["--cfg", CFG, "--data", data, "--workers", 0, "--epochs", 3, "--batch-size", 4, "--subdivisions", 2,
              "--eval-interval", 0, "--multi-scale", "--no-progress", "--quiet", "--seed", 3]
    assert _train_main([*common, "--output", tmp_path / "straight"]) == 0
    assert _train_main([*common, "--output", tmp_path / "split", "--stop-after-steps", 3]) == 130
    state = load_checkpoint(tmp_path / "split" / "last.pt")["run_state"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 1, 2)  # mid-epoch
    assert _train_main(["--resume", "--output", tmp_path / "split", "--workers", 0]) == 0
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["run_state"]["step"] == b["run_state"]["step"] == 6
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_wrong_class_count_is_reported(tmp_path: Path, caplog) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=2)
    cfg = tmp_path / "three.cfg"
    cfg.write_text(CFG.read_text().replace("classes=2", "classes=3").replace("filters=21", "filters=24"))
    assert _train_main(["--cfg", cfg, "--data", data, "--output", tmp_path / "run", "--workers", 0]) == 2
    assert "yolodet make-cfg" in caplog.text


def _loadable_step(path: Path) -> int | None:
    """Step of the checkpoint at ``path`` (None when absent); fails the test if it exists but cannot be read."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path)["run_state"]["step"]
    except CheckpointError:
        if not path.exists():  # replaced between exists() and open(): rename is atomic, retry
            return None
        raise


def _wait_for_step(proc: subprocess.Popen, path: Path, above: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = _loadable_step(path)
        if step is not None and step > above:
            return step
        assert proc.poll() is None, f"training ended early (rc {proc.returncode})"
        time.sleep(0.01)
    raise AssertionError("no checkpoint in time")


def test_ctrl_c_and_sigkill_then_resume_reach_the_same_step(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=8)
    out = tmp_path / "run"
    epochs, steps_per_epoch = 300, 2  # long enough that the resumed run cannot finish before the SIGKILL
    cmd = [sys.executable, str(TRAIN), "--cfg", str(CFG), "--data", str(data), "--output", str(out),
           "--epochs", str(epochs), "--batch-size", "4", "--eval-interval", "0", "--no-progress", "--quiet",
           "--workers", "1", "--threads", "1"]
    ckpt = out / "last.pt"
    proc = subprocess.Popen(cmd)
    try:
        first = _wait_for_step(proc, ckpt, 0)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: finish the step, save, exit 130
        assert proc.wait(60) == 130
        interrupted = _loadable_step(ckpt)
        assert interrupted >= first
        proc = subprocess.Popen([sys.executable, str(TRAIN), "--resume", "--output", str(out), "--workers", "1",
                                 "--threads", "1", "--no-progress", "--quiet"])
        killed_after = _wait_for_step(proc, ckpt, interrupted)
        for _ in range(30):  # the file stays loadable while it is being replaced every epoch
            assert _loadable_step(ckpt) >= killed_after
            time.sleep(0.01)
        assert proc.poll() is None, "training ended before SIGKILL"
        proc.kill()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _loadable_step(ckpt) < epochs * steps_per_epoch
    done = subprocess.run([sys.executable, str(TRAIN), "--resume", "--output", str(out), "--workers", "0",
                           "--threads", "1", "--no-progress", "--quiet"], timeout=300)
    assert done.returncode == 0
    assert load_checkpoint(ckpt)["run_state"]["step"] == epochs * steps_per_epoch
    history = _history(out)
    assert history[-1]["epoch"] == epochs and (out / "final.weights").is_file()
