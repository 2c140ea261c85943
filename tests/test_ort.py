"""``Detector(..., backend="onnxruntime")`` (:mod:`yolodet.inference.ort`): the network runs as an ONNX graph in
ONNX Runtime, everything else is yolodet's; its outputs and detections equal the native path's (its coco128 AP
is checked in ``test_export.py``, next to the end-to-end graph's, against one native evaluation).

Skipped without onnxruntime (``pip install yolodet[onnx]``) or ``../shared``; the missing-package error is
tested either way.
"""

from __future__ import annotations

import builtins

import pytest
import torch

from conftest import ROOT, randomize
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
    with torch.no_grad():  # spread-out scores, as with trained weights (random ones are all near 0.5: near-ties)
        for head in model.heads:
            model.layers[head.layer - 1].conv.weight.mul_(30.0)
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
    preds = native.decoder(list(ref), (416, 416))
    conf = float((preds[..., 4:5] * preds[..., 5:]).flatten().topk(400).values[-1])  # ~200 candidates an image
    a = native.infer(x, conf_thres=conf)
    b = onnx_det.infer(x, conf_thres=conf)
    assert 20 < sum(len(d) for d in a) <= 400
    for da, db in zip(a, b):
        assert len(da) == len(db)
        torch.testing.assert_close(db.boxes, da.boxes, atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(db.scores, da.scores, atol=1e-5, rtol=0)
        assert torch.equal(db.labels, da.labels)
    runner = onnx_det.optimized
    with torch.no_grad():  # new weights: the session is rebuilt
        model.layers[0].conv.weight.mul_(0.5)
    onnx_det.infer(x)
    assert onnx_det.optimized is not runner
