"""Winograd convolutions on int8 codes for the int8 fast mode on CPUs whose oneDNN has no VNNI (AVX2 CPUs): F(4x4,
3x3) with 16-bit transformed operands on large maps, F(2x2, 3x3) in 8 bits on the others.

Why: without VNNI an int8 multiply-add costs ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` per 32 products, so oneDNN's
direct int8 3x3 convolution runs only ~1.7x faster than its fp32 one, while the fp32 path uses Winograd F(4x4, 3x3)
(:mod:`yolodet.inference.winograd`): on a 3x3 layer the int8 mode was no faster than fp32 (``bench/int8_conv3x3.py``).
PyTorch exposes no int8 Winograd and its int8 GEMMs cannot take transformed operands at full speed (measured in that
script), hence hand-written kernels (``yolodet/_int8/``, C with AVX2 intrinsics and OpenMP).

- **F(2x2, 3x3), 8 bits** (``winograd_int8.c``): 16 products per 2x2 output tile instead of 36 (2.25x fewer), at the
  direct kernel's instruction rate (``vpmaddubsw`` + ``vpmaddwd``).
- **F(4x4, 3x3), 16 bits** (``winograd_f4.c``): 36 products per 4x4 tile (4x fewer than direct). ``vpmaddwd`` alone
  multiplies 16-bit pairs, as many products per multiply instruction as the 8-bit pair (one more add per 16), and
  its transforms (entries up to 5 and 8, ``|V|`` up to 100 x 255) need the bits: 12 of ``V``, 11 to 15 of ``U``.
  One layer's outputs stay within ~1.5e-3 RMS of the exact convolution of the codes, against ~2.5e-2 for F(2x2).
  Its weights are 4.5x larger, read on every image: :func:`f4_pays` picks it where the map has tiles enough.

What they compute (exactly; ``tests/test_winograd_int8.py`` holds each to a float64 version of the same integers):

- F(2x2): the input's uint8 codes (zero point z), 4x4 patches with stride 2, ``V = B^T d B`` per channel (integers);
  ``V`` back to 8 bits, per tile and position over the channels: ``round(V / 2^s) + 128`` with the least shift s of
  0, 1, 2 whose codes fit (a sum of differences of codes spans [-510, 510]: s = 2 covers any input; smooth tiles
  keep every bit), rounded half to even (half up biased AP by up to +0.012 on coco128); at position (1, 1) (a sum of
  four codes) always ``round(V / 4)``, with the input's zero point. No Winograd-domain calibration is needed.
  ``U = G g G^T`` of the fp32 BN-folded weights, int8 per (position, output channel), with the lane bound of
  :func:`~yolodet.inference.int8_rounding.kernel_int8_weights` (the product block sums four products in 16 bits;
  exact for every input). 16 int32 products per tile, dequantised per (position, output channel) and by 2^s / 4.
- F(4x4): the centred codes ``d = x - z`` (0 outside the image), 6x6 patches with stride 4, ``V = B^T d B`` in int16
  (exact), ``V' = round(V / 2^s)`` per tile and position with the least s of 0..3 that keeps ``|V'| <= 4096``;
  ``U`` int16 per (position, output channel), scaled so that ``sum_c |U codes| <= (2^31 - 1) // 4096``
  (:func:`transformed_weights_f4`): every int32 sum is exact for every input. 36 products per tile, dequantised per
  (position, output channel) and by 2^s.
- Both: ``Y = A^T M A``, bias and leaky/relu in the kernel; other activations after it in fp32. Output fp32, as
  :class:`~yolodet.inference.quantize.QuantConv`.

Accuracy (yolov3-tiny, coco128, measured with the rest of the int8 mode): the README's int8 accuracy table.
Speed (2-core AMD EPYC, AVX2 code; batch 1, ms): the README's table (``bench/int8_conv3x3.py``).

Where: 3x3 stride-1, undilated, ungrouped convolutions with padding 1 that the int8 mode runs in int8, when oneDNN's
int8 kernels have no VNNI (:func:`~yolodet.inference.int8_rounding.cpu_has_vnni`; with VNNI oneDNN's direct kernel is
faster), the CPU has AVX2 and FMA, and the extension was built.
"""

from __future__ import annotations

import torch

from yolodet.inference.frozen import FrozenConv
from yolodet.inference.int8_kernels import KernelConv, avx2_kernels, pack
from yolodet.inference.int8_rounding import kernel_int8_weights
from yolodet.inference.winograd import winograd_weights

__all__ = ["Int8Winograd", "f4_pays", "int8_winograd_available", "transformed_weights", "transformed_weights_f4"]

# F(2x2, 3x3) (Lavin & Gray): Y = A^T [(G g G^T) * (B^T d B)] A; B and A live in the C kernel.
_G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
_SUM_POSITION = 5  # (1, 1): the one tile position whose transform is a sum of four codes (the input's zero point)
_MID = 128  # zero point of the 15 other positions (differences of codes)
_VMAX = 4096  # bound of the 16-bit transformed input codes (WINO4_VMAX in winograd_f4.h)
_L1_BOUND = (2**31 - 1) // _VMAX  # sum over the channels of |U codes|: keeps every int32 sum of F(4x4) exact
# F(4x4) where its 16-bit weights (36 x O x C x 2 bytes) come to at most this many bytes per 4x4 tile of the output
# map, else F(2x2): the weights of a layer are read from memory on every image, and on small maps (few tiles) that
# costs more than F(4x4) saves. Measured in yolo-v3 (bench/int8_conv3x3.py and per layer in the network, 2-core
# EPYC, AVX2 code; F(2x2) -> F(4x4), ms): 32 -> 64 @208 4.7 -> 3.2 (0.1 KB per tile), 64 -> 128 @104 3.0 -> 2.3
# (0.9 KB), 128 -> 256 @52 2.2 -> 1.9 (14 KB), but 256 -> 512 @26 2.1 -> 2.5 (190 KB, 9 MB of weights) and
# 512 -> 1024 @13 2.3 -> 3.5 (2.4 MB).
_F4_BYTES_PER_TILE = 32 * 1024
# Fewer input channels: the per-tile transforms outweigh the products saved (bench/int8_conv3x3.py, AVX2: 16 -> 32
# @208 takes 1.25-1.48 ms in F(4x4) and 1.8-2.0 in F(2x2) against oneDNN's direct 1.02; 32 -> 64 @208 2.8 in
# F(4x4) against 3.9).
_MIN_CHANNELS = 32


