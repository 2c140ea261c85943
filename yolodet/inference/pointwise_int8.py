"""1x1 convolutions on int8 codes for the int8 fast mode on CPUs whose oneDNN has no VNNI (AVX2 CPUs).

Why: oneDNN's int8 convolution in torch 2.14 has no leaky post-op, so :class:`~yolodet.inference.quantize.QuantConv`
writes its fp32 output and reads it again for the activation; and without VNNI its 1x1 kernels reach ~75 GMAC/s a
core on yolo-v3's shapes, where the product block of yolodet's own AVX2 kernels (``vpmaddubsw`` + ``vpmaddwd``,
``yolodet/_int8/products_u8s8.h``) reaches ~95. ``yolodet/_int8/pointwise_int8.c`` runs that block over
pixels and fuses the dequantisation, bias and leaky/relu: 0.86-0.94 of oneDNN's time per layer, caches cold
(``bench/int8_conv3x3.py``'s 1x1 table, in the README).

What it computes (exactly, int32 sums; ``tests/test_pointwise_int8.py``): uint8 codes x (zero point z) times the
int8 weights of :func:`~yolodet.inference.int8_rounding.int8_weights` without VNNI (every pair of a channel's codes
at most 128 together, so the 16-bit pair sums cannot saturate), minus ``z * sum(codes)``, times the two scales, plus
the bias, then leaky/relu; other activations after it in fp32. The same integers as oneDNN's direct kernel on these
weights: only the float rounding of the last steps differs.

Where: 1x1 stride-1 ungrouped convolutions with a multiple of 4 input channels that the int8 mode runs in int8, when
oneDNN has no VNNI and the AVX2 kernels are available (:func:`~yolodet.inference.int8_rounding.avx2_kernels`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from yolodet.inference.frozen import FrozenConv
from yolodet.inference.int8_rounding import avx2_kernels, int8_weights

__all__ = ["Int8Pointwise"]

_NR = 16  # output channels per packed weight block (POINTWISE_NR in pointwise_int8.h)


class Int8Pointwise(nn.Module):
    """A 1x1 :class:`FrozenConv` on uint8 codes (``in_qp``): [B, C, H, W] uint8 -> fp32 [B, O, H, W]
    (channels_last) after the activation. Same interface as :class:`~yolodet.inference.quantize.QuantConv`."""

    sources: tuple[int, ...] = ()

    def __init__(self, conv: FrozenConv, in_qp: tuple[float, int]) -> None:
        super().__init__()
        scale_in, zero = in_qp
        o, c = conv.weight.shape[:2]
        codes, scale = int8_weights(conv.weight.detach().flatten(1), vnni=False)  # [O, C], [O]
        ob = -(-o // _NR)
        padded = torch.zeros(ob * _NR, c, dtype=torch.int8)
        padded[:o] = codes
        self.register_buffer("packed", padded.view(ob, _NR, c // 4, 4).permute(0, 2, 1, 3).contiguous().flatten())
        self.register_buffer("corr", (zero * codes.long().sum(1)).int())  # [O]: zero point x sum of codes
        self.register_buffer("scale", (scale_in * scale.double()).float())  # [O]
        self.register_buffer("bias", conv.bias.detach().float().contiguous())
        self.in_qp, self.out_shape, self.act = in_qp, conv.out_shape, conv.act
        self.filters = o
        if conv._attr == "leaky_relu":
            self.slope, self._frozen = float(conv._scalars[0]), None
        elif conv._attr == "relu":
            self.slope, self._frozen = 0.0, None
        else:  # linear in the kernel, the activation after it (identity for linear)
            self.slope, self._frozen = 1.0, conv

    @staticmethod
    def applies(conv: FrozenConv) -> bool:
        """Whether ``conv`` is a 1x1 stride-1 ungrouped convolution with a multiple of 4 input channels, and the
        kernel runs here."""
        w = conv.weight
        return (tuple(w.shape[-2:]) == (1, 1) and w.shape[1] % 4 == 0 and conv.groups == 1
                and list(conv.stride) == [1, 1] and list(conv.padding) == [0, 0] and avx2_kernels() is not None)

    def forward(self, q: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        kernel = avx2_kernels()
        q = q.contiguous(memory_format=torch.channels_last)
        b, c, h, w = q.shape
        out = torch.empty(b, h, w, self.filters)
        threads = torch.get_num_threads()
        packed, corr, scale, bias = (t.numpy() for t in (self.packed, self.corr, self.scale, self.bias))
        for i in range(b):
            kernel.pointwise(q[i].permute(1, 2, 0).numpy(), packed, corr, scale, bias, self.slope, out[i].numpy(),
                             h * w, c, self.filters, threads)
        y = out.permute(0, 3, 1, 2)  # [B, O, H, W], channels_last
        return y if self._frozen is None else self._frozen._activate_(y)
