"""Tests for yolodet.evaluation and tools/eval_coco.py on tiny self-made COCO sets (no ../shared needed).

The AP arithmetic is checked with detections we write by hand (hand-computed COCO AP); the full ``evaluate``
and the CLI run a tiny random-weight model for the flow and the formats.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT, randomize
from yolodet.modeling.checkpoint import save_checkpoint
from yolodet.data import read_coco
from yolodet.inference.loader import InferenceDataset, collate_inference
from yolodet.data.images import read_image_stb, stb_available
from yolodet.inference.detector import Detector
from yolodet.evaluation import (
    COCO80_TO_91,
    STAT_NAMES,
    category_mapping,
    coco_evaluate,
    detections_to_coco,
    evaluate,
    per_class_ap,
)
from yolodet.modeling.model import Darknet
from yolodet.inference.optimize import fast_precision
from yolodet.inference.postprocess import Detections
from yolodet.data.images import ImageReadError, read_image

TINY_CFG = FIXTURES / "tiny.cfg"
DECODERS = ["opencv", pytest.param("stb", marks=pytest.mark.skipif(not stb_available(), reason="not built"))]


def _load_tool():
    spec = importlib.util.spec_from_file_location("eval_coco", ROOT / "tools" / "eval_coco.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_set(root: Path, category_ids: list[int], names: list[str]) -> Path:
    """Three images: one with objects, one without ground truth, one corrupt file; returns the json path."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "000000000001.jpg"), rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "000000000002.png"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (images / "000000000003.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    gt = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 80, "height": 48},
                   {"id": 2, "file_name": "000000000002.png", "width": 40, "height": 40},
                   {"id": 3, "file_name": "000000000003.jpg", "width": 64, "height": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": category_ids[0], "bbox": [5, 5, 30, 20], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": category_ids[-1], "bbox": [40, 10, 30, 30], "area": 900,
             "iscrowd": 0},
            {"id": 3, "image_id": 3, "category_id": category_ids[0], "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(category_ids, names)],
    }
    path = root / "annotations" / "instances.json"
    path.parent.mkdir()
    path.write_text(json.dumps(gt))
    return path


@pytest.fixture(scope="module")
def custom_set(tmp_path_factory) -> Path:
    """A 2-class set with its own category ids (5 = cat, 9 = dog)."""
    return _write_set(tmp_path_factory.mktemp("custom"), [5, 9], ["cat", "dog"])


@pytest.fixture(scope="module")
def tiny_model() -> Darknet:
    return randomize(Darknet.from_cfg(TINY_CFG), seed=1)


# --- category ids ----------------------------------------------------------------------------------------------

def test_category_mapping_coco_ids_use_darknet_table() -> None:
    assert len(COCO80_TO_91) == 80 and COCO80_TO_91[0] == 1 and COCO80_TO_91[-1] == 90 and 12 not in COCO80_TO_91
    assert category_mapping(80, COCO80_TO_91) == (list(COCO80_TO_91), "coco80")
    # a subset of official ids (e.g. only the classes present) is still COCO numbering
    assert category_mapping(80, [1, 3, 90], [1, 3, 90]) == (list(COCO80_TO_91), "coco80")


def test_category_mapping_custom_ids_are_identity() -> None:
    assert category_mapping(2, [9, 5], [5, 9]) == ([5, 9], "identity")
    assert category_mapping(2, [1, 2]) == ([1, 2], "identity")
    # a Darknet .data set converted by to_coco_gt numbers its 80 classes 1..80: not COCO ids
    assert category_mapping(80, range(1, 81)) == (list(range(1, 81)), "identity")


def test_category_mapping_rejects_a_model_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="model has 80 classes but the ground truth has 2"):
        category_mapping(80, [1, 2])


# --- results format and hand-computed AP -----------------------------------------------------------------------

