"""OpenCV's DNN module runs Darknet cfg+weights independently of yolodet: our raw outputs must equal its outputs.

Weights are random (non-trivial BN statistics), written by our saver and read by ``cv2.dnn.readNetFromDarknet``,
so this checks the cfg grammar, every layer rule and the weights layout at once.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import FIXTURES, REFERENCE_CFGS, randomize
from yolodet.modeling.blocks.structural import Shortcut, Softmax
from yolodet.cfg import parse_cfg_text
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights

CFGS = [FIXTURES / "tiny.cfg", *REFERENCE_CFGS]


def _prefix_cfg(text: str, layers: int) -> str:
    """The cfg text of ``[net]`` and the first ``layers`` sections."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if line.strip().startswith("[")]
    end = headers[layers + 1] if layers + 1 < len(headers) else len(lines)
    return "\n".join(lines[:end]) + "\n"


def _comparable_layers(model: Darknet) -> int:
    """How many leading layers OpenCV can run. OpenCV's Eltwise cannot add maps of different spatial size, so a
    cfg with such a shortcut (pjreddie's ``resnet50.cfg``) is compared up to the layer before it; the shortcut rule
    itself is checked in ``test_blocks.py``."""
    shapes = [layer.out_shape for layer in model.layers]
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Shortcut) and any(shapes[s][1:] != layer.out_shape[1:] for s in layer.sources):
            return i
    return len(model.layers)


def _assert_close(ours: torch.Tensor, theirs: np.ndarray, what: str, atol: float = 1e-3) -> None:
    ours = ours.detach().numpy().reshape(-1)
    theirs = np.asarray(theirs).reshape(-1)
    assert ours.shape == theirs.shape, f"{what}: {ours.shape} vs OpenCV {theirs.shape}"
    assert theirs.std() > 10 * atol or atol < 1e-4, f"{what}: degenerate reference output, the comparison would prove nothing"
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=1e-4, err_msg=what)


@pytest.mark.parametrize("cfg", CFGS, ids=[p.stem for p in CFGS])
def test_raw_outputs_match_opencv(cfg: Path, tmp_path: Path) -> None:
    text = cfg.read_text()
    model = randomize(Darknet.from_cfg_text(text, str(cfg)).eval(), seed=1)
    n = _comparable_layers(model)
    if n < len(model.layers):
        text = _prefix_cfg(text, n)
        model = randomize(Darknet.from_cfg_text(text, str(cfg)).eval(), seed=1)
    weights = tmp_path / "model.weights"
    save_darknet_weights(model, weights)
    (tmp_path / "model.cfg").write_text(text)
    net = cv2.dnn.readNetFromDarknet(str(tmp_path / "model.cfg"), str(weights))
    x = torch.rand(1, model.net.channels, model.net.height, model.net.width, generator=torch.Generator().manual_seed(0))
    net.setInput(x.numpy())
    with torch.no_grad():
        ours = model(x)
    if model.heads:  # the raw output of each head's conv (OpenCV names it conv_<index>)
        theirs = net.forward([f"conv_{h.layer - 1}" for h in model.heads])
        for h, a, b in zip(model.heads, ours, theirs):
            _assert_close(a, b, f"{cfg.name} head at layer {h.layer}")
    else:
        softmax = isinstance(model.layers[-1], Softmax)  # probabilities ~1e-3: compare them on their own scale
        _assert_close(ours[0], net.forward(), f"{cfg.name} final output", atol=1e-5 if softmax else 1e-3)
        if softmax:  # a flat or saturated softmax hides errors: check its input too
            before = _prefix_cfg(text, len(model.layers) - 1)
            (tmp_path / "head.cfg").write_text(before)
            net = cv2.dnn.readNetFromDarknet(str(tmp_path / "head.cfg"), str(weights))
            net.setInput(x.numpy())
            inner = Darknet(parse_cfg_text(before))
            inner.load_state_dict(model.state_dict(), strict=False)
            with torch.no_grad():
                _assert_close(inner.eval()(x)[0], net.forward(), f"{cfg.name} logits")
