"""kill -9 at random moments of a training run (``python tools/train.py`` as a subprocess, on the fixture data):
after every kill ``last.pt`` loads with ``weights_only=True``, ``--resume`` continues from it, and the run that was
killed five times ends with exactly the weights of a run that never was."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT
from test_train import make_shapes_dataset
from yolodet.modeling.checkpoint import CheckpointError, load_checkpoint

TRAIN = ROOT / "tools" / "train.py"
EPOCHS, STEPS_PER_EPOCH = 40, 2  # 8 images, batch 4
KILLS = 5


def _step(path: Path) -> int | None:
    """Step of ``path`` read with ``weights_only=True`` (None when absent). A file that exists must load."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    assert raw["format"] == "yolodet-checkpoint"
    try:
        return load_checkpoint(path)["run_state"]["step"]
    except CheckpointError:
        if not path.exists():  # replaced between the two reads: the rename is atomic
            return _step(path)
        raise


def _wait_for_step(proc: subprocess.Popen, path: Path, above: int, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            step = _step(path)
        except (EOFError, RuntimeError):  # torch.load racing the rename on some filesystems
            step = None
        if step is not None and step > above:
            return step
        assert proc.poll() is None, f"training ended early (rc {proc.returncode})"
        time.sleep(0.005)
    raise AssertionError("no new checkpoint in time")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=8)
    common = ["--epochs", str(EPOCHS), "--batch-size", "4", "--eval-interval", "0", "--no-progress", "--quiet",
              "--workers", "0", "--threads", "1", "--seed", "7"]
    start = [sys.executable, str(TRAIN), "--cfg", str(FIXTURES / "overfit.cfg"), "--data", str(data), *common]
    straight = subprocess.run([*start, "--output", str(tmp_path / "straight")], timeout=600)
    assert straight.returncode == 0
    out = tmp_path / "killed"
    ckpt = out / "last.pt"
    resume = [sys.executable, str(TRAIN), "--resume", "--output", str(out), "--workers", "0", "--threads", "1",
              "--no-progress", "--quiet"]
    rng = np.random.default_rng(16)
    step, steps = 0, []
    for k in range(KILLS):
        proc = subprocess.Popen([*start, "--output", str(out)] if k == 0 else resume)
        try:
            # "continues from it": the first checkpoint of a resumed run is past the one it resumed
            step = _wait_for_step(proc, ckpt, step)
            time.sleep(float(rng.uniform(0, 0.25)))  # somewhere in a step, an epoch end or a save
            assert proc.poll() is None, "training ended before SIGKILL"
            proc.kill()
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(60)
        after = _step(ckpt)  # loads with weights_only=True, whatever the moment of the kill
        assert after is not None and step <= after < EPOCHS * STEPS_PER_EPOCH
        steps.append(after)
        step = after
    assert steps == sorted(steps)
    done = subprocess.run(resume, timeout=600)
    assert done.returncode == 0
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(ckpt)
    assert a["run_state"]["step"] == b["run_state"]["step"] == EPOCHS * STEPS_PER_EPOCH
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
