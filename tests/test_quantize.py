"""yolodet.inference.quantize: the int8 convolution equals integer arithmetic on the same codes, the int8 network
stays as close to fp32 as quantisation itself allows (an fp64 simulation of the same rounding is the yardstick),
every Darknet layer runs, and ``half`` picks int8 on CPUs without native bf16."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, OFFICIAL_TINY, REFERENCE_CFGS, ROOT, lane_quads, need_shared, randomize
from yolodet.data.images import read_image
from yolodet.inference import optimize as optimize_module
from yolodet.inference.calibrate import calibrate
from yolodet.inference.frozen import FrozenConv, fold_batchnorm
from yolodet.inference.optimize import fast_precision, optimize_for_inference, resolve_precision
from yolodet.inference.preprocess import preprocess
from yolodet.inference.int8_rounding import kernel_int8_weights
from yolodet.inference.quantize import QuantConv, QuantizedNet, _quantize, int8_available, int8_weights
from yolodet.modeling.blocks.base import HeadBlock
from yolodet.modeling.checkpoint import load_model
from yolodet.modeling.model import Darknet

pytestmark = pytest.mark.skipif(not int8_available(), reason="this PyTorch has no oneDNN int8 convolution")
SAMPLE = ROOT / "yolodet" / "assets" / "zebras.jpg"


def _fake_quant(x: torch.Tensor, qp: tuple[float, int]) -> torch.Tensor:
    scale, zero = qp
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def _simulated(net: QuantizedNet, folded: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    """The int8 network's rounding done in float64 with plain torch ops on the fp32 layers: activations rounded
    to the same codes, weights to the same int8 values, everything else exact."""
    saved: list[torch.Tensor] = []
    for i, layer in enumerate(folded.layers):
        refs = [saved[s] for s in layer.sources]
        q = net.layers[i]
        if isinstance(q, QuantConv):
            xin = _fake_quant(x.double(), q.in_qp)
            w = q.qweight.double() * q.w_scale.double().view(-1, 1, 1, 1)
            y = F.conv2d(xin, w, q.bias.double(), q.stride, q.padding, q.dilation, q.groups).float()
            x = layer._activate_(y)
        else:
            x = layer(x, refs)
        saved.append(x)
    return [saved[h.layer] for h in folded.heads]


def test_quant_conv_is_integer_arithmetic() -> None:
    g = torch.Generator().manual_seed(0)
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=3)
    folded = fold_batchnorm(model.eval())
    conv = next(layer for i, layer in enumerate(folded.layers) if i > 0 and isinstance(layer, FrozenConv))
    c = conv.weight.shape[1]
    x = torch.rand(1, c, 16, 16, generator=g) * 3 - 0.5
    qp = (3.5 / 255, 36)
    codes = _quantize(x.contiguous(memory_format=torch.channels_last), qp)
    assert codes.dtype == torch.uint8
    assert torch.equal(codes.to(torch.int64), torch.clamp(torch.round(x / qp[0]) + qp[1], 0, 255).long())
    q = QuantConv(conv, qp)
    out = q(codes)
    # The same integers in float64: sum of (code - zero) * int8 weight, times both scales, plus the bias.
    acc = F.conv2d(codes.double() - qp[1], q.qweight.double(), None, q.stride, q.padding, q.dilation, q.groups)
    ref = conv._activate_((acc * (qp[0] * q.w_scale.double()).view(1, -1, 1, 1) + q.bias.double().view(1, -1, 1, 1))
                          .float())
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_weight_scales_bound_every_pair_of_codes() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 8, 3, 3, generator=g)
    w[3] = 0.5
    w[3, 0, 0, 0] = -1.0  # one weight twice as large as the rest
    w[5] = 0.0  # an all-zero channel gets a finite scale
    vnni_codes, vnni = int8_weights(w, vnni=True)
    assert torch.allclose(vnni[:5], w[:5].abs().amax((1, 2, 3)) / 127)
    assert vnni_codes.dtype == torch.int8 and int(vnni_codes[:5].abs().flatten(1).amax(1).min()) == 127
    codes, pairs = int8_weights(w, vnni=False)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    codes = codes.float().abs().flatten(1)
    assert int(codes.topk(2, dim=1).values.sum(1).max()) <= 128  # any two codes of a channel
    assert int(codes[3].max()) == 85 and int(codes[3].min()) == 43  # 1.0 and 0.5 of 1.5 / 127.99
    assert bool(torch.isfinite(pairs).all()) and bool((pairs > 0).all())


def test_kernel_weight_scales_bound_every_lane_quad() -> None:
    """yolodet's AVX2 kernels sum four products per 16-bit lane: every such quad of a channel's codes is at most 128
    in magnitude, and the largest reaches 124-128 (126 before four roundings)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 21, generator=g)  # 21 channels: the last block of 8 is zero-padded
    w[1] = 0.0
    w[1, 16] = 2.0  # one weight alone in its quad
    w[2] = 0.0
    w[2, [8, 9, 12, 13]] = 1.0  # one lane's quad, the rest zero
    w[3] = 0.0  # an all-zero channel gets a finite scale
    codes, scale = kernel_int8_weights(w)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    quads = lane_quads(codes)
    assert int(quads.max()) <= 128
    assert all(124 <= int(quads[o].max()) <= 128 for o in (0, 2, 4, 5))
    assert int(codes[1].abs().max()) == 126 and torch.allclose(scale[1], torch.tensor(2.0 / 126))
    assert len(set(codes[2, [8, 9, 12, 13]].tolist())) == 1 and int(codes[2].abs().sum()) == int(quads[2].max())
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert torch.equal(codes, torch.round(w / scale.view(-1, 1)).to(torch.int8))


