"""yolodet.optimize: the optimised copy computes what the model computes (fp32 within 1e-4 relative), leaves the
model alone, and the reduced precisions run and stay close; the Detector and tools/detect.py expose them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES, REFERENCE_CFGS, ROOT, randomize
from yolodet.modeling.blocks.structural import MaxPool
from yolodet.inference.detector import Detector
from yolodet.modeling.model import Darknet
from yolodet.inference.optimize import (
    FrozenConv,
    InferenceModel,
    PairMaxPool,
    cpu_has_native_bf16,
    fast_precision,
    fold_batchnorm,
    optimize_for_inference,
    resolve_precision,
    weights_version,
)
from yolodet.inference.frozen import mish_
from yolodet.inference.quantize import int8_available
from yolodet.modeling.weights import save_darknet_weights

CFGS = [FIXTURES / "tiny.cfg", *REFERENCE_CFGS]
ACTIVATIONS = ("leaky", "relu", "relu6", "logistic", "swish", "tanh", "mish", "elu", "selu", "linear")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _input_size(model: Darknet) -> int:
    return min(model.net.width, 128)  # a multiple of 32 that keeps the reference cfgs fast


def _rel_err(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    return max(float((o.float() - r).abs().max() / r.abs().max()) for o, r in zip(outs, refs))


def _snapshot(model: Darknet) -> dict:
    return {k: (v.clone(), v.stride(), v.requires_grad) for k, v in model.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.name)
@pytest.mark.parametrize(("channels_last", "micro_batch"), [(True, "auto"), (False, None)], ids=["nhwc", "nchw"])
def test_fp32_outputs_equal_and_model_untouched(cfg, channels_last: bool, micro_batch) -> None:
    model = randomize(Darknet.from_cfg(cfg), seed=1)
    model.train()  # a model being trained: optimising must not switch it to eval or touch a tensor
    before = _snapshot(model)
    fast = optimize_for_inference(model, channels_last=channels_last, micro_batch=micro_batch)
    assert fast.micro_batch == (1 if micro_batch == "auto" else None)  # the CPU default: image by image
    assert model.training and all(m.training for m in model.modules())
    after = _snapshot(model)
    assert before.keys() == after.keys()
    for key, (value, stride, grad) in before.items():
        assert torch.equal(after[key][0], value) and after[key][1:] == (stride, grad), key

    s = _input_size(model)
    x = torch.rand(3, model.net.channels, s, s, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        ref = model(x)
    out = fast(x)
    assert [o.shape for o in out] == [r.shape for r in ref]
    assert all(o.dtype == torch.float32 for o in out)
    assert _rel_err(out, ref) < 1e-4
    assert _snapshot(model).keys() == before.keys()
    for key, (value, _, _) in before.items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags() warns on CPU-only builds
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "aten"])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_fused_or_not_is_exact(act: str, onednn: bool) -> None:
    cfg = (f"[net]\nwidth=32\nheight=32\nchannels=3\n"
           f"[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation={act}\n"
           f"[convolutional]\nfilters=4\nsize=1\nstride=2\npad=1\nactivation={act}\n"
           f"[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\ngroups=4\nactivation={act}\n")
    model = randomize(Darknet.from_cfg_text(cfg), seed=2).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    with torch.backends.mkldnn.flags(enabled=onednn):  # False: the F.conv2d path (as on CUDA)
        assert _rel_err(optimize_for_inference(model)(x), ref) < 1e-5


def test_in_place_mish_equals_torch_mish_over_the_whole_float_range() -> None:
    """mish_ (the CPU fp32 path of FrozenConv) against float64 F.mish, from -1e4 to 1e4, through the softplus
    threshold and the overflow of (1 + e^y)^2, on a channels_last conv output; NaN stays NaN. Its largest error is
    ~1.3e-6 absolute near y = -14 (the cancellation in y - 2y / ..., where mish is -1.4e-5), where fp32 F.mish
    stays within 1e-7: against the 1e-4 of the outputs' scale the optimised model promises, both are rounding."""
    y = torch.cat([torch.linspace(-1e4, 1e4, 100_001), torch.linspace(-30, 60, 100_001),
                   torch.tensor([0.0, -0.0, 20.0, 44.0, 88.0, 89.0, -87.0, -104.0, float("nan")])])
    ref = torch.nn.functional.mish(y.double())
    out = mish_(y.clone())
    finite = ~ref.isnan()
    err = (out.double() - ref).abs()[finite]
    assert float((err / ref.abs().clamp_min(1.0)[finite]).max()) < 2e-6  # relative above |mish| = 1, else absolute
    assert out[~finite].isnan().all()
    x = torch.randn(2, 16, 9, 7).contiguous(memory_format=torch.channels_last)
    out = mish_(x.clone())
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.nn.functional.mish(x), rtol=2e-6, atol=2e-6)


