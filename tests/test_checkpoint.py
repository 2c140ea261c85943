"""Checkpoint round trips and load_model's dispatch between .weights and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, randomize
from yolodet.cfg import CfgError
from yolodet.inference.detector import Detector
from yolodet.modeling.checkpoint import CheckpointError, _ranges, load_checkpoint, load_model, save_checkpoint
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import WeightsError, WeightsHeader, save_darknet_weights


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


class _RunsCode:
    """Pickles as a call of ``os.system``: what a hostile ``.pt`` does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_without_unsafe_advice(tmp_path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    model = Darknet.from_cfg(FIXTURES / "tiny.cfg")
    torch.save({"format": "yolodet-checkpoint", "version": 1, "cfg_text": model.cfg_text,
                "model": model.state_dict(), "extra": _RunsCode(marker)}, evil)
    for load in (lambda: load_checkpoint(evil), lambda: load_model(None, evil),
                 lambda: load_model(FIXTURES / "tiny.cfg", evil)):
        with pytest.raises(CheckpointError) as info:
            load()
        text = str(info.value)
        assert text.startswith(f"{evil}: refused: the file contains code objects (posix.system)"), text
        assert "yolodet will never load such a file" in text
        assert "weights_only" not in text and "False" not in text
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained torch advice
    assert not marker.exists()


def test_no_library_message_suggests_weights_only_false() -> None:
    root = Path(__file__).resolve().parents[1]
    for path in [*(root / "yolodet").rglob("*.py"), *(root / "tools").glob("*.py")]:
        text = path.read_text()
        assert "weights_only=False" not in text.replace(" ", ""), path


@pytest.mark.parametrize("missing", ["cfg_text", "model"])
def test_a_checkpoint_missing_a_key_names_it(tmp_path, missing: str) -> None:
    model = Darknet.from_cfg(FIXTURES / "tiny.cfg")
    ckpt = {"format": "yolodet-checkpoint", "version": 1, "cfg_text": model.cfg_text, "model": model.state_dict()}
    del ckpt[missing]
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=f"m.pt: the yolodet checkpoint has no '{missing}' entry"):
        load_model(None, tmp_path / "m.pt")
    ckpt[missing] = 42
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=f"m.pt: the checkpoint's '{missing}' is a int"):
        load_model(None, tmp_path / "m.pt")


def test_non_finite_values_name_the_layer(tmp_path) -> None:
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=1)
    with torch.no_grad():
        model.layers[2].conv.weight[0, 0, 0, 0] = float("nan")
        model.layers[2].conv.weight[1, 0, 0, 0] = float("inf")
    save_checkpoint(model, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan.pt: layer 2 \(layers.2.conv.weight\) has 2 non-finite values "
                                              r"\(NaN or Inf\)"):
        load_model(None, tmp_path / "nan.pt")
    save_darknet_weights(model, tmp_path / "nan.weights")
    first = 0  # byte offset of layer 2's first NaN: header, layers 0 and 1, layer 2's BN/bias values
    for layer in model.layers[:2]:
        first += sum(t.numel() for t in layer.darknet_tensors())
    first = 20 + 4 * (first + sum(t.numel() for t in model.layers[2].darknet_tensors()[:-1]))
    with pytest.raises(WeightsError, match=rf"nan.weights: layer 2 \(ConvBlock\) has 2 non-finite values \(NaN or "
                                           rf"Inf\) among its \d+ floats, the first at byte {first}"):
        load_model(FIXTURES / "tiny.cfg", tmp_path / "nan.weights")


def test_partial_weights_are_refused_for_inference_unless_allowed(tmp_path, caplog) -> None:
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=3)
    weighted = [i for i, layer in enumerate(model.layers) if layer.darknet_tensors()]
    save_darknet_weights(model, tmp_path / "tiny.conv.3", cutoff=3)
    (tmp_path / "header.weights").write_bytes(WeightsHeader().to_bytes())
    cases = {"tiny.conv.3": [i for i in weighted if i >= 3], "header.weights": weighted}
    for name, random_layers in cases.items():
        with pytest.raises(WeightsError, match=rf"{name}: partial weights: the file fills "
                                               rf"{len(weighted) - len(random_layers)} of the {len(weighted)} layers "
                                               r"with weights; layers .* would keep random values") as info:
            load_model(FIXTURES / "tiny.cfg", tmp_path / name)
        assert "--allow-partial" in str(info.value)
        with pytest.raises(WeightsError, match="partial weights"):
            Detector.from_cfg(FIXTURES / "tiny.cfg", tmp_path / name)
        caplog.clear()
        loaded = load_model(FIXTURES / "tiny.cfg", tmp_path / name, allow_partial=True)
        assert "would keep random values (allowed)" in caplog.text
        assert Detector.from_cfg(FIXTURES / "tiny.cfg", tmp_path / name, allow_partial=True).model is not None
        if name == "tiny.conv.3":
            assert torch.equal(loaded.layers[0].conv.weight, model.layers[0].conv.weight)
    assert _ranges((0, 1, 2, 5, 7, 8)) == "0-2, 5, 7-8"
    text = str(pytest.raises(WeightsError, load_model, FIXTURES / "tiny.cfg", tmp_path / "header.weights").value)
    assert f"layers {_ranges(tuple(weighted))} would keep random values" in text
