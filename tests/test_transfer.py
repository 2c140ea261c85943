"""Starting from other weights: COCO .weights into another class count, partial files, checkpoints, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, OFFICIAL_TINY, SHARED, need_shared, randomize
from yolodet.cfg.edit import set_classes
from yolodet.modeling.checkpoint import save_checkpoint
from yolodet.training.engine import build_optimizer
from yolodet.modeling.model import Darknet
from yolodet.training.transfer import freeze_layers, load_pretrained, set_train_mode
from yolodet.modeling.weights import WeightsError, save_darknet_weights

CFG = FIXTURES / "overfit.cfg"  # 2 classes, heads at layers 10 and 14 (convs 9 and 13)


def _model(classes: int, seed: int | None = None) -> Darknet:
    text = set_classes(CFG.read_text(), classes)
    model = Darknet.from_cfg_text(text, f"overfit-{classes}.cfg")
    return randomize(model, seed) if seed is not None else model


def test_weights_with_another_class_count_fill_all_but_the_heads(tmp_path: Path) -> None:
    source = _model(7, seed=1)
    save_darknet_weights(source, tmp_path / "seven.weights")
    target = _model(2)
    report = load_pretrained(target, tmp_path / "seven.weights")
    assert report.source_classes == 7
    assert report.skipped_layers == [9, 13]
    theirs, ours = source.state_dict(), target.state_dict()
    for name in report.loaded:
        assert torch.equal(theirs[name], ours[name]), name
    assert not any(n.startswith(("layers.9.", "layers.13.")) for n in report.loaded)
    assert "layers 9, 13" in report.summary()


def test_same_cfg_and_partial_weights_load_directly(tmp_path: Path) -> None:
    source = _model(2, seed=2)
    save_darknet_weights(source, tmp_path / "full.weights")
    target = _model(2)
    report = load_pretrained(target, tmp_path / "full.weights")
    assert not report.skipped and not report.missing
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    save_darknet_weights(source, tmp_path / "overfit.conv.7", cutoff=7)  # like darknet partial ... 7
    fresh = _model(3)
    report = load_pretrained(fresh, tmp_path / "overfit.conv.7")
    assert report.skipped_layers == [8, 9, 12, 13]
    assert torch.equal(fresh.layers[6].conv.weight, source.layers[6].conv.weight)


def test_checkpoint_source_matches_by_name_and_shape(tmp_path: Path) -> None:
    source = _model(5, seed=3)
    save_checkpoint(source, tmp_path / "five.pt")
    target = _model(2)
    report = load_pretrained(target, tmp_path / "five.pt")
    assert report.skipped_layers == [9, 13] and report.source_classes is None
    assert torch.equal(target.layers[12].conv.weight, source.layers[12].conv.weight)


def test_weights_that_fit_nothing_are_an_error(tmp_path: Path) -> None:
    source = _model(2, seed=4)
    save_darknet_weights(source, tmp_path / "full.weights")
    data = (tmp_path / "full.weights").read_bytes()
    (tmp_path / "odd.weights").write_bytes(data[:-4 * 7])  # ends inside the last layer, no class count fits
    with pytest.raises(WeightsError, match="ends inside layer"):
        load_pretrained(_model(2), tmp_path / "odd.weights")
    with pytest.raises(WeightsError, match="no such"):
        load_pretrained(_model(2), tmp_path / "missing.weights")


def test_official_coco_tiny_into_one_class() -> None:
    cfg = need_shared(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg")
    weights = need_shared(OFFICIAL_TINY)
    model = Darknet.from_cfg_text(set_classes(cfg.read_text(), 1), "one.cfg")
    report = load_pretrained(model, weights)
    assert report.source_classes == 80 and report.skipped_layers == [15, 22]
    assert model.layers[15].conv.weight.shape[0] == 18


def test_freeze_stops_gradients_and_bn_statistics() -> None:
    model = _model(2, seed=5)
    frozen = freeze_layers(model, 5)
    assert frozen == sum(p.numel() for layer in model.layers[:5] for p in layer.parameters())
    set_train_mode(model, 5)
    assert not model.layers[4].training and model.layers[6].training
    before = model.layers[4].bn.running_mean.clone()
    optimizer = build_optimizer(model, lr=0.1)
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trainable for p in model.layers[0].parameters())
    model(torch.rand(2, 3, 64, 64))[0].sum().backward()
    assert model.layers[0].conv.weight.grad is None and model.layers[6].conv.weight.grad is not None
    assert torch.equal(model.layers[4].bn.running_mean, before)
    with pytest.raises(ValueError):
        freeze_layers(model, 99)


def test_weight_decay_only_on_conv_weights() -> None:
    model = _model(2)
    decayed, plain = build_optimizer(model, lr=0.01, decay=0.0005).param_groups
    assert decayed["weight_decay"] == 0.0005 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 4 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) == 8  # convs 0, 2, 4, 6, 8, 9, 12, 13
