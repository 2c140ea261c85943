"""The ``[region]`` (YOLOv2) loss against Darknet's own training deltas: ``tests/oracle/delta_dump.c`` runs
AlexeyAB's ``forward_region_layer`` with ``state.train = 1`` on the same network, weights, input and truths, and
yolodet's gradient w.r.t. the raw head output must be minus its ``l.delta``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import delta_oracle
from conftest import FIXTURES, ORACLE, randomize
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights
from yolodet.training.criterion import build_loss

REGION = FIXTURES / "region.cfg"
# (cx, cy, w, h, class) as fractions; boxes 0 and 1 share a cell, box 3 is large (overlaps many predictions).
TRUTHS = np.array([[0.30, 0.40, 0.20, 0.30, 1], [0.32, 0.42, 0.50, 0.40, 2], [0.70, 0.20, 0.08, 0.12, 0],
                   [0.55, 0.60, 0.80, 0.70, 2], [0.12, 0.85, 0.15, 0.10, 1]], dtype=np.float32)


@pytest.fixture(scope="session")
def delta_exe(tmp_path_factory) -> Path:
    """The delta harness, built once (cached across sessions); skips without the Darknet sources or compilers."""
    darknet = ORACLE / "darknet"
    if not (darknet / "src" / "region_layer.c").is_file():
        pytest.skip(f"no Darknet sources at {darknet}")
    try:
        return delta_oracle.build(darknet)
    except delta_oracle.DeltaOracleError as exc:
        pytest.skip(f"the delta harness does not build here: {str(exc).splitlines()[0]}")


def targets_from(truths: np.ndarray) -> torch.Tensor:
    """[N, 5] (cx, cy, w, h, class) -> yolodet's [N, 6] (image 0, class, x1, y1, x2, y2)."""
    t = torch.from_numpy(truths).double()
    xy, wh = t[:, :2], t[:, 2:4]
    return torch.cat((torch.zeros(len(t), 1, dtype=t.dtype), t[:, 4:5], xy - wh / 2, xy + wh / 2), 1).float()


def compare_with_darknet(cfg_text: str, truths: np.ndarray, seen: int, exe: Path, tmp: Path
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(yolodet's -dLoss/doutput, Darknet's l.delta) per head, same random weights and input."""
    cfg = tmp / "net.cfg"
    cfg.write_text(cfg_text)
    model = randomize(Darknet.from_cfg(cfg), seed=3).eval()
    save_darknet_weights(model, tmp / "net.weights")
    x = torch.rand(1, 3, model.net.height, model.net.width, generator=torch.Generator().manual_seed(5))
    darknet = delta_oracle.run(exe, cfg, tmp / "net.weights", x[0].numpy(), truths, seen, tmp)
    with torch.no_grad():
        outputs = [o.detach().requires_grad_() for o in model(x)]
    build_loss(model)(outputs, targets_from(truths), (model.net.width, model.net.height), seen=seen)["total"].backward()
    assert sorted(darknet) == [h.layer for h in model.heads]
    return [(-o.grad[0].flatten().numpy(), darknet[h.layer][1]) for o, h in zip(outputs, model.heads)]


def assert_deltas_match(ours: np.ndarray, theirs: np.ndarray) -> None:
    scale = np.abs(theirs).max()
    assert scale > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


VARIANTS = {
    "softmax-bias_match-rescore-prior": ({"thresh=.6": "thresh=.4"}, 0),
    "raw-classes-predicted-size-match": ({"softmax=1": "softmax=0", "bias_match=1": "bias_match=0",
                                          "rescore=1": "rescore=0", "coord_scale=1": "coord_scale=2",
                                          "class_scale=1": "class_scale=0.5", "thresh=.6": "thresh=.3"}, 64000),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_region_gradient_is_darknets_delta(variant: str, delta_exe: Path, tmp_path: Path) -> None:
    edits, seen = VARIANTS[variant]
    text = REGION.read_text()
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    [(ours, theirs)] = compare_with_darknet(text, TRUTHS, seen, delta_exe, tmp_path)
    assert_deltas_match(ours, theirs)
    obj = theirs.reshape(3, 8, 8, 8)[:, 4]
    assert (obj == 0).sum() > 0  # some predictions overlap a truth by more than thresh: the ignore rule is used


def test_region_prior_stops_after_12800_images() -> None:
    model = Darknet.from_cfg(REGION)
    out = torch.ones(1, 24, 8, 8, requires_grad=True)
    loss = build_loss(model)
    early = loss([out], torch.zeros(0, 6), (64, 64), seen=12799)["box"]
    late = loss([out], torch.zeros(0, 6), (64, 64), seen=12800)["box"]
    assert early.item() > 0 and late.item() == 0  # no truths: the prior is the only box term
