"""yolodet.inference.direct_int8: the AVX2 strided 3x3 kernel equals the integer arithmetic it documents (a float64
convolution of the same codes and weight codes), pads with the input's zero point, cannot overflow its 16-bit sums,
and the int8 network uses it for the strided layers where oneDNN has no VNNI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import LANE_PATTERN, assert_kernel_output, frozen_conv, lane_quads
from yolodet.inference.direct_int8 import Int8Direct3x3
from yolodet.inference.frozen import FrozenConv
from yolodet.inference.int8_kernels import avx2_kernels
from yolodet.inference.int8_rounding import kernel_int8_weights
from yolodet.inference.quantize import int8_available

pytestmark = pytest.mark.skipif(avx2_kernels() is None or not int8_available(),
                                reason="the AVX2 int8 kernels are not built or this CPU has no AVX2/FMA")


def _reference(layer: Int8Direct3x3, conv: FrozenConv, q: torch.Tensor, rounded: bool = True) -> torch.Tensor:
    """What the kernel documents, in float64: [B, C, H, W] uint8 codes -> [B, O, H', W'] (activation applied).
    ``rounded=False``: fp32 weights, i.e. the exact convolution of the codes' values."""
    scale_in, z = layer.in_qp
    if rounded:
        codes, scale = kernel_int8_weights(conv.weight.detach().permute(0, 2, 3, 1))
        w = codes.permute(0, 3, 1, 2).double() * scale.double().view(-1, 1, 1, 1)
    else:
        w = conv.weight.detach().double()
    y = F.conv2d((q.double() - z) * scale_in, w, conv.bias.double(), stride=layer.stride, padding=1)
    return conv._activate_(y.float())


def _codes(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)


def test_reference_is_the_convolution_when_unrounded() -> None:
    conv = frozen_conv(8, 5, act="linear", stride=2)
    layer = Int8Direct3x3(conv, (0.02, 90))
    q = _codes((2, 8, 7, 6), 0)
    exact = F.conv2d((q.double() - 90) * 0.02, conv.weight.double(), conv.bias.double(), stride=2,
                     padding=1).float()
    assert torch.allclose(_reference(layer, conv, q, rounded=False), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c, o, h, w, stride, act, zero", [
    (32, 32, 16, 16, 2, "leaky", 0),
    (12, 29, 9, 7, 2, "leaky", 77),  # 3 channel groups (an odd last one), outputs past 24, odd sizes
    (4, 5, 2, 3, 2, "relu", 255),  # the fewest channels; every output pixel touches the padding
    (40, 24, 11, 10, 3, "linear", 128),  # stride 3
    (512, 64, 6, 5, 2, "leaky", 3),  # weights past 256 KB: output blocks outermost
    (16, 24, 8, 8, 2, "mish", 30),  # an activation the kernel does not fuse
])
def test_kernel_equals_integer_reference(c: int, o: int, h: int, w: int, stride: int, act: str, zero: int) -> None:
    conv = frozen_conv(c, o, act=act, seed=c, stride=stride)
    layer = Int8Direct3x3(conv, (0.037, zero))
    q = _codes((2, c, h, w), seed=o)
    out = layer(q)
    ref = _reference(layer, conv, q)
    assert_kernel_output(out, ref, (2, o, (h - 1) // stride + 1, (w - 1) // stride + 1))


@pytest.mark.parametrize("codes", [0, 255])
def test_full_codes_do_not_saturate(codes: int) -> None:
    """Every input code 0 or 255 (so the padding, code z, is at the other extreme) and weights on one lane's quads
    at the bound: the 16-bit sums come within 3% of overflowing and must stay exact."""
    conv = frozen_conv(32, 16, act="linear", stride=2)
    with torch.no_grad():
        conv.weight.fill_(-1.0 if codes == 0 else 1.0).mul_(LANE_PATTERN.repeat(4).view(1, 32, 1, 1))
    layer = Int8Direct3x3(conv, (1.0, 255 - codes))
    w, _ = kernel_int8_weights(conv.weight.detach().permute(0, 2, 3, 1))
    assert 124 <= int(lane_quads(w).max()) <= 128  # the bound is reached
    q = torch.full((1, 32, 7, 7), codes, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out, ref = layer(q), _reference(layer, conv, q)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_applies_to_strided_3x3_only() -> None:
    assert Int8Direct3x3.applies(frozen_conv(32, 16, stride=2))
    assert not Int8Direct3x3.applies(frozen_conv(32, 16, stride=1))  # Winograd's
    assert not Int8Direct3x3.applies(frozen_conv(30, 16, stride=2))  # channels not a multiple of 4
    assert not Int8Direct3x3.applies(frozen_conv(32, 16, size=1, stride=2))
