"""The ``[Gaussian_yolo]`` loss against Darknet's own training deltas (``tests/oracle/delta_dump.c`` running
AlexeyAB's ``forward_gaussian_yolo_layer`` with ``state.train = 1``): yolodet's gradient w.r.t. the raw head output
must be minus Darknet's ``l.delta``, uncertainty channels included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from test_loss_region import TRUTHS, assert_deltas_match, compare_with_darknet, delta_exe  # noqa: F401
from yolodet.modeling.model import Darknet
from yolodet.training.criterion import build_loss

GAUSSIAN = FIXTURES / "gaussian.cfg"
TWO_CLASS_TRUTHS = TRUTHS.copy()
TWO_CLASS_TRUTHS[:, 4] = [1, 0, 0, 1, 1]
# A second box in the cell of box 0 with the same anchor: box deltas add up and are averaged over the classes.
TWO_CLASS_TRUTHS = np.concatenate([TWO_CLASS_TRUTHS, [[0.31, 0.41, 0.21, 0.29, 0]]]).astype(np.float32)

VARIANTS = {
    "normalizers-scale_x_y": {},
    "iou_thresh-label_smooth-max_delta": {"truth_thresh=1": "truth_thresh=1\niou_thresh=0.2\nlabel_smooth_eps=0.1"
                                          "\nmax_delta=0.3", "ignore_thresh=.5": "ignore_thresh=.3"},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_gaussian_gradient_is_darknets_delta(variant: str, delta_exe: Path, tmp_path: Path) -> None:
    text = GAUSSIAN.read_text()
    for old, new in VARIANTS[variant].items():
        assert old in text
        text = text.replace(old, new)
    [(ours, theirs)] = compare_with_darknet(text, TWO_CLASS_TRUTHS, 0, delta_exe, tmp_path)
    assert_deltas_match(ours, theirs)
    sigmas = theirs.reshape(3, 11, 8, 8)[:, [1, 3, 5, 7]]
    assert np.abs(sigmas).max() > 0  # the uncertainty channels are trained


def test_gaussian_loss_prefers_a_confident_correct_box() -> None:
    model = Darknet.from_cfg(GAUSSIAN)
    loss = build_loss(model)
    cx, cy, w, h = 4.5 / 8, 4.5 / 8, 24 / 64, 20 / 64  # anchor 3's size, centred in cell (4, 4)
    target = torch.tensor([[0, 1, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])
    out = torch.zeros(1, 33, 8, 8)
    out.view(3, 11, 8, 8)[1, (1, 3, 5, 7)] = -3.0  # small sigmas everywhere
    sure = loss([out], target, (64, 64))["box"]
    out.view(3, 11, 8, 8)[1, (1, 3, 5, 7)] = 3.0
    unsure = loss([out], target, (64, 64))["box"]
    assert sure.item() < unsure.item()  # d = .5 - .5 = 0 at the centre, log(s + .3) decides
