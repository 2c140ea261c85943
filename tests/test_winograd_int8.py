"""yolodet.inference.winograd_int8: the AVX2 int8 Winograd kernel equals the integer arithmetic it documents (a
float64 version of the same codes, whose transforms are themselves checked against ``F.conv2d``), cannot saturate,
and the int8 network uses it exactly where oneDNN has no VNNI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import LANE_PATTERN, ROOT, assert_kernel_output, frozen_conv, lane_quads, randomize
from yolodet.inference import quantize as quantize_module
from yolodet.inference.calibrate import calibrate
from yolodet.inference.direct_int8 import Int8Direct3x3
from yolodet.inference.frozen import FrozenConv, fold_batchnorm
from yolodet.inference.optimize import optimize_for_inference
from yolodet.inference.pointwise_int8 import Int8Pointwise
from yolodet.inference.quantize import QuantConv, int8_available
from yolodet.inference.winograd_int8 import (Int8Winograd, f4_pays, int8_winograd_available, transformed_weights,
                                             transformed_weights_f4)
from yolodet.modeling.model import Darknet

pytestmark = pytest.mark.skipif(not (int8_winograd_available() and int8_available()),
                                reason="the AVX2 int8 Winograd kernel is not built or this CPU has no AVX2/FMA")

BT = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
AT = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)
G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
# F(4x4, 3x3), the points 0, 1, -1, 2, -2, inf
BT4 = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                    [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
AT4 = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                   dtype=torch.float64)
G4 = torch.tensor([[6, 0, 0], [-4, -4, -4], [-4, 4, -4], [1, 2, 4], [1, -2, 4], [0, 0, 24]], dtype=torch.float64) / 24


def _conv(c: int, o: int, act: str = "leaky", seed: int = 0) -> FrozenConv:
    return frozen_conv(c, o, size=3, act=act, seed=seed)


def _reference(layer: Int8Winograd, conv: FrozenConv, q: torch.Tensor, rounded: bool = True) -> torch.Tensor:
    """What the kernel documents, in float64: [B, C, H, W] uint8 codes -> [B, O, H, W] (activation applied).
    ``rounded=False``: transformed input and weights unrounded, i.e. the exact convolution of the codes' values."""
    if layer.tile == 4:
        return _reference_f4(layer, conv, q, rounded)
    scale_in, z = layer.in_qp
    b, c, h, w = q.shape
    th, tw = -(-h // 2), -(-w // 2)
    d = F.pad(q.double(), (1, 2 * tw + 1 - w, 1, 2 * th + 1 - h), value=float(z))  # outside: the code of 0
    v = BT @ d.unfold(2, 4, 2).unfold(3, 4, 2) @ BT.T  # [B, C, th, tw, 4, 4] codes; (1, 1): a sum of four
    if rounded:
        off = torch.full((4, 4), 128.0, dtype=torch.float64)
        off[1, 1] = 0
        zero = torch.full((4, 4), 128.0, dtype=torch.float64)
        zero[1, 1] = z
        # Per tile and position, over the channels: the least power of two 1, 2, 4 whose codes fit -128..127
        # (2 where V spans -256..255: 255 / 2 rounds to 128, saturated to 127; always 4 at (1, 1)); rounded half
        # to even.
        lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
        k = torch.where((lo >= -128) & (hi <= 127), 1.0, torch.where((lo >= -256) & (hi <= 255), 2.0, 4.0))
        k[..., 1, 1] = 4.0
        v = ((torch.round(v / k) + off).clamp(0, 255) - zero) * k
        codes, scale = transformed_weights(conv.weight)
        u = codes.double() * scale.double().unsqueeze(-1)  # [16, O, C]
    else:
        v[..., 1, 1] -= 4 * z
        u = (G @ conv.weight.double() @ G.T).permute(2, 3, 0, 1).reshape(16, -1, c)
    m = torch.einsum("bcyxp,poc->bopyx", v.flatten(-2) * scale_in, u)  # [B, O, 16, th, tw]
    m = m.unflatten(2, (4, 4)).permute(0, 1, 4, 5, 2, 3)  # [B, O, th, tw, 4, 4]
    y = (AT @ m @ AT.T).permute(0, 1, 2, 4, 3, 5).reshape(b, -1, 2 * th, 2 * tw)[:, :, :h, :w]
    return conv._activate_((y + conv.bias.double().view(1, -1, 1, 1)).float())


def _reference_f4(layer: Int8Winograd, conv: FrozenConv, q: torch.Tensor, rounded: bool) -> torch.Tensor:
    """:func:`_reference` of F(4x4) with 16-bit transformed operands (``yolodet/_int8/winograd_f4.h``)."""
    scale_in, z = layer.in_qp
    b, c, h, w = q.shape
    th, tw = -(-h // 4), -(-w // 4)
    d = F.pad(q.double() - z, (1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))  # centred codes; outside: 0
    v = BT4 @ d.unfold(2, 6, 4).unfold(3, 6, 4) @ BT4.T  # [B, C, th, tw, 6, 6], |V| <= 100 * 255
    if rounded:
        # Per tile and position, over the channels: the least 2^s (s = 0..3) with every V in
        # [-4096 * 2^s, 4095 * 2^s]; V' = round(V / 2^s), half to even.
        lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
        k = torch.ones_like(lo)
        for s in range(3):
            k = torch.where((lo < -4096 * 2**s) | (hi > 4095 * 2**s), 2.0 ** (s + 1), k)
        v = torch.round(v / k) * k
        codes, scale = transformed_weights_f4(conv.weight)
        u = codes.double() * scale.unsqueeze(-1)  # [36, O, C]
    else:
        u = (G4 @ conv.weight.double() @ G4.T).permute(2, 3, 0, 1).reshape(36, -1, c)
    m = torch.einsum("bcyxp,poc->bopyx", v.flatten(-2) * scale_in, u)  # [B, O, 36, th, tw]
    m = m.unflatten(2, (6, 6)).permute(0, 1, 4, 5, 2, 3)  # [B, O, th, tw, 6, 6]
    y = (AT4 @ m @ AT4.T).permute(0, 1, 2, 4, 3, 5).reshape(b, -1, 4 * th, 4 * tw)[:, :, :h, :w]
    return conv._activate_((y + conv.bias.double().view(1, -1, 1, 1)).float())


def _codes(shape: tuple[int, ...], seed: int, spread: int = 128) -> torch.Tensor:
    """Random uint8 codes 128 +- spread (channels_last); spread < 128: a smooth input, whose transformed tiles
    fit 8 bits with a shift of 0 (spread 20) or 1 (spread 50); the left half of the image spans 0..255 anyway, so
    that tiles of one image take different shifts."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(128 - spread, 128 + spread, shape, generator=g)
    q[..., : shape[-1] // 2] = torch.randint(0, 256, q[..., : shape[-1] // 2].shape, generator=g)
    return q.clamp(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("tile", [2, 4])
def test_reference_is_the_convolution_when_unrounded(tile: int) -> None:
    conv = _conv(5, 7, "linear")
    layer = Int8Winograd(conv, (0.02, 90), tile=tile)
    q = _codes((2, 5, 7, 10), 0)
    x = (q.double() - 90) * 0.02
    exact = F.conv2d(x, conv.weight.double(), conv.bias.double(), padding=1).float()
    assert torch.allclose(_reference(layer, conv, q, rounded=False), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c, o, h, w, act, zero, spread", [
    (16, 16, 8, 8, "leaky", 0, 128),
    (37, 29, 7, 9, "leaky", 77, 20),  # channels past 16 and not a multiple of 4, outputs past 24, odd sides
    (3, 5, 1, 1, "relu", 255, 128),  # one pixel: every tap but the centre is padding
    (64, 40, 13, 13, "linear", 128, 50),
    (32, 24, 10, 6, "mish", 3, 20),  # an activation the kernel does not fuse
])
@pytest.mark.parametrize("tile", [2, 4])
def test_kernel_equals_integer_reference(c: int, o: int, h: int, w: int, act: str, zero: int, spread: int,
                                         tile: int) -> None:
    conv = _conv(c, o, act, seed=c)
    layer = Int8Winograd(conv, (0.037, zero), tile=tile)
    q = _codes((2, c, h, w), seed=o, spread=spread)
    out = layer(q)
    ref = _reference(layer, conv, q)
    assert_kernel_output(out, ref, (2, o, h, w))


@pytest.mark.parametrize("codes", [0, 255])
@pytest.mark.parametrize("weights", ["random-signs", "one-lane"])
def test_full_codes_do_not_saturate(codes: int, weights: str) -> None:
    """Every input code 0 or 255 and weights whose transformed codes reach the bound (the four codes that share a
    16-bit lane of the product block summing to 124-128): the 16-bit sums are at their extremes and must stay
    exact."""
    conv = _conv(32, 16, "linear")
    with torch.no_grad():
        conv.weight.copy_(torch.randint(0, 2, conv.weight.shape, generator=torch.Generator().manual_seed(1)) * 2.0
                          - 1.0)
        if weights == "one-lane":
            conv.weight.abs_().mul_(LANE_PATTERN.repeat(4).view(1, 32, 1, 1))
    layer = Int8Winograd(conv, (1.0, 128 if codes == 0 else 0), tile=2)
    q = torch.full((1, 32, 6, 6), codes, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    t, _ = transformed_weights(conv.weight)
    assert 124 <= int(lane_quads(t).max()) <= 128  # the bound is reached (126 before four roundings)
    out, ref = layer(q), _reference(layer, conv, q)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("pattern", ["0", "255", "checkerboard"])
def test_f4_sums_at_the_bound_stay_exact(pattern: str) -> None:
    """F(4x4): weights all 1 (every channel's transformed codes equal, so the sums over the channels add up
    without cancelling) scaled to the bound sum |U codes| <= (2^31 - 1) // 4096, and inputs at their extremes
    (|V| up to 100 x 255, shifted back under 4096): the int32 sums come within 2x of overflowing, and must be
    exact. Codes scaled by max |U| / 32767 alone would overflow here."""
    conv = _conv(64, 16, "linear")
    with torch.no_grad():
        conv.weight.fill_(1.0)
    zero = {"0": 255, "255": 0, "checkerboard": 128}[pattern]
    q = torch.full((1, 64, 12, 12), int(pattern) if pattern != "checkerboard" else 0, dtype=torch.uint8)
    if pattern == "checkerboard":
        q[..., ::2, ::2] = q[..., 1::2, 1::2] = 255
    q = q.contiguous(memory_format=torch.channels_last)
    layer = Int8Winograd(conv, (1.0, zero), tile=4)
    codes, _ = transformed_weights_f4(conv.weight)
    l1 = codes.abs().long().sum(2)
    assert int(l1.max()) <= (2**31 - 1) // 4096 and int(l1.max()) >= 0.99 * ((2**31 - 1) // 4096)
    assert int(codes.abs().max()) <= 32767
    out, ref = layer(q), _reference(layer, conv, q)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_f4_where_its_weights_are_few_per_tile() -> None:
    """yolo-v3 at 416: F(4x4) on the 208, 104 and 52 maps, F(2x2) on 26 and 13 (its 16-bit weights, read on every
    image, would outweigh the products saved); an Int8Winograd takes that choice at its cfg size."""
    assert [f4_pays(o, c, s, s) for c, o, s in [(32, 64, 208), (64, 128, 104), (128, 256, 52), (256, 512, 26),
                                               (512, 1024, 13)]] == [True, True, True, False, False]
    assert Int8Winograd(_conv(64, 64), (0.02, 0)).tile == 4  # 16x16: 16 tiles, 4.6 KB of weights each
    assert Int8Winograd(_conv(512, 512), (0.02, 0)).tile == 2  # 1.2 MB each


def _block(filters: int, size: int, stride: int, act: str) -> str:
    return (f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"activation={act}\n\n")


# 0: the first conv (fp32); 1, 3: int8 Winograd (3 with an activation the kernel does not fuse); 4: 1x1 (the AVX2
# 1x1 kernel); 5: too few input channels (oneDNN's direct int8); 6: stride 2 (the AVX2 strided kernel); 7: feeds the
# head (fp32).
NET = ("[net]\nwidth=64\nheight=64\nchannels=3\n\n" + _block(32, 3, 1, "leaky") + _block(32, 3, 1, "leaky")
       + "[maxpool]\nsize=2\nstride=2\n\n" + _block(64, 3, 1, "mish") + _block(16, 1, 1, "leaky")
       + _block(32, 3, 1, "leaky") + _block(64, 3, 2, "leaky")
       + "[convolutional]\nfilters=18\nsize=1\nstride=1\npad=1\nactivation=linear\n\n"
       + "[yolo]\nmask=0,1,2\nanchors=10,13, 16,30, 33,23\nclasses=1\nnum=3\n")


def _net(monkeypatch, vnni: bool, winograd: bool = True):
    monkeypatch.setattr(quantize_module, "cpu_has_vnni", lambda: vnni)
    model = randomize(Darknet.from_cfg_text(NET), seed=2).eval()
    images = [torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()]
    cal = calibrate(fold_batchnorm(model), images, img_size=(64, 64), preprocess_mode="darknet-resize")
    return model, optimize_for_inference(model, device="cpu", precision="int8", calibration=cal, winograd=winograd)


def test_network_uses_it_where_onednn_has_no_vnni(monkeypatch) -> None:
    model, net = _net(monkeypatch, vnni=False)
    layers = net.net.layers
    assert [i for i, layer in enumerate(layers) if isinstance(layer, Int8Winograd)] == [1, 3]
    assert [i for i, layer in enumerate(layers) if isinstance(layer, Int8Pointwise)] == [4]
    assert [i for i, layer in enumerate(layers) if isinstance(layer, Int8Direct3x3)] == [6]
    assert [i for i, layer in enumerate(layers) if isinstance(layer, QuantConv)] == [5]
    _, direct = _net(monkeypatch, vnni=False, winograd=False)
    assert not any(isinstance(layer, (Int8Winograd, Int8Pointwise, Int8Direct3x3)) for layer in direct.net.layers)
    _, vnni = _net(monkeypatch, vnni=True)
    assert not any(isinstance(layer, (Int8Winograd, Int8Pointwise, Int8Direct3x3)) for layer in vnni.net.layers)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    for o, d, r in zip(net(x), direct(x), ref):
        # Winograd-domain rounding costs more than the direct kernel's, but stays small next to the logits.
        err, direct_err = float((o - r).abs().mean()), float((d - r).abs().mean())
        assert err < 0.05 * float(r.abs().mean())
        assert err < 2 * direct_err


def test_chosen_when_onednn_is_held_to_avx2() -> None:
    """Without any patching: ``ONEDNN_MAX_CPU_ISA=AVX2`` (what an AVX2-only CPU runs) makes the int8 mode take the
    kernel, and says so."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "sys.path.insert(0, 'tests'); import test_winograd_int8 as t; "
            "from yolodet.inference.winograd_int8 import Int8Winograd; "
            "net = t.optimize_for_inference(t.randomize(t.Darknet.from_cfg_text(t.NET), seed=2).eval(), "
            "device='cpu', precision='int8'); "
            "print('winograd layers', sum(isinstance(m, Int8Winograd) for m in net.net.layers))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "winograd layers 2" in done.stdout
    assert ("2 of them as Winograd on int8 codes, F(4x4) 2, F(2x2) 0, 1 1x1 and 1 strided 3x3 (the AVX2 kernels)"
            in done.stdout)
