"""yolodet.inference.int8_kernels: the AVX2 int8 layers' epilogue (``yolodet/_int8/epilogue.h``). The codes they
write equal, bit for bit, quantising their fp32 output with ``torch.quantize_per_tensor``; a fused residual equals
the ``[shortcut]`` addition after them; and an int8 network that fuses both returns exactly what it returns with
every layer run alone."""

from __future__ import annotations

import pytest
import torch

from conftest import frozen_conv, randomize
from yolodet.inference import quantize as quantize_module
from yolodet.inference.calibrate import calibrate
from yolodet.inference.direct_int8 import Int8Direct3x3
from yolodet.inference.frozen import fold_batchnorm
from yolodet.inference.int8_kernels import KernelConv, avx2_kernels
from yolodet.inference.optimize import optimize_for_inference
from yolodet.inference.pointwise_int8 import Int8Pointwise
from yolodet.inference.quantize import _quantize, int8_available
from yolodet.inference.winograd_int8 import Int8Winograd
from yolodet.modeling.model import Darknet

pytestmark = pytest.mark.skipif(avx2_kernels() is None or not int8_available(),
                                reason="the AVX2 int8 kernels are not built or this CPU has no AVX2/FMA")

KINDS = ["f2", "f4", "pointwise", "direct"]


def _layer(kind: str, c: int, o: int, act: str = "leaky", seed: int = 0) -> KernelConv:
    conv = frozen_conv(c, o, size=1 if kind == "pointwise" else 3, act=act, seed=seed,
                       stride=2 if kind == "direct" else 1)
    if kind == "pointwise":
        return Int8Pointwise(conv, (0.02, 37))
    if kind == "direct":
        return Int8Direct3x3(conv, (0.02, 37))
    return Int8Winograd(conv, (0.02, 37), tile=2 if kind == "f2" else 4)


def _codes(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, c, h, w), generator=g, dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last)


def _spanning_qp(y: torch.Tensor) -> tuple[float, int]:
    """Quantisation parameters whose 0..255 range covers the middle of y: codes clamp at both ends."""
    low, high = float(y.quantile(0.1)), float(y.quantile(0.9))
    scale = (high - low) / 255
    return scale, int(round(-low / scale))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("o", [32, 21])  # 21: two vector blocks of 8 and the scalar tail of 5
@pytest.mark.parametrize("act", ["leaky", "linear"])
def test_codes_are_the_quantised_output(kind: str, o: int, act: str) -> None:
    layer = _layer(kind, 32, o, act)
    q = _codes(32, 11, 9)
    fp, none = layer.run(q)
    assert none is None
    qp = _spanning_qp(fp)
    expected = _quantize(fp, qp)
    assert 0 < int((expected == 0).sum()) and 0 < int((expected == 255).sum())  # both clamps are exercised
    fp2, codes = layer.run(q, codes_qp=qp)
    assert torch.equal(fp2, fp)
    assert codes.dtype == torch.uint8 and codes.shape == fp.shape
    assert codes.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(codes, expected)
    only, codes_only = layer.run(q, codes_qp=qp, keep_float=False)
    assert only is None and torch.equal(codes_only, expected)


@pytest.mark.parametrize("o", [32, 21])
def test_codes_round_half_to_even_like_torch(o: int) -> None:
    """Outputs exactly halfway between two codes (zero weights, the bias at k + 1/2): half to even, clamped, as
    ``torch.quantize_per_tensor`` rounds them; in the vector blocks and in the scalar tail."""
    layer = _layer("pointwise", 32, o, act="linear")
    layer.packed.zero_()
    layer.corr.zero_()
    halves = torch.arange(o, dtype=torch.float32) - 8.5  # -8.5, -7.5 ... : ties, both parities, some below zero
    layer.bias.copy_(halves * 0.25)
    qp = (0.25, 3)
    fp, codes = layer.run(_codes(32, 3, 4), codes_qp=qp)
    assert torch.equal(fp, (halves * 0.25).view(1, -1, 1, 1).expand_as(fp))
    assert torch.equal(codes, _quantize(fp, qp))
    assert codes[0, :, 0, 0].tolist() == [min(max(round(float(h)) + 3, 0), 255) for h in halves]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("o", [32, 21])
def test_residual_is_added_after_the_activation(kind: str, o: int) -> None:
    layer = _layer(kind, 32, o, "leaky", seed=1)
    q = _codes(32, 10, 13, seed=1)
    fp, _ = layer.run(q)
    g = torch.Generator().manual_seed(2)
    residual = torch.randn(fp.shape, generator=g).contiguous(memory_format=torch.channels_last)
    summed, codes = layer.run(q, residual=residual, codes_qp=(0.05, 100))
    assert torch.equal(summed, fp + residual)  # the [shortcut] layer's addition, bit for bit
    assert torch.equal(codes, _quantize(fp + residual, (0.05, 100)))
    # a plain-layout residual is taken as well
    assert torch.equal(layer.run(q, residual=residual.contiguous())[0], summed)


