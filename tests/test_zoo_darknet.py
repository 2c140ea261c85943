"""Darknet C is the oracle: every cfg of AlexeyAB's ``cfg/`` folder (``../shared/data/darknet-zoo``) gives the same
raw outputs in yolodet as in Darknet itself (``../shared/oracle``, AlexeyAB's C code, CPU).

Weights are random (non-trivial BN statistics, see ``conftest.randomize``), written by yolodet's saver and read by
Darknet's ``load_weights``, so this checks the cfg grammar, every layer rule and the weights layout at once.
Compared: the raw input of each head (``[yolo]``, ``[region]``, ``[Gaussian_yolo]``, ``[detection]``), or for a
classifier its last layer and the layer before a final ``[softmax]``; max |diff| <= 1e-4 of the output's scale.

Sizes: every cfg runs at a reduced ``[net]`` size (``_size``: the smallest of 64, 128, 256 at which yolodet builds
it; ``[crop]`` sizes scaled alike), which Darknet allows for any size its strides divide. ``[net] inputs=`` cfgs
(recurrent text models) keep theirs. The largest cfgs are marked slow.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, randomize
from yolodet.cfg import CfgError, parse_cfg_text
from yolodet.modeling.blocks.conv import XnorConv
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights

ZOO = SHARED / "data" / "darknet-zoo"
ZOO_CFGS = sorted(ZOO.rglob("*.cfg")) if ZOO.is_dir() else []
HEADS = ("yolo", "region", "Gaussian_yolo", "gaussian_yolo", "detection")

SLOW: set[str] = {
    "cspx-p7-mish_hp.cfg", "cspx-p7-mish.cfg", "cspx-p7-mish-omega.cfg", "yolov4-p6.cfg", "yolov4-csp-x-mish.cfg",
    "resnet152_trident.cfg", "yolov4-csp-x-swish-frozen.cfg", "yolov4-csp-x-swish.cfg", "yolov4x-mish.cfg",
    "yolov4-p5.cfg", "yolov7x.cfg", "yolov3.coco-giou-12.cfg", "Gaussian_yolov3_BDD.cfg",
    "yolov4-sam-mish-csp-reorg-bfm.cfg", "yolov4-custom.cfg", "yolov4-csp.cfg", "yolov4-p5-frozen.cfg",
    "yolov3_5l.cfg", "yolov3-voc.cfg", "densenet201.cfg", "csresnext50-panet-spp-original-optimal.cfg",
    "yolov3-openimages.cfg", "yolov4-csp-swish.cfg", "yolov4.cfg", "yolo-voc.2.0.cfg", "yolov3.cfg",
    "yolov3-spp.cfg", "yolov3-voc.yolov3-giou-40.cfg", "extraction22k.cfg", "cd53paspp-gamma.cfg",
}
"""Cfgs that take more than a few seconds here (Darknet C without SIMD), run with ``-m slow``."""

PJREDDIE_SHORTCUTS = ("resnet50.cfg", "resnet101.cfg", "resnet152.cfg", "resnext152-32x4d.cfg")
"""pjreddie's cfgs with shortcuts between maps of different sizes: AlexeyAB's Darknet refuses them
(``parse_shortcut`` asserts equal w, h); yolodet applies pjreddie's ``shortcut_cpu`` rule (``test_blocks.py``)."""

UNKNOWN_KEYS = {"yolov4-sam-mish-csp-reorg-bfm.cfg": "beta1"}
"""cfg -> a key no Darknet parser reads (Darknet prints "Unused field"): an error by default, ignored with
``unknown_keys="ignore"``, which is how these cfgs are compared."""

HARNESS_XNOR = """darknet_dump never sets Darknet's global ``gpu_index`` (0 in dark_cuda.c), while the ``darknet``
program sets it to -1 in CPU builds. ``binary_align_weights`` then takes its GPU branch for xnor layers whose input
channels are a multiple of 32 and inverts the packed weight bits: the harness computes ``-mean*conv + bias`` there,
which no Darknet command does. The zoo test mirrors that one artifact on those layers (``XnorConv.invert``, a
test-only switch) so the rest of the xnor path is still checked bit for bit; yolodet itself computes the CPU
``darknet`` program's result."""



def _mirror_harness_xnor(layer: XnorConv) -> None:
    """The harness's result on a c % 32 == 0 xnor layer (see HARNESS_XNOR): inverted weight bits make the bit count
    ``K - count - tail`` (the ``tail`` alignment bits past K are then 0s, but are still subtracted), so
    ``(2*count' - K) = -(2*count - K) - 2*tail``."""
    conv = layer.inner.conv
    k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    tail = (64 - k % 64) % 64
    forward = layer.forward

    def harness(x, refs):
        w, b = layer._fused()
        mean = w.abs().mean((1, 2, 3)).view(1, -1, 1, 1)
        linear, layer.linear = layer.linear, True
        try:
            term = (forward(x, refs) - b.view(1, -1, 1, 1)) / mean  # 2*count - K
        finally:
            layer.linear = linear
        out = -(term + 2 * tail) * mean + b.view(1, -1, 1, 1)
        return out if layer.linear else layer.inner.act(out)

    layer.forward = harness


