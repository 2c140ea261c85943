"""1x1 convolutions on int8 codes for the int8 fast mode on CPUs whose oneDNN has no VNNI (AVX2 CPUs).

Why: oneDNN's int8 convolution in torch 2.14 has no leaky post-op, so :class:`~yolodet.inference.quantize.QuantConv`
writes its fp32 output and reads it again for the activation; and without VNNI its 1x1 kernels reach ~75 GMAC/s a
core on yolo-v3's shapes, where the product block of yolodet's own AVX2 kernels (``vpmaddubsw`` + ``vpmaddwd``,
``yolodet/_int8/products_u8s8.h``) reaches ~95. ``yolodet/_int8/pointwise_int8.c`` runs that block over
pixels and fuses the dequantisation, bias and leaky/relu: 0.86-0.94 of oneDNN's time per layer, caches cold
(``bench/int8_conv3x3.py``'s 1x1 table, in the README).

What it computes (exactly, int32 sums; ``tests/test_pointwise_int8.py``): uint8 codes x (zero point z) times the
int8 weights of :func:`~yolodet.inference.int8_rounding.kernel_int8_weights` (every four codes of a channel that
share a 16-bit lane at most 128 together, so the 16-bit sums cannot overflow), minus ``z * sum(codes)``, times the
two scales, plus the bias, then leaky/relu; other activations after it in fp32. The same integers as oneDNN's direct
kernel on these weights: only the float rounding of the last steps differs.

Where: 1x1 stride-1 ungrouped convolutions with a multiple of 4 input channels that the int8 mode runs in int8, when
oneDNN has no VNNI and the AVX2 kernels are available (:func:`~yolodet.inference.int8_kernels.avx2_kernels`).
"""

from __future__ import annotations

from yolodet.inference.frozen import FrozenConv
from yolodet.inference.int8_kernels import KernelConv, avx2_kernels
from yolodet.inference.int8_rounding import kernel_int8_weights

__all__ = ["Int8Pointwise"]


class Int8Pointwise(KernelConv):
    """A 1x1 :class:`FrozenConv` on uint8 codes (``in_qp``): [B, C, H, W] uint8 -> fp32 [B, O, H, W]
    (channels_last) after the activation. Same interface as :class:`~yolodet.inference.quantize.QuantConv`."""

    def __init__(self, conv: FrozenConv, in_qp: tuple[float, int]) -> None:
        super().__init__(conv, in_qp)
        codes, scale = kernel_int8_weights(conv.weight.detach().flatten(1))  # [O, C], [O]
        self._register_products(codes.unsqueeze(0), scale, in_qp)  # one tap

    @staticmethod
    def applies(conv: FrozenConv) -> bool:
        """Whether ``conv`` is a 1x1 stride-1 ungrouped convolution with a multiple of 4 input channels, and the
        kernel runs here."""
        w = conv.weight
        return (tuple(w.shape[-2:]) == (1, 1) and w.shape[1] % 4 == 0 and conv.groups == 1
                and list(conv.stride) == [1, 1] and list(conv.padding) == [0, 0] and avx2_kernels() is not None)

    def _run(self, kernel, x, out, threads: int, **epilogue) -> None:
        h, w, c = x.shape
        kernel.pointwise(x, self.packed.numpy(), self.corr.numpy(), self.scale.numpy(), self.bias.numpy(), self.slope,
                         out, h * w, c, self.filters, threads, **epilogue)