def test_epilogue_refuses_what_it_cannot_do() -> None:
    layer = _layer("f2", 32, 16)
    q = _codes(32, 6, 6)
    with pytest.raises(ValueError, match="keep_float=False needs codes_qp"):
        layer.run(q, keep_float=False)
    unfused = _layer("f2", 32, 16, act="mish")  # mish runs after the kernel, in fp32
    assert not unfused.fuses_epilogue
    with pytest.raises(ValueError, match="activation inside the kernel"):
        unfused.run(q, codes_qp=(0.1, 0))
    kernel, x = avx2_kernels(), q[0].permute(1, 2, 0).numpy()
    out = torch.empty(6, 6, 16).numpy()
    with pytest.raises(ValueError, match="out and codes cannot both be None"):
        layer._run(kernel, x, None, 1)
    with pytest.raises(ValueError, match="residual: expected a C-contiguous buffer of 2304 bytes, got 4"):
        layer._run(kernel, x, out, 1, residual=torch.zeros(1).numpy())
    with pytest.raises(ValueError, match="codes: expected"):
        layer._run(kernel, x, out, 1, codes=torch.zeros(5, dtype=torch.uint8).numpy())
    with pytest.raises(ValueError, match="code_scale must be positive"):
        layer._run(kernel, x, out, 1, codes=torch.zeros(576, dtype=torch.uint8).numpy(), code_scale=0.0)


def _block(filters: int, size: int, act: str = "leaky", stride: int = 1) -> str:
    return (f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"activation={act}\n\n")


# Residual blocks as in darknet53 (1x1 -> 3x3 -> [shortcut]): one plain, one whose 3x3 has an activation the kernel
# cannot fuse (mish), one weighted; then a 1x1 read as codes by a maxpool and a one-input route and as fp32 by a
# concatenation, an upsample, and a conv whose output nothing reads.
FUSE_NET = ("[net]\nwidth=64\nheight=64\nchannels=3\n\n" + _block(32, 3) + _block(64, 3, stride=2)  # 0, 1
            + _block(32, 1) + _block(64, 3) + "[shortcut]\nfrom=-3\nactivation=linear\n\n"  # 2, 3, 4: fused
            + _block(32, 1) + _block(64, 3, act="mish") + "[shortcut]\nfrom=-3\nactivation=linear\n\n"  # 5, 6, 7
            + _block(32, 1) + _block(64, 3)  # 8, 9
            + "[shortcut]\nfrom=-3\nactivation=linear\nweights_type=per_feature\n\n"  # 10
            + _block(32, 1) + "[maxpool]\nsize=2\nstride=2\n\n" + _block(64, 3)  # 11, 12, 13
            + "[route]\nlayers=-3\n\n" + _block(64, 3) + "[route]\nlayers=-3\n\n"  # 14, 15, 16
            + "[upsample]\nstride=2\n\n[route]\nlayers=-1,-7\n\n" + _block(64, 3)  # 17, 18, 19
            + "[convolutional]\nfilters=18\nsize=1\nstride=1\npad=1\nactivation=linear\n\n"
            + "[yolo]\nmask=0,1,2\nanchors=10,13, 16,30, 33,23\nclasses=1\nnum=3\n")


def test_fused_network_equals_layer_by_layer(monkeypatch) -> None:
    monkeypatch.setattr(quantize_module, "cpu_has_vnni", lambda: False)
    model = randomize(Darknet.from_cfg_text(FUSE_NET), seed=4).eval()
    images = [torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()]
    cal = calibrate(fold_batchnorm(model), images, img_size=(64, 64), preprocess_mode="darknet-resize")
    net = optimize_for_inference(model, device="cpu", precision="int8", calibration=cal).net
    assert [i for i, r in enumerate(net._residual) if r is not None] == [3]  # 6: mish, 9: weighted
    fp, q = zip(*net._needs)
    assert q[2] and not fp[2]  # a 1x1 that only a 3x3 reads: codes only
    assert fp[4] and q[4]  # the fused shortcut's output: the next shortcut reads fp32, the 1x1 codes
    assert q[11] and fp[11]  # codes for the maxpool and the one-input route, fp32 for the concatenation
    assert q[12] and not fp[12]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fused = net(x)
        net.fuse = False
        plain = net(x)
    assert len(fused) == len(plain) == 1
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))