NOT_IMPLEMENTED: dict[str, str] = {}
"""cfg -> the start of the error yolodet gives (layers or keys it does not implement)."""

DARKNET_CPU_BUGS = {"efficientnet-lite3.cfg": 0}
"""cfg -> a layer where Darknet's CPU forward is wrong: ``activate()`` has no ``relu6`` case and returns 0 for every
value (the GPU kernel computes relu6). yolodet computes relu6; the test below shows Darknet's zeros."""

DARKNET_REJECTS = set(PJREDDIE_SHORTCUTS) | set(DARKNET_CPU_BUGS)


def _name(cfg: Path) -> str:
    return str(cfg.relative_to(ZOO))


def _set_net_size(text: str, size: int, original: int) -> str:
    """``text`` with ``[net]`` width/height = ``size`` and ``[crop]`` sizes scaled by ``size / original``."""
    out, section = [], ""
    for line in text.splitlines():
        bare = "".join(line.split())
        if bare.startswith("["):
            section = bare.lower()
        key = bare.split("=", 1)[0]
        if section in ("[net]", "[network]") and key in ("width", "height"):
            line = f"{key}={size}"
        elif section == "[crop]" and key in ("crop_width", "crop_height"):
            value = re.match(r"\d+", bare.split("=", 1)[1])
            line = f"{key}={int(value.group()) * size // original}"
        out.append(line)
    return "\n".join(out) + "\n"


def _reduced(cfg: Path) -> tuple[str, Darknet]:
    """The cfg text at the smallest size yolodet builds, and the model (random weights)."""
    text = cfg.read_text(errors="replace")
    net = parse_cfg_text(text, str(cfg))[0]
    keys = "ignore" if _name(cfg) in UNKNOWN_KEYS else "error"
    if net.has("inputs") or not net.has("width"):
        return text, Darknet.from_cfg_text(text, str(cfg), unknown_keys=keys)
    original = net.get_int("width")
    error: CfgError | None = None
    for size in (64, 128, 256):
        if size >= original:
            break
        small = _set_net_size(text, size, original)
        try:
            return small, Darknet.from_cfg_text(small, str(cfg), unknown_keys=keys)
        except CfgError as exc:
            error = exc
    try:
        return text, Darknet.from_cfg_text(text, str(cfg), unknown_keys=keys)
    except CfgError:
        raise error or sys.exc_info()[1]


def _compare(ours: torch.Tensor, theirs: np.ndarray, what: str) -> float:
    ours_np = ours.detach().numpy().reshape(-1)
    theirs = theirs.reshape(-1)
    assert ours_np.shape == theirs.shape, f"{what}: yolodet {tuple(ours.shape)} vs Darknet {theirs.size} values"
    scale = float(np.abs(theirs).max())
    assert theirs.std() > 1e-6 * max(scale, 1e-30) and scale > 0, f"{what}: degenerate Darknet output"
    diff = float(np.abs(ours_np - theirs).max())
    assert diff <= 1e-4 * scale, f"{what}: max |diff| {diff:.3g} > 1e-4 * {scale:.3g}"
    return diff / scale


def _oracle_layers(blocks) -> tuple[list[int] | str, str]:
    types = [b.type for b in blocks[1:]]
    if any(t.lower() in {h.lower() for h in HEADS} for t in types):
        return "heads", "head"
    last = max(i for i, t in enumerate(types) if t != "cost")
    if types[last] == "softmax":
        return [last - 1, last], "layer"
    return [last], "layer"


def run_zoo_cfg(cfg: Path, oracle, workdir: Path, seed: int = 0) -> float:
    """yolodet vs Darknet C on ``cfg`` (reduced size): the largest |diff| / scale over the compared outputs."""
    text, model = _reduced(cfg)
    model = randomize(model.eval(), seed=seed)
    for layer in model.layers:
        if isinstance(layer, XnorConv) and layer.inner.conv.in_channels % 32 == 0:
            _mirror_harness_xnor(layer)
    (workdir / "model.cfg").write_text(text)
    save_darknet_weights(model, workdir / "model.weights")
    for name in ("9k.tree", "coco9k.map", "inet9k.map"):  # tree= / map= are opened relative to the cwd
        (workdir / "data").mkdir(exist_ok=True)
        if (ZOO / name).exists() and not (workdir / "data" / name).exists():
            (workdir / "data" / name).symlink_to(ZOO / name)
    n = model.net
    x = torch.rand(1, n.channels, n.height, n.width, generator=torch.Generator().manual_seed(seed))
    layers, what = _oracle_layers(parse_cfg_text(text))
    fuse = "xnor" in text  # xnor layers: compared with the BN-folded path every Darknet detector command runs
    theirs = oracle.run_indexed(workdir / "model.cfg", workdir / "model.weights", x.numpy(), layers, timeout=600,
                                fuse=fuse)
    with torch.no_grad():
        ours = model.layer_outputs(x, [i for i, _, _ in theirs])
    return max(_compare(ours[i], a, f"{_name(cfg)} {what} {i} ({kind})") for i, kind, a in theirs)


