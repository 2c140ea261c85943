"""Torchvision backbones as cfg blocks: build-time shapes equal forward shapes for every registered backbone, stages
equal torchvision's own features, pretrained weights load only from files (never the network), the shipped
detection cfgs build, run, train and round-trip through checkpoints."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from conftest import FIXTURES, ROOT
from yolodet.modeling.backbones import BACKBONES, get_backbone
from yolodet.training.pretrained import BackboneWeightsError, load_backbone_weights
from yolodet.modeling.blocks.backbone import has_backbone
from yolodet.modeling.blocks.backbone import BackboneBlock, StageBlock
from yolodet.cfg import CfgError
from yolodet.modeling.checkpoint import load_model, save_checkpoint
from yolodet.inference.detector import Detector
from yolodet.training.loss import YoloLoss
from yolodet.modeling.model import Darknet
from yolodet.data.images import read_image
from yolodet.modeling.weights import WeightsError, save_darknet_weights

SHIPPED = {  # cfg -> head grids at 416 (stride 32 first, as the [yolo] sections come)
    "yolo-v3-resnet50.cfg": (13, 26, 52),
    "yolo-v3-mobilenetv3.cfg": (13, 26, 52),
    "yolo-v3-efficientnet-b0.cfg": (13, 26, 52),
    "yolo-v3-tiny-mobilenetv3-small.cfg": (13, 26),
}
ONE_PER_FAMILY = ["resnet18", "efficientnet_b0", "mobilenet_v3_small"]


def backbone_cfg(name: str, *, w: int = 97, h: int = 65, first: int = 0, extra: str = "", normalize: int = 1) -> str:
    """``[backbone]`` up to ``first``, then one ``[stage]`` per remaining stage."""
    stages = len(get_backbone(name).stages)
    text = f"[net]\nwidth={w}\nheight={h}\n[backbone]\nmodel={name}\nstage={first}\nnormalize={normalize}\n{extra}"
    return text + "[stage]\n" * (stages - 1 - first)


def run_layers(model: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for layer in model.layers:
            x = layer(x, [outs[s] for s in layer.sources])
            outs.append(x)
    return outs


# -- acceptance 2: build-time channels/strides == forward --------------------------------------------------------

@pytest.mark.parametrize("name", BACKBONES.names())
def test_stage_shapes_known_at_build_match_forward(name):
    w, h = 49, 33  # odd sizes: checks the ceil(h / 2) rule of every stride-2 step
    model = Darknet.from_cfg_text(backbone_cfg(name, w=w, h=h)).eval()
    backbone = model.layers[0]
    info = backbone.feature_info
    assert [s.stride for s in info] == [2, 4, 8, 16, 32]
    assert len(model.layers) == len(info)
    outs = run_layers(model, torch.rand(1, 3, h, w))
    for k, (stage, out) in enumerate(zip(info, outs)):
        assert tuple(out.shape[1:]) == model.layers[k].out_shape, f"{name} stage {k}"
        assert out.shape[1] == stage.channels
        assert out.shape[2:] == (math.ceil(h / stage.stride), math.ceil(w / stage.stride))
    # every parameter of the stages belongs to exactly one layer, none of the classifier
    tv = get_backbone(name)()
    stage_params = sum(p.numel() for path in sum(get_backbone(name).stages, ()) for p in
                       tv.get_submodule(path).parameters())
    assert sum(p.numel() for p in model.parameters()) == stage_params


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_stages_equal_torchvision_features(name, tmp_path):
    """Loaded with a torchvision state dict, each layer's output equals torchvision's own intermediate feature."""
    torch.manual_seed(0)
    tv = get_backbone(name)().eval()
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)
    model = Darknet.from_cfg_text(backbone_cfg(name, w=64, h=32, first=1, normalize=0)).eval()
    assert load_backbone_weights(model, path) == [str(path)]
    x = torch.rand(2, 3, 32, 64)
    ours = run_layers(model, x)
    taps = [get_backbone(name).stages[k][-1] for k in range(1, 5)]
    with torch.no_grad():
        ref = create_feature_extractor(tv, return_nodes=taps)(x)
    for out, tap in zip(ours, taps):
        torch.testing.assert_close(out, ref[tap], rtol=1e-4, atol=1e-5)


def test_normalize_applies_imagenet_mean_std():
    on = Darknet.from_cfg_text(backbone_cfg("resnet18", first=4)).eval()
    off = Darknet.from_cfg_text(backbone_cfg("resnet18", first=4, normalize=0)).eval()
    off.load_state_dict(on.state_dict())
    x = torch.rand(1, 3, 65, 97)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(on(x)[0], off((x - mean) / std)[0])


# -- cfg errors --------------------------------------------------------------------------------------------------

def _error(text: str) -> CfgError:
    with pytest.raises(CfgError) as exc:
        Darknet.from_cfg_text(text, "bb.cfg")
    return exc.value


def test_unknown_backbone_lists_known_names():
    err = _error("[net]\n[backbone]\nstage=1\nmodel=resnet51\n")
    assert (err.path, err.line, err.key) == ("bb.cfg", 4, "model")
    assert "resnet51" in str(err) and "known:" in str(err)
    for name in ("resnet50", "efficientnet_b0", "mobilenet_v3_small"):
        assert name in str(err)


def test_backbone_stage_out_of_range_names_file_line_key():
    err = _error("[net]\n[backbone]\nmodel=resnet18\nstage=5\n")
    assert (err.line, err.key) == (4, "stage") and "out of range" in str(err)
    assert str(err).startswith("bb.cfg:4:")


def test_stage_section_out_of_range():
    err = _error("[net]\n[backbone]\nmodel=mobilenet_v2\nstage=3\n[stage]\n[stage]\n")
    assert err.line == 6 and "stage 5 is out of range" in str(err)
    err = _error("[net]\n[backbone]\nmodel=mobilenet_v2\nstage=4\n[stage]\nstage=9\n")
    assert (err.line, err.key) == (6, "stage") and "out of range" in str(err)


def test_stage_sections_run_in_order():
    err = _error("[net]\n[backbone]\nmodel=resnet18\nstage=2\n[stage]\nstage=4\n")
    assert (err.line, err.key) == (6, "stage") and "next stage" in str(err) and "is 3" in str(err)


def test_stage_without_backbone_and_wrong_input():
    assert "[backbone]" in str(_error("[net]\n[stage]\n"))
    err = _error("[net]\n[backbone]\nmodel=resnet18\nstage=2\n[convolutional]\nfilters=8\n[stage]\n")
    assert err.line == 7 and "takes 128 channels" in str(err)
    err = _error("[net]\nchannels=1\n[backbone]\nmodel=resnet18\n")
    assert err.key == "model" and "3-channel" in str(err)


def test_unknown_key_is_rejected():
    err = _error("[net]\n[backbone]\nmodel=resnet18\npretrained=1\n")
    assert err.key == "pretrained" and "weights" in str(err)


def test_route_and_shortcut_address_stages_by_index():
    text = backbone_cfg("resnet18", w=64, h=64, first=2) + (
        "[route]\nlayers=0\n[convolutional]\nfilters=128\nsize=1\n[shortcut]\nfrom=0\n"
        "[route]\nlayers=2\n[upsample]\n[route]\nlayers=-1,1\n")
    model = Darknet.from_cfg_text(text).eval()
    assert [l.out_shape for l in model.layers[-3:]] == [(512, 2, 2), (512, 4, 4), (768, 4, 4)]
    assert model(torch.rand(1, 3, 64, 64))[0].shape == (1, 768, 4, 4)


# -- weights -----------------------------------------------------------------------------------------------------

def test_darknet_weights_refused_for_backbones(tmp_path):
    model = Darknet.from_cfg(ROOT / "cfg" / "yolo-v3-tiny-mobilenetv3-small.cfg")
    assert has_backbone(model) and not has_backbone(Darknet.from_cfg(FIXTURES / "tiny.cfg"))
    with pytest.raises(WeightsError, match="checkpoint"):
        save_darknet_weights(model, tmp_path / "x.weights")
    assert not (tmp_path / "x.weights").exists()
    fake = tmp_path / "y.weights"
    fake.write_bytes(np.array([0, 2, 5, 0, 0], "<i4").tobytes() + np.zeros(10, "<f4").tobytes())
    with pytest.raises(WeightsError, match="mobilenet_v3_small"):
        load_model(ROOT / "cfg" / "yolo-v3-tiny-mobilenetv3-small.cfg", fake)


def test_cfg_weights_key_is_read_only_when_asked(tmp_path):
    text = backbone_cfg("resnet18", first=4, extra=f"weights={tmp_path / 'missing.pth'}\n")
    model = Darknet.from_cfg_text(text)  # building never reads weights=
    with pytest.raises(BackboneWeightsError, match="missing.pth"):
        load_backbone_weights(model)
    assert load_backbone_weights(Darknet.from_cfg_text(backbone_cfg("resnet18", first=4))) == []  # weights=none
    with pytest.raises(BackboneWeightsError, match="no \\[backbone\\]"):
        load_backbone_weights(Darknet.from_cfg(FIXTURES / "tiny.cfg"), tmp_path / "missing.pth")


def test_imagenet_weights_come_from_the_local_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = Darknet.from_cfg_text(backbone_cfg("mobilenet_v3_small", first=2, extra="weights=imagenet\n"))
    with pytest.raises(BackboneWeightsError) as exc:
        load_backbone_weights(model)
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    assert "does not download" in str(exc.value) and url in str(exc.value)
    torch.manual_seed(1)
    tv = get_backbone("mobilenet_v3_small")()
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), cached)
    assert load_backbone_weights(model) == [str(cached)]
    stage = model.layers[-1]
    assert isinstance(stage, StageBlock)
    torch.testing.assert_close(stage.body[-1][0].weight, tv.features[12][0].weight)
    other = Darknet.from_cfg_text(backbone_cfg("mobilenet_v3_small", first=2))  # an override for weights=none
    assert load_backbone_weights(other, "imagenet") == [str(cached)]


def test_wrong_state_dict_is_reported(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(get_backbone("resnet18")().state_dict(), path)
    model = Darknet.from_cfg_text(backbone_cfg("resnet50", first=4))
    before = model.layers[0].body[0].weight.clone()  # conv1: the same shape in resnet18 and resnet50
    with pytest.raises(BackboneWeightsError, match="r18.pth"):
        load_backbone_weights(model, path)
    assert torch.equal(model.layers[0].body[0].weight, before)  # everything is checked before anything is copied
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(BackboneWeightsError, match="junk.pth"):
        load_backbone_weights(model, tmp_path / "junk.pth")


# -- acceptance 1: the shipped cfgs ------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", sorted(SHIPPED))
def test_shipped_cfg_forward_at_416(cfg):
    model = Darknet.from_cfg(ROOT / "cfg" / cfg).eval()
    assert isinstance(model.layers[0], BackboneBlock)
    assert model.num_classes == 80 and (model.net.width, model.net.height) == (416, 416)
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 416, 416))
    assert [tuple(o.shape) for o in outs] == [(1, 255, g, g) for g in SHIPPED[cfg]]
    assert [h.stride for h in model.heads] == [416 // g for g in SHIPPED[cfg]]


def test_detector_runs_on_a_backbone_cfg():
    model = Darknet.from_cfg(ROOT / "cfg" / "yolo-v3-tiny-mobilenetv3-small.cfg")
    image = read_image(FIXTURES / "data" / "coco" / "images" / "000000000001.jpg")
    dets = Detector(model, img_size=224).predict([image], conf_thres=0.0)
    assert len(dets) == 1 and len(dets[0]) > 0
    h, w = image.shape[:2]
    boxes = dets[0].boxes
    assert torch.isfinite(boxes).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


@pytest.mark.parametrize("cfg", sorted(SHIPPED))
def test_shipped_cfg_trains_and_round_trips_through_a_checkpoint(cfg, tmp_path):
    """A few optimizer steps on one small batch: finite loss that goes down; the trained model (BN statistics
    moved) saved as a checkpoint and rebuilt from the embedded cfg alone gives identical outputs."""
    torch.manual_seed(0)
    model = Darknet.from_cfg(ROOT / "cfg" / cfg).train()
    size = (128, 96)  # (w, h): small, not square, a multiple of 32; the loss takes the size per call
    images = torch.rand(2, 3, size[1], size[0])
    targets = torch.tensor([[0, 0, 0.10, 0.20, 0.45, 0.70], [0, 17, 0.50, 0.50, 0.90, 0.95],
                            [1, 2, 0.30, 0.10, 0.60, 0.40]])
    criterion = YoloLoss(model.heads)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        parts = criterion(model(images), targets, size)
        assert all(torch.isfinite(v) for v in parts.values()), parts
        optimizer.zero_grad()
        parts["total"].backward()
        optimizer.step()
        losses.append(parts["total"].item())
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    model.eval()
    save_checkpoint(model, tmp_path / "trained.pt")
    loaded = load_model(None, tmp_path / "trained.pt")
    with torch.no_grad():
        for a, b in zip(model(images), loaded(images)):
            assert torch.equal(a, b)
