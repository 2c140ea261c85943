"""Checkpoint round trips and load_model's dispatch between .weights and checkpoints."""

from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES, randomize
from yolodet.cfg import CfgError
from yolodet.modeling.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import WeightsError, save_darknet_weights


def test_checkpoint_and_weights_load_the_same_model(tmp_path) -> None:
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=2).eval()
    save_checkpoint(model, tmp_path / "m.pt", epoch=3)
    save_darknet_weights(model, tmp_path / "m.weights")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        a = load_model(None, tmp_path / "m.pt")(x)  # cfg embedded in the checkpoint
        b = load_model(FIXTURES / "tiny.cfg", tmp_path / "m.weights")(x)
    for r, p, q in zip(ref, a, b):
        assert torch.equal(r, p) and torch.equal(r, q)
    assert load_checkpoint(tmp_path / "m.pt")["epoch"] == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_load_model_errors_name_the_file(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    torch.save({"something": 1}, junk)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(None, junk)
    with pytest.raises(WeightsError, match="missing.weights"):
        load_model(FIXTURES / "tiny.cfg", tmp_path / "missing.weights")
    with pytest.raises(CfgError):
        load_model(None, None)