PARAMS = [pytest.param(c, id=_name(c), marks=[pytest.mark.slow] if _name(c) in SLOW else [])
          for c in ZOO_CFGS if _name(c) not in DARKNET_REJECTS | set(NOT_IMPLEMENTED)]


@pytest.mark.parametrize("cfg", PARAMS)
def test_zoo_cfg_equals_darknet(cfg: Path, oracle, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_zoo_cfg(cfg, oracle, tmp_path)


@pytest.mark.parametrize("name", PJREDDIE_SHORTCUTS)
def test_pjreddie_shortcut_cfgs_rejected_by_darknet_built_with_pjreddies_rule(name: str, oracle, tmp_path) -> None:
    cfg = ZOO / name
    text, model = _reduced(cfg)
    odd = [m for m in model.layers if getattr(m, "pjreddie", None) is not None]
    assert odd, f"{name}: no shortcut between maps of different sizes"
    (tmp_path / "model.cfg").write_text(text)
    x = np.zeros((1, model.net.channels, model.net.height, model.net.width), np.float32)
    with pytest.raises(oracle.OracleError, match="parse_shortcut"):
        oracle.run(tmp_path / "model.cfg", None, x, "last", timeout=600)


@pytest.mark.parametrize("name, key", sorted(UNKNOWN_KEYS.items()))
def test_keys_no_darknet_layer_reads_are_errors_by_default(name: str, key: str) -> None:
    cfg = need_zoo(name)
    with pytest.raises(CfgError, match=f"{key}: unknown key .*did you mean"):
        Darknet.from_cfg(cfg)


@pytest.mark.parametrize("name", sorted(NOT_IMPLEMENTED))
def test_not_implemented_cfgs_give_a_clear_error(name: str) -> None:
    with pytest.raises(CfgError, match=NOT_IMPLEMENTED[name]):
        Darknet.from_cfg(need_zoo(name))


def need_zoo(name: str) -> Path:
    if not (ZOO / name).exists():
        pytest.skip(f"{ZOO / name} is not available (../shared is absent)")
    return ZOO / name


@pytest.mark.parametrize("name", sorted(DARKNET_CPU_BUGS))
def test_darknet_cpu_relu6_is_zero_yolodet_computes_relu6(name: str, oracle, tmp_path) -> None:
    text, model = _reduced(need_zoo(name))
    model = randomize(model.eval())
    (tmp_path / "model.cfg").write_text(text)
    save_darknet_weights(model, tmp_path / "model.weights")
    x = torch.rand(1, 3, model.net.height, model.net.width, generator=torch.Generator().manual_seed(0))
    layer = DARKNET_CPU_BUGS[name]
    [theirs] = oracle.run(tmp_path / "model.cfg", tmp_path / "model.weights", x.numpy(), [layer], timeout=600)
    with torch.no_grad():
        ours = model.layer_outputs(x, [layer])[layer]
    assert not theirs.any(), "Darknet's CPU relu6 is no longer all zeros: compare this cfg in the main test"
    assert ours.max() > 0 and ours.max() <= 6 and ours.min() == 0


ROUND_TRIP_DEFAULT = ("yolov1/tiny-yolo.cfg", "yolov1/yolo.cfg", "yolov2-tiny.cfg", "yolov4-tiny_contrastive.cfg")
"""The cfgs whose weights round trip runs by default (new weighted layers: [local], [detection], [region] ...);
the rest are marked slow (building every zoo model twice takes minutes here)."""
ROUND_TRIP = [pytest.param(c, id=_name(c), marks=[] if _name(c) in ROUND_TRIP_DEFAULT else [pytest.mark.slow])
              for c in ZOO_CFGS if _name(c) not in set(NOT_IMPLEMENTED)]


@pytest.mark.parametrize("cfg", ROUND_TRIP)
def test_zoo_weights_round_trip_and_partial(cfg: Path, tmp_path: Path) -> None:
    """save -> load into a fresh model -> save gives the same bytes; a ``*.conv.N`` cut loads as N layers."""
    from yolodet.modeling.weights import load_darknet_weights

    text, model = _reduced(cfg)
    keys = "ignore" if _name(cfg) in UNKNOWN_KEYS else "error"
    randomize(model, seed=3)
    save_darknet_weights(model, tmp_path / "a.weights")
    fresh = Darknet.from_cfg_text(text, str(cfg), unknown_keys=keys)
    report = load_darknet_weights(fresh, tmp_path / "a.weights")
    assert report.complete
    save_darknet_weights(fresh, tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    weighted = [i for i, m in enumerate(model.layers) if m.darknet_tensors()]
    if len(weighted) > 1:
        cut = weighted[len(weighted) // 2]
        save_darknet_weights(model, tmp_path / "c.weights", cutoff=cut)
        part = load_darknet_weights(Darknet.from_cfg_text(text, str(cfg), unknown_keys=keys), tmp_path / "c.weights")
        assert part.layers_filled == weighted[len(weighted) // 2 - 1] + 1 and not part.complete