def test_results_format() -> None:
    det = Detections(boxes=torch.tensor([[10.0, 20.0, 50.5, 80.25], [0.0, 0.0, 640.0, 480.0]]),
                     scores=torch.tensor([0.75, 0.0051]), labels=torch.tensor([0, 79]))
    entries = detections_to_coco(det, np.int64(42), COCO80_TO_91)
    assert entries == [
        {"image_id": 42, "category_id": 1, "bbox": [10.0, 20.0, 40.5, 60.25], "score": 0.75},
        {"image_id": 42, "category_id": 90, "bbox": [0.0, 0.0, 640.0, 480.0],
         "score": pytest.approx(0.0051, abs=1e-9)},
    ]
    assert all(type(e["image_id"]) is int and type(e["category_id"]) is int for e in entries)
    json.dumps(entries)  # plain Python types only
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert detections_to_coco(empty, 1, [1]) == []


def _hand_gt() -> dict:
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 100], "area": 5000, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def test_hand_computed_ap() -> None:
    """Class a: TP .9, FP .85 (on image 2, which has no ground truth: it must count), FP .8, TP .7 ->
    precision 1 up to recall .5, then 2/4: AP = (51 * 1 + 50 * 0.5) / 101 at every IoU (exact boxes).
    Class b: one detection of IoU 0.64 -> matched at IoU .50, .55, .60 only: AP50 1, AP 3/10."""
    dets = {
        1: Detections(torch.tensor([[10.0, 10, 40, 40], [0, 60, 20, 80], [60, 60, 90, 90], [0, 0, 32, 100]]),
                      torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([0, 0, 0, 1])),
        2: Detections(torch.tensor([[50.0, 50, 70, 70]]), torch.tensor([0.85]), torch.tensor([0])),
    }
    results = [r for image_id, d in dets.items() for r in detections_to_coco(d, image_id, [1, 2])]
    scores = coco_evaluate(_hand_gt(), results)
    ap_a, ap_b, ap50_b = 76 / 101, 0.3, 1.0
    assert scores.stats[STAT_NAMES.index("AP")] == pytest.approx((ap_a + ap_b) / 2, abs=1e-6)
    assert scores.stats[STAT_NAMES.index("AP50")] == pytest.approx((ap_a + ap50_b) / 2, abs=1e-6)
    rows = per_class_ap(scores, [1, 2], ["a", "b"], {1: 2, 2: 1})
    assert [(r.name, r.num_gt) for r in rows] == [("a", 2), ("b", 1)]
    assert rows[0].ap == pytest.approx(ap_a, abs=1e-6) and rows[0].ap50 == pytest.approx(ap_a, abs=1e-6)
    assert rows[1].ap == pytest.approx(ap_b, abs=1e-6) and rows[1].ap50 == pytest.approx(ap50_b, abs=1e-6)
    # evaluating image 1 only drops the false positive of image 2: precision 2/3 at recall 1
    only_1 = coco_evaluate(_hand_gt(), [r for r in results if r["image_id"] == 1], image_ids=[1])
    assert only_1.stats[1] == pytest.approx(((51 + 50 * 2 / 3) / 101 + 1.0) / 2, abs=1e-6)


def test_coco_evaluate_without_detections_and_unknown_images() -> None:
    assert coco_evaluate(_hand_gt(), []).stats == [0.0] * 12
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(_hand_gt(), [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])


# --- loader: unreadable images ---------------------------------------------------------------------------------

@pytest.mark.parametrize("decoder", DECODERS)
def test_loader_reports_unreadable_images(custom_set: Path, decoder: str) -> None:
    images = sorted((custom_set.parent.parent / "images").iterdir())
    ds = InferenceDataset(images + [custom_set.parent / "missing.jpg"], (64, 64), "darknet-letterbox",
                          decoder=decoder, keep_original=True)
    batch = collate_inference([ds[i] for i in range(len(ds))])
    assert batch.images.shape == (2, 3, 64, 64) and batch.indices == [0, 1] and len(batch.originals) == 2
    assert [(i, p.name) for i, p, _ in batch.failures] == [(2, "000000000003.jpg"), (3, "missing.jpg")]
    assert "no such file" in batch.failures[1][2]
    empty = collate_inference([ds[2]])
    assert len(empty) == 0 and len(empty.failures) == 1


