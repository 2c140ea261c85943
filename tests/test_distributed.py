"""Runs under torchrun: 2 CPU processes (gloo, ports of 127.0.0.1 only) train to the same weights as 1 process
with the same global batch, also as two "nodes" with a c10d rendezvous, and resume; sharded evaluation gives
exactly the one-process AP; sharded detect the same detections.json."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import COCO128, FIXTURES, OFFICIAL_TINY, ROOT, need_shared
from test_train import make_shapes_dataset
from yolodet.data.train_dataset import TrainBatchSampler
from yolodet.distributed import World, shard
from yolodet.modeling.checkpoint import load_checkpoint
from yolodet.training.trainer import RankBatches

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _torchrun(nproc: int, argv: list[str], *, nnodes: int = 1, node_rank: int | None = None,
              endpoint: str | None = None, background: bool = False):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if endpoint is None:
        command += ["--master-addr=127.0.0.1", f"--master-port={_free_port()}"]
    else:
        command += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=yolodet-test",
                    f"--node-rank={node_rank}"]
    command += ["-m", "yolodet", *argv]
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())


def _single(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yolodet", *argv], capture_output=True, text=True, timeout=600,
                          env=_env())


@pytest.fixture(scope="module")
def plain_cfg(tmp_path_factory) -> Path:
    """The overfit fixture without BatchNorm: per-rank batch statistics would differ from one process's (torch's
    SyncBatchNorm runs on GPUs only), and the test is about gradients and sampling."""
    path = tmp_path_factory.mktemp("cfg") / "plain.cfg"
    path.write_text((FIXTURES / "overfit.cfg").read_text().replace("batch_normalize=1", "batch_normalize=0"))
    return path


def _train_args(cfg: Path, data: Path, out: Path, steps: int = 3) -> list[str]:
    return ["train", "--cfg", str(cfg), "--data", str(data), "--output", str(out), "--max-batches", str(steps),
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--threads", "1", "--no-augment",
            "--eval-interval", "0", "--no-progress", "--quiet", "--seed", "1"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        scale = a[key].abs().max().clamp_min(1e-12)
        assert (a[key] - b[key]).abs().max() / scale <= rtol, key


def test_rank_batches_partition_the_global_mini_batch() -> None:
    sampler = TrainBatchSampler(10, 4, size=(64, 64), seed=3)
    sampler.set_epoch(0)
    whole = list(sampler)
    parts = [list(RankBatches(sampler, World(r, 2))) for r in range(2)]
    for k, keys in enumerate(whole[:-1]):
        assert sorted(parts[0][k] + parts[1][k]) == sorted(keys)
    assert all(len(p[-1]) == 1 for p in parts)  # the last mini-batch has 2 images: one each
    assert shard(list(range(5)), World(1, 2)) == [1, 3]


def test_two_processes_train_like_one(plain_cfg: Path, tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=8)
    one = _single(_train_args(plain_cfg, data, tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = _torchrun(2, _train_args(plain_cfg, data, tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    _assert_same_weights(_weights(tmp_path / "one" / "last.pt"), _weights(tmp_path / "two" / "last.pt"))
    assert not (tmp_path / "two" / "rank1").exists() and (tmp_path / "two" / "final.weights").is_file()


@pytest.mark.slow  # torchrun's c10d agents have failed at shutdown under load (see the note inside)
def test_two_nodes_train_like_one_and_resume(plain_cfg: Path, tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=8)
    one = _single(_train_args(plain_cfg, data, tmp_path / "one", steps=4))
    assert one.returncode == 0, one.stderr
    endpoint = f"127.0.0.1:{_free_port()}"
    args = [*_train_args(plain_cfg, data, tmp_path / "two", steps=4), "--stop-after-steps", "2"]
    nodes = [_torchrun(1, args, nnodes=2, node_rank=r, endpoint=endpoint, background=True) for r in range(2)]
    codes = [n.wait(timeout=600) for n in nodes]
    assert all(codes), [n.stderr.read() for n in nodes]  # exit 130 of the workers: torchrun reports a failure
    assert load_checkpoint(tmp_path / "two" / "last.pt")["run_state"]["step"] == 2
    endpoint = f"127.0.0.1:{_free_port()}"
    resume = ["train", "--resume", "--output", str(tmp_path / "two"), "--workers", "0", "--device", "cpu",
              "--no-progress", "--quiet"]
    nodes = [_torchrun(1, resume, nnodes=2, node_rank=r, endpoint=endpoint, background=True) for r in range(2)]
    codes = [n.wait(timeout=600) for n in nodes]
    # The node whose agent hosts the c10d store may exit first; the other agent's last store read then fails
    # ("Connection was likely closed") after its worker finished (a torchrun shutdown race seen under load).
    assert 0 in codes, [n.stderr.read() for n in nodes]
    assert load_checkpoint(tmp_path / "two" / "last.pt")["run_state"]["step"] == 4
    _assert_same_weights(_weights(tmp_path / "one" / "last.pt"), _weights(tmp_path / "two" / "last.pt"))


def test_world_size_must_split_the_mini_batch(plain_cfg: Path, tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=4)
    args = _train_args(plain_cfg, data, tmp_path / "run")
    args[args.index("--batch-size") + 1] = "3"
    res = _torchrun(2, args)
    assert res.returncode != 0
    assert "does not split over 2 processes" in res.stderr


@pytest.mark.parametrize("preprocess", ["darknet-resize", "darknet-letterbox"])
def test_sharded_val_gives_the_one_process_ap(preprocess: str, tmp_path: Path) -> None:
    weights = need_shared(OFFICIAL_TINY)
    annotations = need_shared(COCO128 / "annotations" / "instances.json")
    args = ["val", "--cfg", "yolo-v3-tiny", "--weights", str(weights), "--annotations", str(annotations),
            "--images", str(COCO128 / "images"), "--preprocess", preprocess, "--device", "cpu", "--workers", "0",
            "--threads", "1", "--no-progress", "--quiet"]
    one = _single([*args, "--results", str(tmp_path / "one.json")])
    assert one.returncode == 0, one.stderr
    two = _torchrun(2, [*args, "--results", str(tmp_path / "two.json")])
    assert two.returncode == 0, two.stderr
    last = [l for l in two.stdout.splitlines() if l.startswith("AP=")]
    assert last == [one.stdout.strip().splitlines()[-1]]  # printed once (rank 0), the same AP
    assert json.loads((tmp_path / "one.json").read_text()) == json.loads((tmp_path / "two.json").read_text())


def test_sharded_detect_writes_the_one_process_json(tmp_path: Path) -> None:
    weights = need_shared(OFFICIAL_TINY)
    images = sorted((COCO128 / "images").glob("*.jpg"))[:6] if COCO128.exists() else []
    if not images:
        pytest.skip("coco128 is not available")
    args = ["detect", *map(str, images), "--weights", str(weights), "--device", "cpu", "--threads", "1",
            "--workers", "0", "--no-images", "--quiet"]
    one = _single([*args, "--output", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = _torchrun(2, [*args, "--output", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr
    a = json.loads((tmp_path / "one" / "detections.json").read_text())
    b = json.loads((tmp_path / "two" / "detections.json").read_text())
    assert a["images"] == b["images"] and [r["file"] for r in b["images"]] == list(map(str, images))


def test_resume_with_another_world_size(plain_cfg: Path, tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=8)
    one = _single(_train_args(plain_cfg, data, tmp_path / "one", steps=4))
    assert one.returncode == 0, one.stderr
    first = _torchrun(2, [*_train_args(plain_cfg, data, tmp_path / "two", steps=4), "--stop-after-steps", "2"])
    assert first.returncode != 0 and load_checkpoint(tmp_path / "two" / "last.pt")["run_state"]["step"] == 2
    resumed = _single(["train", "--resume", "--output", str(tmp_path / "two"), "--workers", "0", "--device", "cpu",
                       "--threads", "1", "--no-progress", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(_weights(tmp_path / "one" / "last.pt"), _weights(tmp_path / "two" / "last.pt"))


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_and_resume_continues(plain_cfg: Path, tmp_path: Path) -> None:
    """SIGKILL one of two ranks mid-run: torchrun ends the whole run (no hang) and names the dead rank; the last
    complete last.pt loads with weights_only=True and --resume finishes the run in one process."""
    import signal
    import time

    data = make_shapes_dataset(tmp_path / "data", n=8)
    run = _torchrun(2, _train_args(plain_cfg, data, tmp_path / "run", steps=400), background=True)
    last = tmp_path / "run" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.5)
    assert last.exists(), run.stderr.read() if run.poll() is not None else "no checkpoint in 300 s"
    children = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout.split()
    workers = [int(c) for c in children]
    assert len(workers) == 2, children
    killed = time.monotonic()
    os.kill(workers[1], signal.SIGKILL)
    code = run.wait(timeout=120)
    waited = time.monotonic() - killed
    err = run.stderr.read()
    assert code != 0 and waited < 120
    assert "exitcode" in err and "-9" in err  # torchrun's summary: the rank and the signal that ended it
    step = load_checkpoint(last)["run_state"]["step"]
    resumed = _single(["train", "--resume", "--output", str(tmp_path / "run"), "--stop-after-steps", str(step + 2),
                       "--workers", "0", "--device", "cpu", "--threads", "1", "--no-progress", "--quiet"])
    assert resumed.returncode == 130, resumed.stderr  # continued, then stopped as asked, with last.pt saved
    assert load_checkpoint(last)["run_state"]["step"] == step + 2