def int8_winograd_available() -> bool:
    """Whether the AVX2 int8 Winograd kernels can run here (built, and the CPU has AVX2 and FMA)."""
    return avx2_kernels() is not None


def transformed_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[O, C, 3, 3] fp32 weights -> (int8 codes of ``G g G^T`` [16, O, C], their scales [16, O]), positions
    row-major over the 4x4 tile."""
    o, c = weight.shape[:2]
    u = (_G @ weight.double() @ _G.T).permute(2, 3, 0, 1).reshape(16 * o, c).float()
    codes, scale = kernel_int8_weights(u)
    return codes.view(16, o, c), scale.view(16, o)


def f4_pays(out_channels: int, in_channels: int, height: int, width: int) -> bool:
    """Whether F(4x4) is the faster of the two kernels on this layer at this output size: its 16-bit weights come
    to at most 32 KB per 4x4 tile of the map (e.g. yolo-v3 at 416: maps of 52x52 and more)."""
    tiles = -(-height // 4) * -(-width // 4)
    return 36 * out_channels * in_channels * 2 <= _F4_BYTES_PER_TILE * tiles


def transformed_weights_f4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[O, C, 3, 3] fp32 weights -> (int16 codes of F(4x4)'s ``G g G^T`` [36, O, C], their float64 scales [36, O]).

    Per (position, output channel): scale = max(max |U| / 32767, sum |U| / (L - C / 2)) with L = (2^31 - 1) //
    4096, so that the rounded codes' absolute sum stays at most L and, with |V'| <= 4096, every int32 sum over the
    channels is exact for any input (16-bit codes: 11 to 15 bits of each weight, against 7 in F(2x2)'s 8 bits)."""
    o, c = weight.shape[:2]
    u = winograd_weights(weight.double()).transpose(1, 2)  # [36, O, C], the fp32 path's G
    mag = u.abs()
    scale = torch.maximum(mag.amax(2) / 32767, mag.sum(2) / (_L1_BOUND - c / 2)).clamp_min(1e-30)
    return torch.round(u / scale.unsqueeze(-1)).to(torch.int16), scale


class Int8Winograd(KernelConv):
    """A 3x3 stride-1 :class:`FrozenConv` as Winograd on its uint8 input codes (``in_qp``): [B, C, H, W] uint8 ->
    fp32 [B, O, H, W] (channels_last) after the activation. Same interface as
    :class:`~yolodet.inference.quantize.QuantConv`.

    ``tile``: 4, F(4x4, 3x3) with 16-bit transformed operands, or 2, F(2x2, 3x3) in 8 bits; default:
    :func:`f4_pays` at the cfg's size (the output map in ``conv.out_shape``). Either kernel runs any size; the
    choice is a speed one."""

    def __init__(self, conv: FrozenConv, in_qp: tuple[float, int], tile: int | None = None) -> None:
        super().__init__(conv, in_qp)
        scale_in, zero = in_qp
        if tile is None:
            tile = 4 if f4_pays(*conv.weight.shape[:2], *conv.out_shape[1:]) else 2
        if tile not in (2, 4):
            raise ValueError(f"tile must be 2 or 4, got {tile}")
        self.tile = tile
        if tile == 4:
            codes, scale = transformed_weights_f4(conv.weight)
            self.register_buffer("packed", pack(codes, 2))
            self.register_buffer("scale", (scale_in * scale).float())  # [36, O]
        else:
            codes, scale = transformed_weights(conv.weight)
            zeros = torch.full((16, 1), _MID, dtype=torch.int64)
            zeros[_SUM_POSITION] = zero
            self.register_buffer("packed", pack(codes, 4))
            self.register_buffer("corr", (zeros * codes.long().sum(2)).int())  # [16, O]: zero point x sum of codes
            self.register_buffer("scale", (4 * scale_in * scale.double()).float())  # [16, O]

    @staticmethod
    def applies(conv: FrozenConv) -> bool:
        """Whether ``conv`` has the shape this kernel computes, enough input channels for it to pay, and the kernel
        runs here."""
        w = conv.weight
        return (tuple(w.shape[-2:]) == (3, 3) and w.shape[1] >= _MIN_CHANNELS and conv.groups == 1
                and list(conv.stride) == [1, 1] and list(conv.padding) == [1, 1] and list(conv.dilation) == [1, 1]
                and int8_winograd_available())

    def _run(self, kernel, x, out, threads: int, **epilogue) -> None:
        h, w, c = x.shape
        packed, scale, bias = self.packed.numpy(), self.scale.numpy(), self.bias.numpy()
        if self.tile == 4:
            kernel.conv4(x, self.in_qp[1], packed, scale, bias, self.slope, out, h, w, c, self.filters, threads,
                         **epilogue)
        else:
            kernel.conv(x, self.in_qp[1], packed, self.corr.numpy(), scale, bias, self.slope, out, h, w, c,
                        self.filters, threads, **epilogue)
