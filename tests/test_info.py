"""Layer table: totals equal the BFLOPS Darknet prints, hand-computed small cases, torchvision's documented
multiply-adds for backbone stages, and the tool's output."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torchvision

from conftest import REFERENCE_CFGS, ROOT
from yolodet.modeling.info import build_for_info, format_table, layer_table, total_flops, total_params
from yolodet.modeling.model import Darknet

OWN_CFGS = sorted((ROOT / "cfg").glob("*.cfg"))


@pytest.mark.parametrize("cfg, size, bflops", [
    ("yolo-v3.cfg", 416, 65.879),       # what AlexeyAB's darknet prints as "Total BFLOPS"
    ("yolo-v3-tiny.cfg", 416, 5.571),
    ("yolo-v4.cfg", 608, 128.459),
])
def test_totals_equal_darknet_bflops(cfg, size, bflops):
    rows = layer_table(build_for_info(ROOT / "cfg" / cfg, size))
    assert round(total_flops(rows) / 1e9, 3) == bflops


def test_hand_computed_layers():
    text = ("[net]\nwidth=8\nheight=6\n"
            "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
            "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\ngroups=2\n"
            "[maxpool]\nsize=2\nstride=2\n"
            "[shortcut]\nfrom=-1\n"
            "[route]\nlayers=-1,-2\n"
            "[connected]\noutput=5\n")
    rows = layer_table(Darknet.from_cfg_text(text))
    assert [r.type for r in rows] == ["convolutional", "convolutional", "maxpool", "shortcut", "route", "connected"]
    assert [r.out_shape for r in rows] == [(4, 6, 8), (4, 3, 4), (4, 2, 2), (4, 2, 2), (8, 2, 2), (5, 1, 1)]
    assert rows[1].in_shape == (4, 6, 8)
    # conv: 4 filters * 3 ch * 3*3 weights + BN gamma, beta; 2 MACs-> FLOPs per weight per output pixel (6*8)
    assert (rows[0].params, rows[0].flops) == (4 * 3 * 9 + 8, 2 * 108 * 48)
    # grouped conv: 4 filters * (4/2) ch * 9 + bias 4, at 3x4
    assert (rows[1].params, rows[1].flops) == (72 + 4, 2 * 72 * 12)
    assert rows[2].flops == 2 * 2 * 4 * 2 * 2  # Darknet: size^2 * C * out_h * out_w
    assert rows[3].flops == 4 * 2 * 2  # Darknet: out elements * number of `from` layers
    assert rows[4].flops == 0
    assert (rows[5].params, rows[5].flops) == (32 * 5 + 5, 2 * 32 * 5)
    assert "3 x 3/ 2 g2" in format_table(rows).splitlines()[2]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_backbone_flops_equal_torchvision_documented_ops(name):
    """torchvision documents each model's multiply-adds (``meta["_ops"]``, GMACs); ours = stages + the fc."""
    model = build_for_info_text(f"[net]\nwidth=224\nheight=224\n[backbone]\nmodel={name}\nstage=4\n")
    fc = torchvision.models.get_model(name, weights=None).fc
    macs = total_flops(layer_table(model)) / 2 + fc.in_features * fc.out_features
    assert macs / 1e9 == pytest.approx(torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"], abs=6e-4)


def build_for_info_text(text: str) -> Darknet:
    with torch.device("meta"):
        return Darknet.from_cfg_text(text)


def test_meta_and_real_models_give_the_same_table():
    cfg = ROOT / "cfg" / "yolo-v3-tiny-mobilenetv3-small.cfg"
    real = layer_table(Darknet.from_cfg(cfg))
    assert layer_table(build_for_info(cfg)) == real
    assert real[0].type == "backbone" and real[0].detail == "mobilenet_v3_small stages 0-3"
    assert real[1].detail == "mobilenet_v3_small stage 4" and real[1].flops > 0


@pytest.mark.parametrize("cfg", OWN_CFGS + REFERENCE_CFGS, ids=lambda p: p.name)
def test_every_cfg_has_a_table(cfg):
    model = build_for_info(cfg)
    rows = layer_table(model)
    assert len(rows) == len(model.layers)
    assert total_params(rows) == sum(p.numel() for p in model.parameters())
    assert [r.out_shape for r in rows] == [tuple(l.out_shape) for l in model.layers]
    assert total_flops(rows) > 0
    assert len(format_table(rows).splitlines()) == len(rows) + 2


def _load_tool():
    spec = importlib.util.spec_from_file_location("model_info", ROOT / "tools" / "model_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_prints_table(capsys, caplog):
    model_info = _load_tool()
    args = model_info.get_args_parser().parse_args(
        ["--cfg", str(ROOT / "cfg" / "yolo-v3-resnet50.cfg"), "--img-size", "320"])
    assert model_info.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("320 x 320 x 3 input")
    assert "resnet50 stages 0-2" in out[2] and "40 x  40 x  512" in out[2]
    assert out[-1].startswith("Total: 35 layers")
    args = model_info.get_args_parser().parse_args(["--cfg", str(ROOT / "cfg" / "missing.cfg")])
    assert model_info.main(args) == 2
    assert "missing.cfg" in caplog.text and "not a shipped cfg name" in caplog.text
