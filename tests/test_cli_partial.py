"""``yolodet partial`` against Darknet's own ``darknet partial``: byte-identical ``*.conv.N`` files, loadable into
another cfg that shares the first layers (YOLOv2-tiny from YOLOv3-tiny), and clear errors for bad N."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from conftest import OFFICIAL_TINY, SHARED, need_shared
from yolodet.cli.main import main
from yolodet.modeling.model import Darknet
from yolodet.training.transfer import load_pretrained

TINY_CFG = SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg"
V2_TINY_CFG = SHARED / "data" / "darknet-zoo" / "yolov2-tiny.cfg"


@pytest.mark.parametrize("layers", [1, 13, 15, 20])
def test_partial_equals_darknet_partial(oracle, tmp_path: Path, layers: int) -> None:
    cfg, weights = need_shared(TINY_CFG), need_shared(OFFICIAL_TINY)
    ours, theirs = tmp_path / f"ours.conv.{layers}", tmp_path / f"darknet.conv.{layers}"
    assert main(["partial", "--cfg", str(cfg), "--weights", str(weights), "--layers", str(layers),
                 "--output", str(ours)]) == 0
    run = subprocess.run([oracle.darknet_executable(), "partial", str(cfg), str(weights), str(theirs), str(layers)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert ours.read_bytes() == theirs.read_bytes()


def test_partial_starts_another_cfg(tmp_path: Path, capsys) -> None:
    """yolov3-tiny.conv.13 (convs 16..1024) is YOLOv2-tiny's backbone: it loads layer for layer."""
    cfg, weights = need_shared(TINY_CFG), need_shared(OFFICIAL_TINY)
    assert main(["partial", "--cfg", str(cfg), "--weights", str(weights), "--layers", "13",
                 "--output", str(tmp_path / "tiny.conv.13")]) == 0
    assert "layers 0..12 of 24" in capsys.readouterr().out
    source = Darknet.from_cfg(cfg)
    load_pretrained(source, weights)
    target = Darknet.from_cfg(need_shared(V2_TINY_CFG))
    report = load_pretrained(target, tmp_path / "tiny.conv.13")
    for i in range(13):
        for a, b in zip(target.layers[i].darknet_tensors(), source.layers[i].darknet_tensors()):
            assert torch.equal(a, b), i
    assert report.skipped_layers == [13, 14]  # the 512 conv and the head conv stay as initialised


@pytest.mark.parametrize("layers, message", [("0", "N is in 1..24"), ("25", "N is in 1..24")])
def test_partial_refuses_bad_layer_counts(tmp_path: Path, caplog, layers: str, message: str) -> None:
    cfg, weights = need_shared(TINY_CFG), need_shared(OFFICIAL_TINY)
    out = tmp_path / "x.conv"
    assert main(["partial", "--cfg", str(cfg), "--weights", str(weights), "--layers", layers,
                 "--output", str(out)]) == 2
    assert message in caplog.text and not out.exists()


def test_partial_never_overwrites_its_source(tmp_path: Path, caplog) -> None:
    cfg = need_shared(TINY_CFG)
    weights = tmp_path / "tiny.weights"
    weights.write_bytes(need_shared(OFFICIAL_TINY).read_bytes())
    assert main(["partial", "--cfg", str(cfg), "--weights", str(weights), "--layers", "3",
                 "--output", str(weights)]) == 2
    assert "is the --weights file itself" in caplog.text
    assert weights.read_bytes() == OFFICIAL_TINY.read_bytes()
