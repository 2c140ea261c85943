"""Anchors by k-means on IoU, fine-tuning cfgs, and their two command-line tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, REFERENCE_CFGS, SHARED, need_shared
from yolodet.training.anchors import box_sizes, kmeans_anchors, mean_best_iou, wh_iou
from yolodet.cfg import CfgError, parse_cfg_text
from yolodet.cfg.edit import finetune_cfg, format_anchors, set_classes
from yolodet.data.sample import DatasetSource, Sample
from yolodet.modeling.model import Darknet


def test_wh_iou_hand_computed() -> None:
    iou = wh_iou(np.array([[10.0, 20.0]]), np.array([[10.0, 20.0], [20.0, 10.0], [5.0, 5.0]]))
    np.testing.assert_allclose(iou, [[1.0, 100 / 300, 25 / 200]])


def test_kmeans_recovers_well_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[12.0, 16.0], [60.0, 40.0], [150.0, 220.0]])
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (50, 2)) for c in centres])
    anchors, iou = kmeans_anchors(wh, 3, seed=1)
    np.testing.assert_allclose(anchors, centres, rtol=0.03)
    assert iou == pytest.approx(mean_best_iou(wh, anchors)) and iou > 0.9
    again, _ = kmeans_anchors(wh, 3, seed=1)
    np.testing.assert_array_equal(anchors, again)
    with pytest.raises(ValueError):
        kmeans_anchors(wh, 0)


def test_box_sizes_are_in_network_pixels() -> None:
    source = DatasetSource(["a"], [Sample(Path("x.jpg"), np.array([[0.1, 0.2, 0.3, 0.6]], np.float32),
                                          np.array([0]), 0)], [])
    np.testing.assert_allclose(box_sizes(source, 416, 320), [[0.2 * 416, 0.4 * 320]], rtol=1e-6)


def test_set_classes_fixes_classes_filters_and_anchors() -> None:
    text = (FIXTURES / "overfit.cfg").read_text()
    anchors = [[5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]
    out = set_classes(text, 4, anchors=anchors)
    model = Darknet.from_cfg_text(out)
    assert model.num_classes == 4 and all(h.all_anchors[0] == (5, 6) for h in model.heads)
    assert model.layers[9].out_shape[0] == 27 and model.layers[13].out_shape[0] == 27
    assert "# 11: back to layer 6 (8x8)" in out  # comments survive
    with pytest.raises(CfgError, match="anchors"):
        set_classes(text, 4, anchors=anchors[:3])


@pytest.mark.parametrize("cfg", [p for p in REFERENCE_CFGS if p.stem.startswith("yolo")],
                         ids=lambda p: p.stem)
def test_finetune_cfg_of_reference_cfgs(cfg: Path) -> None:
    out = finetune_cfg(need_shared(cfg).read_text(), 3, width=320, height=320)
    model = Darknet.from_cfg_text(out)
    net = parse_cfg_text(out)[0]
    assert model.num_classes == 3 and (model.net.width, model.net.height) == (320, 320)
    assert (net.get_int("batch"), net.get_int("max_batches"), net.get_str("steps")) == (64, 6000, "4800,5400")


@pytest.mark.parametrize("name, filters", [("yolov2-tiny.cfg", 30), ("yolov2-voc.cfg", 30),
                                           ("Gaussian_yolov3_BDD.cfg", 30)])
def test_finetune_cfg_of_region_and_gaussian_heads(oracle, tmp_path: Path, name: str, filters: int) -> None:
    """``[region]``: num * (coords + 1 + N) filters; ``[Gaussian_yolo]``: (N + 9) per anchor. Darknet C, which
    refuses a head whose conv has other filters, runs the edited cfg, and yolodet builds it."""
    cfg = tmp_path / name
    text = need_shared(SHARED / "data" / "darknet-zoo" / name).read_text()
    cfg.write_text(finetune_cfg(text, 1, batch=1, width=128, height=128))
    model = Darknet.from_cfg(cfg)
    assert model.num_classes == 1
    heads = oracle.run(cfg, None, np.random.default_rng(0).random((1, 3, 128, 128), np.float32))
    assert [h.shape[1] for h in heads] == [filters] * len(model.heads)


def test_region_anchors_are_not_set_in_pixels() -> None:
    text = need_shared(SHARED / "data" / "darknet-zoo" / "yolov2-tiny.cfg").read_text()
    with pytest.raises(CfgError, match="grid cells"):
        set_classes(text, 1, anchors=[[10, 14]] * 5)


def test_format_anchors_rounds_like_darknet() -> None:
    assert format_anchors([[10.4, 13.6], [0.2, 300.5]]) == "10,14, 1,300"


def _cli(module: str, argv: list[str]) -> int:
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        tool = importlib.import_module(module)
    finally:
        sys.path.pop(0)
    return tool.main(tool.get_args_parser().parse_args(argv))


def test_make_cfg_and_calc_anchors_cli(tmp_path: Path, capsys) -> None:
    raccoon = need_shared(SHARED / "data" / "raccoon")
    out = tmp_path / "raccoon.cfg"
    assert _cli("make_cfg", ["--cfg", str(FIXTURES / "overfit.cfg"), "--data", str(raccoon), "--output",
                             str(out), "--anchors", "--max-batches", "600"]) == 0
    model = Darknet.from_cfg(out)
    assert model.num_classes == 1 and model.heads[0].all_anchors != (10, 10)
    assert _cli("calc_anchors", ["--data", str(raccoon), "--num", "6", "--width", "64", "--height", "64"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("anchors = ") and len(line.split("=")[1].split(",")) == 12
    assert _cli("make_cfg", ["--cfg", str(FIXTURES / "overfit.cfg"), "--output", str(out)]) == 2  # no classes
