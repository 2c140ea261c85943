"""Strided 3x3 convolutions on int8 codes for the int8 fast mode on CPUs whose oneDNN has no VNNI (AVX2 CPUs).

Why: Winograd does not cover strides, so darknet53's five downsampling convolutions (a fifth of yolo-v3's int8
time) ran in oneDNN's direct int8 kernel, which multiplies with ``vpmaddubsw`` + ``vpmaddwd`` per 32 products and
writes fp32 for a separate leaky pass. ``yolodet/_int8/direct_int8.c`` runs yolodet's own product block over the 9
taps (``products_u8s8.h``: four products per 16-bit lane, a quarter fewer multiply instructions) with the
dequantisation, bias, leaky/relu and the epilogue (codes for the next layer) fused. Measured per layer and in the
network: the README's int8 section.

What it computes (exactly, int32 sums; ``tests/test_direct_int8.py``): uint8 codes x (zero point z, also the code of
the zero padding) times the int8 weights of :func:`~yolodet.inference.int8_rounding.kernel_int8_weights`, minus
``z * sum(codes)``, times the two scales, plus the bias, then leaky/relu; other activations after it in fp32.

Where: 3x3 convolutions with a stride (2 in every Darknet cfg), padding 1, undilated, ungrouped, with a multiple of 4
input channels, that the int8 mode runs in int8, when oneDNN has no VNNI and the AVX2 kernels are available. Its
time per layer against oneDNN's direct int8 kernel (``bench/int8_conv3x3.py``, 0.8-1.0 of it on darknet53's five
shapes) and in the network is in the README's int8 section.
"""

from __future__ import annotations

from yolodet.inference.frozen import FrozenConv
from yolodet.inference.int8_kernels import KernelConv, avx2_kernels
from yolodet.inference.int8_rounding import kernel_int8_weights

__all__ = ["Int8Direct3x3"]


class Int8Direct3x3(KernelConv):
    """A strided 3x3 :class:`FrozenConv` on uint8 codes (``in_qp``): [B, C, H, W] uint8 -> fp32 [B, O, H', W']
    (channels_last) after the activation. Same interface as :class:`~yolodet.inference.quantize.QuantConv`."""

    def __init__(self, conv: FrozenConv, in_qp: tuple[float, int]) -> None:
        super().__init__(conv, in_qp)
        self.stride = int(conv.stride[0])
        codes, scale = kernel_int8_weights(conv.weight.detach().permute(0, 2, 3, 1))  # [O, 3, 3, C], [O]
        self._register_products(codes.flatten(1, 2).transpose(0, 1), scale, in_qp)  # taps [9, O, C]

    @staticmethod
    def applies(conv: FrozenConv) -> bool:
        """Whether ``conv`` is a 3x3 convolution with a stride > 1 (the same both ways), padding 1, ungrouped,
        undilated, with a multiple of 4 input channels, and the kernel runs here."""
        w = conv.weight
        s = list(conv.stride)
        return (tuple(w.shape[-2:]) == (3, 3) and s[0] == s[1] > 1 and list(conv.padding) == [1, 1]
                and list(conv.dilation) == [1, 1] and conv.groups == 1 and w.shape[1] % 4 == 0
                and avx2_kernels() is not None)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return (h - 1) // self.stride + 1, (w - 1) // self.stride + 1

    def _run(self, kernel, x, out, threads: int, **epilogue) -> None:
        h, w, c = x.shape
        kernel.direct(x, self.in_qp[1], self.packed.numpy(), self.corr.numpy(), self.scale.numpy(),
                      self.bias.numpy(), self.slope, out, h, w, c, self.filters, self.stride, threads, **epilogue)
