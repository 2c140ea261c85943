"""int8 Winograd F(2x2, 3x3) for the int8 fast mode on CPUs whose oneDNN has no VNNI (AVX2 CPUs).

Why: without VNNI an int8 multiply-add costs ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` per 32 products, so oneDNN's
direct int8 3x3 convolution runs only ~1.7x faster than its fp32 one, while the fp32 path uses Winograd F(4x4, 3x3)
(:mod:`yolodet.inference.winograd`): on a 3x3 layer the int8 mode was no faster than fp32 (``bench/int8_conv3x3.py``).
F(2x2, 3x3) needs 16 products per 2x2 output tile instead of 36: 2.25x fewer, still 8-bit, at the same instruction
rate. PyTorch exposes no int8 Winograd and its int8 GEMMs cannot take transformed operands at full speed (measured
in that script), hence the hand-written kernel (``yolodet/_winograd/``, C with AVX2 intrinsics and OpenMP).

What it computes (exactly; ``tests/test_winograd_int8.py`` holds it to a float64 version of the same integers):

- the input's uint8 codes (zero point z), 4x4 patches with stride 2, ``V = B^T d B`` per channel (integers);
- ``V`` back to 8 bits, per tile and position over the channels: ``round(V / 2^s) + 128`` with the least shift s of
  0, 1, 2 whose codes fit (a sum of differences of codes spans [-510, 510]: s = 2 covers any input; smooth tiles
  keep every bit), rounded half to even (half up biased AP by up to +0.012 on coco128); at position (1, 1) (a sum of
  four codes) always ``round(V / 4)``, with the input's zero point. No Winograd-domain calibration is needed. (F(4x4)
  has transform entries up to 5 and would keep far fewer bits: hence F(2x2).)
- ``U = G g G^T`` of the fp32 BN-folded weights, int8 per (position, output channel), with the pair bound of
  :func:`~yolodet.inference.int8_rounding.int8_weights` (``vpmaddubsw`` sums pairs in 16 bits; exact for every input);
- 16 int32 products per tile, dequantised per (position, output channel) and by 2^s / 4, ``Y = A^T M A``, bias and
  leaky/relu in the kernel; other activations after it in fp32. Output fp32, as
  :class:`~yolodet.inference.quantize.QuantConv`.

Accuracy (yolov3-tiny, coco128, measured with the rest of the int8 mode): the README's int8 accuracy table.
Speed (2-core AMD EPYC, AVX2 code; batch 1): 128->256 @52 in ~2.1 ms against oneDNN's int8 direct 3.5 and fp32
Winograd 3.3 ms; the README has the table (``bench/int8_conv3x3.py``).

Where: 3x3 stride-1, undilated, ungrouped convolutions with padding 1 that the int8 mode runs in int8, when oneDNN's
int8 kernels have no VNNI (:func:`~yolodet.inference.int8_rounding.cpu_has_vnni`; with VNNI oneDNN's direct kernel is
faster), the CPU has AVX2 and FMA, and the extension was built.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

from yolodet.inference.frozen import FrozenConv
from yolodet.inference.int8_rounding import cpu_flags, int8_weights

__all__ = ["Int8Winograd", "int8_winograd_available", "pack", "transformed_weights"]

# F(2x2, 3x3) (Lavin & Gray): Y = A^T [(G g G^T) * (B^T d B)] A; B and A live in the C kernel.
_G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
_NR = 16  # output channels per packed weight block (WINO_NR in winograd_int8.h)
_SUM_POSITION = 5  # (1, 1): the one tile position whose transform is a sum of four codes (the input's zero point)
_MID = 128  # zero point of the 15 other positions (differences of codes)
# Fewer input channels: the per-tile transforms outweigh the products saved (bench/int8_conv3x3.py, AVX2: 16 -> 32
# @208 takes 1.68 ms against oneDNN's direct 1.02; 32 -> 64 @208 breaks even, 3.88 against 3.81).
_MIN_CHANNELS = 32


@functools.lru_cache(maxsize=None)
def _kernel():
    """The extension module, or None where it was not built or this CPU lacks AVX2 or FMA."""
    if not {"avx2", "fma"} <= cpu_flags():
        return None
    try:
        from yolodet import _winograd_int8
    except ImportError:
        return None
    return _winograd_int8


def int8_winograd_available() -> bool:
    """Whether the AVX2 int8 Winograd kernel can run here (built, and the CPU has AVX2 and FMA)."""
    return _kernel() is not None


def transformed_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[O, C, 3, 3] fp32 weights -> (int8 codes of ``G g G^T`` [16, O, C], their scales [16, O]), positions
    row-major over the 4x4 tile."""
    o, c = weight.shape[:2]
    u = (_G @ weight.double() @ _G.T).permute(2, 3, 0, 1).reshape(16 * o, c).float()
    codes, scale = int8_weights(u, vnni=False)
    return codes.view(16, o, c), scale.view(16, o)


