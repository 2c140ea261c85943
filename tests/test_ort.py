"""``Detector(..., backend="onnxruntime")`` (:mod:`yolodet.inference.ort`): the network runs as an ONNX graph in
ONNX Runtime, everything else is yolodet's; its outputs, detections and coco128 AP equal the native path's.

Skipped without onnxruntime (``pip install yolodet[onnx]``) or ``../shared``; the missing-package error is
tested either way.
"""

from __future__ import annotations

import builtins
import json

import pytest
import torch

from conftest import COCO128, OFFICIAL_TINY, ROOT, SHARED, need_shared, randomize
from yolodet.inference.detector import Detector
from yolodet.inference.onnx_graph import OnnxUnavailableError
from yolodet.modeling.model import Darknet


def test_missing_onnxruntime_says_how_to_install(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_ort)
    model = Darknet.from_cfg(ROOT / "cfg" / "yolo-v3-tiny.cfg")
    with pytest.raises(OnnxUnavailableError, match=r"pip install yolodet\[onnx\]"):
        Detector(model, backend="onnxruntime")


def test_unknown_backend_and_reduced_precision_are_refused() -> None:
    pytest.importorskip("onnxruntime")
    model = Darknet.from_cfg(ROOT / "cfg" / "yolo-v3-tiny.cfg")
    with pytest.raises(ValueError, match="unknown backend"):
        Detector(model, backend="tensorrt")
    with pytest.raises(ValueError, match="fp32 only"):
        Detector(model, backend="onnxruntime", precision="bf16")


def test_backend_outputs_and_detections_equal_native() -> None:
    pytest.importorskip("onnxruntime")
    model = randomize(Darknet.from_cfg(ROOT / "cfg" / "yolo-v4-tiny.cfg")).eval()
    native = Detector(model, optimize=False)
    onnx_det = Detector(model, backend="onnxruntime")
    x = torch.rand(2, 3, 416, 416, generator=torch.Generator().manual_seed(1))
    assert not onnx_det._network() is model
    with torch.no_grad():
        ref = model(x)
    got = onnx_det._network()(x)
    for g, r in zip(got, ref):
        assert g.dtype == torch.float32 and g.shape == r.shape
        assert ((g - r).abs().max() / r.abs().max()).item() <= 1e-4
    a = native.infer(x, conf_thres=0.3)
    b = onnx_det.infer(x, conf_thres=0.3)
    assert sum(len(d) for d in a) > 0
    for da, db in zip(a, b):
        assert len(da) == len(db)
        torch.testing.assert_close(db.boxes, da.boxes, atol=1e-3, rtol=0)
    runner = onnx_det.optimized
    with torch.no_grad():  # new weights: the session is rebuilt
        model.layers[0].conv.weight.mul_(0.5)
    onnx_det.infer(x)
    assert onnx_det.optimized is not runner


@pytest.mark.parametrize("mode", ["darknet-resize", pytest.param("darknet-letterbox", marks=pytest.mark.slow)])
def test_backend_coco128_ap_equals_native(mode: str) -> None:
    pytest.importorskip("onnxruntime")
    from yolodet.data import read_coco
    from yolodet.evaluation import evaluate
    ann = need_shared(COCO128 / "annotations" / "instances.json")
    cfg = need_shared(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg")
    gt = json.loads(ann.read_text())
    source = read_coco(ann)
    results = {}
    for backend in ("torch", "onnxruntime"):
        detector = Detector.from_cfg(cfg, need_shared(OFFICIAL_TINY), img_size=416, backend=backend)
        results[backend] = evaluate(detector, source, preprocess=mode, conf_thres=0.005, nms_thres=0.45, gt=gt,
                                    decoder="stb", workers=2, progress=False)
    native, ours = results["torch"], results["onnxruntime"]
    assert abs(ours.ap - native.ap) <= 5e-4 and abs(ours.ap50 - native.ap50) <= 5e-4, (
        f"{mode}: onnxruntime AP {ours.ap:.5f} AP50 {ours.ap50:.5f}, native {native.ap:.5f} {native.ap50:.5f}")
    assert abs(len(ours.results) - len(native.results)) <= len(native.results) * 1e-3