@pytest.mark.parametrize("weights", ["equal", "one-large", "random-signs"])
def test_no_16_bit_saturation_at_full_codes(weights: str) -> None:
    """The worst case: every activation code 255. Without VNNI, oneDNN adds pairs of u8 x s8 products in 16 bits
    (``vpmaddubsw``), which saturates for 255 x 127; the weight scales must keep the result exact."""
    conv = fold_batchnorm(randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=0).eval()).layers[2]
    assert isinstance(conv, FrozenConv)
    with torch.no_grad():
        conv.bias.zero_()
        if weights == "random-signs":
            conv.weight.copy_(torch.randint(0, 2, conv.weight.shape, generator=torch.Generator().manual_seed(0)) * 2.0
                              - 1.0)
        else:
            conv.weight.fill_(1.0 if weights == "equal" else 0.5)
            if weights == "one-large":
                conv.weight[:, :, 1, 1] = 1.0
    c = conv.weight.shape[1]
    q = QuantConv(conv, (1.0, 0))
    codes = torch.full((1, c, 8, 8), 255, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out = q(codes)
    # At an inner pixel all 9 taps see code 255: 255 * (sum of the channel's int8 weights) * its weight scale.
    exact = 255.0 * q.qweight.double().sum((1, 2, 3)) * q.w_scale.double()
    ref = conv._activate_(exact.float().view(1, -1, 1, 1))[0, :, 0, 0]
    assert torch.allclose(out[0, :, 4, 4], ref, rtol=1e-6, atol=1e-6), (out[0, :, 4, 4] - ref).abs().max()


def test_oneDNN_held_to_avx2_stays_exact() -> None:
    """``ONEDNN_MAX_CPU_ISA=AVX2`` (how an AVX2-only CPU is emulated on a newer one) takes VNNI away from oneDNN's
    int8 kernels: the pair-bounded weight scales apply and the worst cases above stay exact, whatever this CPU
    has."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = ("import sys; sys.path.insert(0, 'tests'); import test_quantize as t; "
            "from yolodet.inference.quantize import cpu_has_vnni; assert not cpu_has_vnni(); "
            "[t.test_no_16_bit_saturation_at_full_codes(w) for w in ('equal', 'one-large', 'random-signs')]; "
            "print('exact')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "exact" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_int8_close_to_fp32_on_official_tiny_weights() -> None:
    need_shared(OFFICIAL_TINY)
    model = load_model(ROOT / "cfg" / "yolo-v3-tiny.cfg", OFFICIAL_TINY).eval()
    fp32 = optimize_for_inference(model, device="cpu")
    int8 = optimize_for_inference(model, device="cpu", precision="int8")  # calibrated on the bundled sample
    assert int8.net.int8_layers()  # the convolutions after the first one
    image = read_image(need_shared(ROOT.parent / "shared" / "data" / "coco128" / "images" / "000000000009.jpg"))
    x = torch.from_numpy(preprocess(image, (416, 416), "darknet-letterbox")[0])[None]
    ref, out = fp32(x), int8(x)
    with torch.inference_mode():
        sim = _simulated(int8.net, fold_batchnorm(model), x)
    for o, r, s in zip(out, ref, sim):
        err, sim_err = float((o - r).abs().mean()), float((s - r).abs().mean())
        # What the activation codes and int8 weights cost by themselves (the fp64 simulation) bounds the kernels'
        # cost from above, with 25% slack for codes a rounding tie sends the other way; and the kernels must track
        # the simulation much more closely than either tracks fp32.
        assert err <= 1.25 * sim_err, (err, sim_err)
        assert float((o - s).abs().mean()) <= 0.5 * sim_err
        assert err < 0.05 * float(r.abs().mean())  # and the cost itself is small next to the logits


_BIG = {"yolov3.cfg", "yolov4.cfg", "darknet53.cfg"}  # 15-25 s each on 2 cores, most of it building the model


@pytest.mark.parametrize("cfg", [FIXTURES / "tiny.cfg", *(pytest.param(c, marks=pytest.mark.slow) if c.name in _BIG
                                                        else c for c in REFERENCE_CFGS)], ids=lambda p: p.name)
def test_every_layer_runs(cfg) -> None:
    model = randomize(Darknet.from_cfg(cfg), seed=2).eval()
    size = 64 if model.heads else min(model.net.width, 64)
    images = [torch.randint(0, 256, (size, size, 3), dtype=torch.uint8).numpy()]
    cal = calibrate(fold_batchnorm(model), images, img_size=(size, size), preprocess_mode="darknet-resize")
    net = optimize_for_inference(model, device="cpu", precision="int8", calibration=cal)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    out = net(x)
    assert [o.shape for o in out] == [r.shape for r in ref]
    assert all(bool(torch.isfinite(o).all()) and o.dtype == torch.float32 for o in out)
    # Every conv that a detection head reads stays fp32 (its outputs are the boxes and scores); the others that
    # sum enough products run in int8.
    layers = net.net.layers
    head_inputs = {i - 1 for i, layer in enumerate(layers) if isinstance(layer, HeadBlock)}
    for i, layer in enumerate(layers):
        if i in head_inputs:
            assert not isinstance(layer, QuantConv), i
        elif i > 0 and isinstance(layer, FrozenConv):
            assert not QuantConv.applies(layer), i  # a conv left fp32 must be one too small for int8


def test_half_is_int8_without_native_bf16(monkeypatch, caplog) -> None:
    monkeypatch.setattr(optimize_module, "cpu_has_native_bf16", lambda: False)
    assert fast_precision("cpu") == "int8"
    with caplog.at_level("INFO", logger="yolodet.inference.optimize"):
        assert resolve_precision("half", "cpu") == "int8"
    assert "fast mode on cpu: int8" in caplog.text
    monkeypatch.setattr(optimize_module, "cpu_has_native_bf16", lambda: True)
    assert fast_precision("cpu") == "bf16"
    assert fast_precision("cuda") == "fp16"
    with pytest.raises(ValueError, match="int8 needs a CPU"):
        resolve_precision("int8", "cuda")


def test_default_calibration_warns_how_to_calibrate(caplog) -> None:
    model = randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=1)
    with caplog.at_level("WARNING"):
        net = optimize_for_inference(model, device="cpu", precision="int8")
    assert "yolodet quantize" in caplog.text and "--calibrate DIR" in caplog.text
    assert net.net.calibration.source == "bundled sample" and net.net.calibration.images == 2