def pack(codes: torch.Tensor) -> torch.Tensor:
    """[16, O, C] int8 -> the kernel's layout [16, ceil(O/16), ceil(C/4), 16, 4] (zero-padded)."""
    p, o, c = codes.shape
    ob, cq = -(-o // _NR), -(-c // 4)
    padded = torch.zeros(p, ob * _NR, cq * 4, dtype=torch.int8)
    padded[:, :o, :c] = codes
    return padded.view(p, ob, _NR, cq, 4).permute(0, 1, 3, 2, 4).contiguous()


class Int8Winograd(nn.Module):
    """A 3x3 stride-1 :class:`FrozenConv` as int8 Winograd F(2x2, 3x3): uint8 [B, C, H, W] (codes of ``in_qp``) ->
    fp32 [B, O, H, W] (channels_last) after the activation. Same interface as
    :class:`~yolodet.inference.quantize.QuantConv`."""

    sources: tuple[int, ...] = ()

    def __init__(self, conv: FrozenConv, in_qp: tuple[float, int]) -> None:
        super().__init__()
        scale_in, zero = in_qp
        codes, scale = transformed_weights(conv.weight)
        zeros = torch.full((16, 1), _MID, dtype=torch.int64)
        zeros[_SUM_POSITION] = zero
        self.register_buffer("packed", pack(codes).flatten())  # 1-D: a 5-D buffer breaks Module.to(channels_last)
        self.register_buffer("corr", (zeros * codes.long().sum(2)).int())  # [16, O]: zero point x sum of codes
        self.register_buffer("scale", (4 * scale_in * scale.double()).float())  # [16, O]
        self.register_buffer("bias", conv.bias.detach().float().contiguous())
        self.in_qp, self.out_shape, self.act = in_qp, conv.out_shape, conv.act
        self.filters = conv.weight.shape[0]
        if conv._attr == "leaky_relu":
            self.slope, self._frozen = float(conv._scalars[0]), None
        elif conv._attr == "relu":
            self.slope, self._frozen = 0.0, None
        else:  # linear in the kernel, the activation after it (identity for linear)
            self.slope, self._frozen = 1.0, conv

    @staticmethod
    def applies(conv: FrozenConv) -> bool:
        """Whether ``conv`` has the shape this kernel computes, enough input channels for it to pay, and the kernel
        runs here."""
        w = conv.weight
        return (tuple(w.shape[-2:]) == (3, 3) and w.shape[1] >= _MIN_CHANNELS and conv.groups == 1
                and list(conv.stride) == [1, 1] and list(conv.padding) == [1, 1] and list(conv.dilation) == [1, 1]
                and int8_winograd_available())

    def forward(self, q: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        kernel = _kernel()
        q = q.contiguous(memory_format=torch.channels_last)
        b, c, h, w = q.shape
        out = torch.empty(b, h, w, self.filters)
        threads = torch.get_num_threads()
        packed, corr, scale, bias = (t.numpy() for t in (self.packed, self.corr, self.scale, self.bias))
        for i in range(b):
            kernel.conv(q[i].permute(1, 2, 0).numpy(), self.in_qp[1], packed, corr, scale, bias, self.slope,
                        out[i].numpy(), h, w, c, self.filters, threads)
        y = out.permute(0, 3, 1, 2)  # [B, O, H, W], channels_last
        return y if self._frozen is None else self._frozen._activate_(y)
