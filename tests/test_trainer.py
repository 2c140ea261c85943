"""yolodet.training.train: training as a library call (no argparse), and the CLI and the tools/ shim training
alike from the same arguments."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, ROOT
from test_train import make_shapes_dataset
from yolodet.modeling.checkpoint import load_checkpoint
from yolodet.training import TrainConfig, TrainError, TrainSummary, train

CFG = FIXTURES / "overfit.cfg"
TIMING = {"img_per_s", "train_seconds"}  # wall-clock columns: differ between any two runs


def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


def test_train_is_a_library_call(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=4)
    threads = _one_thread()
    try:
        summary = train(TrainConfig(cfg=str(CFG), data=str(data), output=str(tmp_path / "run"), max_batches=4,
                                    batch_size=2, subdivisions=1, workers=0, device="cpu", eval_interval=1,
                                    augment=False, progress=False))
    finally:
        torch.set_num_threads(threads)
    assert isinstance(summary, TrainSummary) and not summary.interrupted
    assert summary.steps == 4 and summary.epochs == 2 and len(summary.history) == 2
    assert summary.last == tmp_path / "run" / "last.pt" and summary.last.is_file()
    assert not math.isnan(summary.final_ap50) and summary.best_ap50 == max(r["ap50"] for r in summary.history)
    assert summary.weights and all(p.is_file() for p in summary.weights)
    ckpt = load_checkpoint(summary.last)
    assert ckpt["args"]["max_batches"] == 4 and "output" not in ckpt["args"]  # machine settings are not saved


def test_resume_continues_a_library_run(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=4)
    config = TrainConfig(cfg=str(CFG), data=str(data), output=str(tmp_path / "run"), max_batches=4, batch_size=2,
                         workers=0, device="cpu", eval_interval=0, augment=False, progress=False)
    threads = _one_thread()
    try:
        first = train(TrainConfig(**{**vars(config), "stop_after_steps": 2}))
        assert first.interrupted and first.steps == 2
        resumed = train(TrainConfig(resume="auto", output=str(tmp_path / "run"), workers=0, device="cpu",
                                    progress=False))
    finally:
        torch.set_num_threads(threads)
    assert resumed.steps == 4 and not resumed.interrupted


def test_bad_configs_are_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="needs a cfg and a dataset"):
        train(TrainConfig(cfg=str(CFG)))
    data = make_shapes_dataset(tmp_path / "data", n=2)
    with pytest.raises(TrainError, match="multiple of subdivisions"):
        train(TrainConfig(cfg=str(CFG), data=str(data), batch_size=3, subdivisions=2, workers=0, device="cpu",
                          output=str(tmp_path / "run")))
    assert not (tmp_path / "run" / "last.pt").exists()


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_cli_and_tools_shim_give_the_same_results_csv(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=4)
    args = ["--cfg", str(CFG), "--data", str(data), "--max-batches", "3", "--batch-size", "2", "--workers", "0",
            "--device", "cpu", "--threads", "1", "--seed", "3", "--no-progress", "--quiet"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    runs = {"cli": [sys.executable, "-m", "yolodet", "train"],
            "tool": [sys.executable, str(ROOT / "tools" / "train.py")]}
    for name, command in runs.items():
        res = subprocess.run([*command, *args, "--output", str(tmp_path / name)], capture_output=True, text=True,
                             env=env, timeout=600)
        assert res.returncode == 0, res.stderr
    cli, tool = _csv(tmp_path / "cli" / "results.csv"), _csv(tmp_path / "tool" / "results.csv")
    assert len(cli) == 2 and cli == tool