@pytest.mark.skipif(not stb_available(), reason="yolodet._stb_image not built")
def test_stb_reader_matches_opencv_on_lossless_images(custom_set: Path, tmp_path: Path) -> None:
    png = custom_set.parent.parent / "images" / "000000000002.png"
    np.testing.assert_array_equal(read_image_stb(png), read_image(png))
    with pytest.raises(ImageReadError, match="stb_image cannot decode"):
        read_image_stb(custom_set.parent.parent / "images" / "000000000003.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image_stb(tmp_path / "empty.jpg")


# --- evaluate: the whole flow on a tiny model ------------------------------------------------------------------

@pytest.mark.parametrize("decoder", DECODERS)
def test_evaluate_custom_ids_bare_model(custom_set: Path, tiny_model: Darknet, decoder: str) -> None:
    source = read_coco(custom_set)
    tiny_model.train()
    result = evaluate(tiny_model, source, img_size=64, batch_size=2, decoder=decoder, progress=False)
    assert tiny_model.training, "the model's train mode must be restored"
    assert result.category_rule == "identity" and result.category_ids == [5, 9]
    assert result.num_images == 3 and result.num_unreadable == 1
    assert result.unreadable[0][0].name == "000000000003.jpg"
    assert result.results, "a random model at conf 0.005 finds something"
    assert {r["image_id"] for r in result.results} == {1, 2}  # the image without ground truth is evaluated
    assert {r["category_id"] for r in result.results} <= {5, 9}
    for r in result.results:
        x, y, w, h = r["bbox"]
        size = (80, 48) if r["image_id"] == 1 else (40, 40)
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= size[0] + 1e-3 and y + h <= size[1] + 1e-3
        assert 0.005 < r["score"] <= 1
    assert len(result.stats) == 12 and result.ap == result.stats[0] and result.ap50 == result.stats[1]
    assert [(c.name, c.category_id, c.num_gt) for c in result.per_class] == [("cat", 5, 2), ("dog", 9, 1)]
    assert result.protocol == {"img_size": [64, 64], "preprocess": "darknet-resize", "precision": "fp32",
                               "conf_thres": 0.005, "nms_thres": 0.45, "max_det": 100, "decoder": decoder}
    assert result.images_per_s > 0


def test_evaluate_keeps_the_detectors_precision_with_overrides(custom_set: Path, tiny_model: Darknet) -> None:
    """A size/preprocess override rebuilds the Detector; its precision (and optimisation) must survive."""
    detector = Detector(tiny_model, img_size=96, precision="bf16", optimize=True)
    source = read_coco(custom_set)
    result = evaluate(detector, source, img_size=64, preprocess="darknet-letterbox", batch_size=2, progress=False)
    assert result.protocol["precision"] == "bf16" and result.protocol["img_size"] == [64, 64]
    assert result.protocol["preprocess"] == "darknet-letterbox" and result.results


def test_evaluate_coco_ids_with_an_80_class_detector(tmp_path: Path) -> None:
    cfg = TINY_CFG.read_text().replace("classes=2", "classes=80").replace("filters=21", "filters=255")
    model = randomize(Darknet.from_cfg_text(cfg, "tiny80.cfg"), seed=2)
    with torch.no_grad():  # only classes 0 and 79 can score: keeps the candidate count (and the test) small
        for head in model.heads:
            bias = model.layers[head.layer - 1].conv.bias.view(head.num_anchors, 85)
            bias[:, 5:] = -20.0
            bias[:, [5, 84]] = 0.0
    names = [f"c{i}" for i in range(80)]
    ann = _write_set(tmp_path, list(COCO80_TO_91), names)
    detector = Detector(model, img_size=64, preprocess="darknet-letterbox")
    result = evaluate(detector, read_coco(ann), gt=json.loads(ann.read_text()), conf_thres=0.005, workers=0,
                      progress=False)
    assert result.category_rule == "coco80" and result.category_ids == list(COCO80_TO_91)
    assert {r["category_id"] for r in result.results} == {1, 90}  # class 0 -> 1 person, 79 -> 90 toothbrush
    assert result.protocol["preprocess"] == "darknet-letterbox"
    assert [c.num_gt for c in result.per_class if c.num_gt] == [2, 1]  # classes 0 (id 1) and 79 (id 90)
    assert math.isnan(result.per_class[1].ap)  # no ground truth: not scored


# --- the CLI ---------------------------------------------------------------------------------------------------

def test_cli_end_to_end(custom_set: Path, tiny_model: Darknet, tmp_path: Path, capsys, caplog) -> None:
    tool = _load_tool()
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model, ckpt)
    results, plots = tmp_path / "out" / "results.json", tmp_path / "plots"
    args = tool.get_args_parser().parse_args([
        "--weights", str(ckpt), "--annotations", str(custom_set), "--img-size", "64", "--workers", "0",
        "--device", "cpu", "--results", str(results), "--plots", str(plots), "--no-progress"])
    assert tool.main(args) == 0
    out = capsys.readouterr()
    last = out.out.strip().splitlines()[-1]
    assert re.fullmatch(r"AP=\d\.\d{4} AP50=\d\.\d{4}", last), last
    assert "1 unreadable" in out.out and "000000000003.jpg" in caplog.text
    entries = json.loads(results.read_text())
    assert entries and set(entries[0]) == {"image_id", "category_id", "bbox", "score"}
    assert not [p for p in results.parent.iterdir() if p.name != "results.json"], "no temp files left"
    assert (plots / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_darknet_data_file(tiny_model: Darknet, tmp_path: Path, capsys) -> None:
    """A Darknet .data set: ground truth converted on the fly, ids 1..N (identity)."""
    tool = _load_tool()
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model, ckpt)
    args = tool.get_args_parser().parse_args([
        "--cfg", str(TINY_CFG), "--weights", str(ckpt), "--data", str(FIXTURES / "data" / "darknet" / "tiny.data"),
        "--img-size", "64", "--preprocess", "darknet-letterbox", "--workers", "0", "--no-progress",
        "--results", str(tmp_path / "r.json"), "--half"])
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    assert "1 images (0 unreadable)" in out and "category ids identity" in out and "darknet-letterbox" in out
    assert f"darknet-letterbox, {fast_precision('cpu')}," in out  # the fast mode, as the protocol line says
    assert {e["image_id"] for e in json.loads((tmp_path / "r.json").read_text())} == {42}
    assert {e["category_id"] for e in json.loads((tmp_path / "r.json").read_text())} <= {1, 2}


@pytest.mark.parametrize("argv, message", [
    (["--cfg", str(TINY_CFG), "--annotations", "nope.json"], "--annotations nope.json: no such file"),
    (["--cfg", str(TINY_CFG), "--weights", "nope.weights", "--annotations", str(TINY_CFG)], "nope.weights"),
    (["--cfg", str(TINY_CFG)], "exactly one of --annotations"),
    (["--cfg", "nope.cfg", "--data", str(FIXTURES / "data" / "darknet" / "tiny.data")], "--cfg nope.cfg"),
    (["--cfg", str(TINY_CFG), "--data", str(FIXTURES / "data" / "darknet" / "tiny.data"), "--threads", "0"],
     "--threads must be >= 1"),
])
def test_cli_bad_inputs_exit_2_without_traceback(argv: list[str], message: str, caplog) -> None:
    tool = _load_tool()
    assert tool.main(tool.get_args_parser().parse_args(argv)) == 2
    assert message in caplog.text and "Traceback" not in caplog.text
