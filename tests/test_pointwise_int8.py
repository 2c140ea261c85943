"""yolodet.inference.pointwise_int8: the AVX2 1x1 kernel equals the integer arithmetic it documents (a float64
version of the same codes, itself checked against ``F.conv2d``), cannot saturate, and the int8 network uses it
exactly where oneDNN has no VNNI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import LANE_PATTERN, assert_kernel_output, frozen_conv, lane_quads
from yolodet.inference.frozen import FrozenConv
from yolodet.inference.int8_kernels import avx2_kernels
from yolodet.inference.int8_rounding import kernel_int8_weights
from yolodet.inference.pointwise_int8 import Int8Pointwise
from yolodet.inference.quantize import int8_available

pytestmark = pytest.mark.skipif(not (avx2_kernels() is not None and int8_available()),
                                reason="the AVX2 int8 kernels are not built or this CPU has no AVX2/FMA")


def _conv(c: int, o: int, act: str = "leaky", seed: int = 0) -> FrozenConv:
    return frozen_conv(c, o, size=1, act=act, seed=seed)


def _reference(layer: Int8Pointwise, conv: FrozenConv, q: torch.Tensor, rounded: bool = True) -> torch.Tensor:
    """What the kernel documents, in float64: [B, C, H, W] uint8 codes -> [B, O, H, W] (activation applied).
    ``rounded=False``: fp32 weights, i.e. the exact convolution of the codes' values."""
    scale_in, z = layer.in_qp
    if rounded:
        codes, scale = kernel_int8_weights(conv.weight.detach().flatten(1))
        w = codes.double() * scale.double().unsqueeze(1)
    else:
        w = conv.weight.detach().double().flatten(1)
    y = torch.einsum("bchw,oc->bohw", (q.double() - z) * scale_in, w) + conv.bias.double().view(1, -1, 1, 1)
    return conv._activate_(y.float())


def _codes(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)


def test_reference_is_the_convolution_when_unrounded() -> None:
    conv = _conv(8, 5, "linear")
    layer = Int8Pointwise(conv, (0.02, 90))
    q = _codes((2, 8, 3, 5), 0)
    exact = F.conv2d((q.double() - 90) * 0.02, conv.weight.double(), conv.bias.double()).float()
    assert torch.allclose(_reference(layer, conv, q, rounded=False), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c, o, h, w, act, zero", [
    (64, 32, 8, 8, "leaky", 0),
    (36, 29, 7, 9, "leaky", 77),  # channels not a multiple of 16, outputs past 24, pixels not a multiple of 4
    (4, 5, 1, 1, "relu", 255),  # the fewest channels, one pixel
    (512, 528, 5, 7, "linear", 128),  # weights past 256 KB: output blocks outermost
    (32, 24, 6, 10, "mish", 3),  # an activation the kernel does not fuse
])
def test_kernel_equals_integer_reference(c: int, o: int, h: int, w: int, act: str, zero: int) -> None:
    conv = _conv(c, o, act, seed=c)
    layer = Int8Pointwise(conv, (0.037, zero))
    q = _codes((2, c, h, w), seed=o)
    out = layer(q)
    ref = _reference(layer, conv, q)
    assert_kernel_output(out, ref, (2, o, h, w))


@pytest.mark.parametrize("codes", [0, 255])
@pytest.mark.parametrize("weights", ["equal", "one-lane"])
def test_full_codes_do_not_saturate(codes: int, weights: str) -> None:
    """Every input code 0 or 255 and weights at the bound (the four codes that share a 16-bit lane summing to
    124-128 in magnitude, the same sign): the 16-bit sums come within 3% of overflowing and must stay exact."""
    conv = _conv(32, 16, "linear")
    with torch.no_grad():
        conv.weight.fill_(-1.0 if codes == 0 else 1.0)
        if weights == "one-lane":
            conv.weight.mul_(LANE_PATTERN.repeat(4).view(1, 32, 1, 1))
    layer = Int8Pointwise(conv, (1.0, 128 if codes == 0 else 0))
    w, _ = kernel_int8_weights(conv.weight.detach().flatten(1))
    assert 124 <= int(lane_quads(w).max()) <= 128  # the bound is reached (126 before four roundings)
    q = torch.full((1, 32, 3, 3), codes, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out, ref = layer(q), _reference(layer, conv, q)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_not_for_other_shapes() -> None:
    assert Int8Pointwise.applies(_conv(32, 16))
    assert not Int8Pointwise.applies(_conv(34, 16))  # not a multiple of 4 input channels
    assert not Int8Pointwise.applies(frozen_conv(32, 16, size=1, stride=2))