def test_fold_batchnorm_replaces_convs_and_pair_pools_only() -> None:
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"))
    folded = fold_batchnorm(model)
    assert any(isinstance(layer, PairMaxPool) for layer in folded.layers)
    for orig, new in zip(model.layers, folded.layers):
        assert isinstance(new, FrozenConv) == (type(orig).__name__ == "ConvBlock")
        assert isinstance(new, PairMaxPool) == (isinstance(orig, MaxPool) and orig.size == 2
                                                and orig.stride == (2, 2) and not any(orig.pads))
        assert new is not orig and new.out_shape == orig.out_shape and new.sources == orig.sources
    assert not any(p.requires_grad for p in folded.parameters()) and not folded.training
    assert folded.heads == model.heads
    with pytest.raises(TypeError, match="cannot be saved"):
        save_darknet_weights(folded, "/nonexistent/never-written.weights")


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (2, 3)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pair_maxpool_equals_maxpool(hw: tuple[int, int], channels_last: bool) -> None:
    h, w = hw
    out_shape = (3, h // 2, w // 2)
    pool = MaxPool(2, (2, 2), (0, 0, 0, 0), out_shape)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    x[0, 1, 0, 0] = float("nan")
    x[1, 2, -1, -1] = float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref, out = pool(x, []), PairMaxPool(pool)(x)
    assert torch.equal(out.nan_to_num(), ref.nan_to_num()) and torch.equal(out.isnan(), ref.isnan())
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_inference_model_is_frozen() -> None:
    fast = optimize_for_inference(Darknet.from_cfg(FIXTURES / "tiny.cfg"))
    assert isinstance(fast, InferenceModel) and not fast.training
    assert fast.heads == fast.net.heads and fast.num_classes == fast.net.num_classes
    with pytest.raises(RuntimeError, match="frozen"):
        fast.train()


def test_weights_version_sees_in_place_updates() -> None:
    model = Darknet.from_cfg(FIXTURES / "tiny.cfg")
    v0 = weights_version(model)
    assert weights_version(model) == v0
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert weights_version(model) != v0


def test_precision_names() -> None:
    assert resolve_precision("fp32", "cpu") == "fp32"
    cpu_fast = "bf16" if cpu_has_native_bf16() else "int8" if int8_available() else "fp32"
    assert resolve_precision("half", "cpu") == fast_precision("cpu") == cpu_fast
    assert resolve_precision("half", "cuda") == fast_precision("cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        resolve_precision("int4", "cpu")


@pytest.mark.parametrize("cfg", [FIXTURES / "tiny.cfg", *[c for c in REFERENCE_CFGS if c.stem == "yolov3-tiny"]],
                         ids=lambda p: p.name)
def test_bf16_runs_and_stays_close(cfg) -> None:
    """bf16 keeps ~3 significant digits per layer; the raw outputs stay within a few percent of fp32 (natively
    through oneDNN on CPUs with bf16, emulated elsewhere)."""
    model = randomize(Darknet.from_cfg(cfg), seed=3).eval()
    s = _input_size(model)
    x = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    out = optimize_for_inference(model, precision="bf16")(x)
    assert all(o.dtype == torch.float32 for o in out)
    assert _rel_err(out, ref) < 0.05


def _confident_tiny() -> Darknet:
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=3)
    with torch.no_grad():
        for h in model.heads:
            model.layers[h.layer - 1].conv.bias.add_(2.0)
    return model


def test_detector_optimised_equals_plain_and_follows_weight_changes() -> None:
    model = _confident_tiny()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((50, 80), (64, 64), (97, 31))]
    plain = Detector(model, optimize=False)
    fast = Detector(model, optimize=True)
    a, b = plain.predict(images, conf_thres=0.3), fast.predict(images, conf_thres=0.3)
    assert sum(len(d) for d in a) > 0
    for da, db in zip(a, b):
        assert torch.equal(da.labels, db.labels)
        torch.testing.assert_close(db.boxes, da.boxes, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(db.scores, da.scores, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # e.g. a training step between two evaluations
        model.layers[model.heads[0].layer - 1].conv.bias.add_(1.0)
    a, b = plain.predict(images, conf_thres=0.3), fast.predict(images, conf_thres=0.3)
    for da, db in zip(a, b):
        torch.testing.assert_close(db.scores, da.scores, atol=1e-5, rtol=1e-4)


def test_detector_auto_optimises_from_the_second_forward() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    detector = Detector(_confident_tiny())  # optimize="auto": one image alone does not pay for optimising
    detector.predict([image])
    assert detector.optimized is None
    detector.predict([image])
    assert isinstance(detector.optimized, InferenceModel) and detector.optimized.precision == "fp32"
    detector = Detector(_confident_tiny(), precision="bf16")  # reduced precision: optimised from the start
    detector.predict([image])
    assert isinstance(detector.optimized, InferenceModel) and detector.optimized.precision == "bf16"
    with pytest.raises(ValueError, match="optimize must be"):
        Detector(_confident_tiny(), optimize="always")


def test_detector_bf16_finds_the_same_objects() -> None:
    model = _confident_tiny()
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    ref = Detector(model).predict([image], conf_thres=0.3)[0]
    det = Detector(model, precision="bf16").predict([image], conf_thres=0.3)[0]
    assert len(ref) > 0 and abs(len(det) - len(ref)) <= max(2, len(ref) // 10)
    assert det.boxes.dtype == torch.float32 and det.scores.dtype == torch.float32


@CUDA
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda(precision: str) -> None:
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=4).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    out = optimize_for_inference(model, precision=precision, device="cuda")(x)
    assert all(o.device.type == "cuda" and o.dtype == torch.float32 for o in out)
    assert _rel_err([o.cpu() for o in out], ref) < (1e-3 if precision == "fp32" else 0.05)  # TF32 convs
    assert next(model.parameters()).device.type == "cpu"


def test_detect_cli_precision(tmp_path) -> None:
    weights = tmp_path / "tiny.weights"
    save_darknet_weights(_confident_tiny(), weights)
    sample = ROOT / "yolodet" / "assets" / "zebras.jpg"
    base = [sys.executable, str(ROOT / "tools" / "detect.py"), str(sample), "--cfg", str(FIXTURES / "tiny.cfg"),
            "--weights", str(weights), "--no-images", "--quiet"]
    res = subprocess.run([*base, "--half", "--output", str(tmp_path / "a")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "a" / "detections.json").read_text())["model"]
    assert summary["precision"] == fast_precision("cpu")
    res = subprocess.run([*base, "--precision", "fp16", "--output", str(tmp_path / "b")], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "needs a CUDA device" in res.stderr and "Traceback" not in res.stderr
