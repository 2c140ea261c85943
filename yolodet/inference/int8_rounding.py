"""How the int8 fast mode rounds its weights, and whether this CPU's oneDNN has VNNI (which decides the rounding):
shared by :mod:`yolodet.inference.quantize` (oneDNN's direct int8 convolution),
:mod:`yolodet.inference.int8_kernels` and the AVX2 layers built on it. Why pairs of codes are bounded without VNNI:
the :mod:`~yolodet.inference.quantize` module docstring."""

from __future__ import annotations

import os

import torch

from yolodet.inference.cpu_features import cpu_flags

__all__ = ["cpu_has_vnni", "int8_weights", "kernel_int8_weights"]

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which its int8 kernels have no VNNI instructions.
_NO_VNNI_ISAS = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}


def cpu_has_vnni() -> bool:
    """Whether oneDNN's int8 kernels use VNNI here: AVX-512 VNNI, AVX-VNNI or AMX int8 in :func:`cpu_flags`, unless
    ``ONEDNN_MAX_CPU_ISA`` holds oneDNN below them (e.g. ``AVX2``: what an AVX2-only CPU runs, also for its 16-bit
    pair sums, see :func:`int8_weights`)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_VNNI_ISAS:
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def int8_weights(weight: torch.Tensor, vnni: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[O, ...] fp32 weights -> (int8 codes ``round(w / scale)`` of the same shape, [O] per-output-channel scales).

    ``vnni``: scale max |w| / 127. Without VNNI: the largest plus the second largest |w| of the channel over 127.99
    (not below max |w| / 127), so that any two codes of a channel, rounded, sum to at most 128 in magnitude and a
    16-bit sum of two uint8 x int8 products cannot saturate (see :mod:`yolodet.inference.quantize`). 127.99 rather
    than 128: two quotients that sum to less than 128 cannot both round up past it, whatever float32 rounding
    does."""
    w = weight.detach().float()
    top = w.abs().flatten(1)
    if vnni or top.shape[1] < 2:
        scale = (top.amax(1) / 127).clamp_min(1e-12)
    else:
        two = top.topk(2, dim=1).values
        scale = torch.maximum(two.sum(1) / 127.99, two[:, 0] / 127).clamp_min(1e-12)
    codes = torch.round(w / scale.view(-1, *[1] * (w.ndim - 1))).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def kernel_int8_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[O, ..., C] fp32 weights -> (int8 codes, same shape; [O] scales) for yolodet's own AVX2 kernels, which sum
    over the last dimension C (every other one is a separate product: a tap, a Winograd position)
    (``yolodet/_int8/products_u8s8.h``): there the 16-bit sums of ``vpmaddubsw`` hold four products, channels
    {8m, 8m+1, 8m+4, 8m+5} and {8m+2, 8m+3, 8m+6, 8m+7}, before ``vpmaddwd`` widens them; each such quad of a
    channel's codes is kept at most 128 in magnitude (255 x 128 fits 16 bits), exact for every input.

    Scale per output channel: the largest quad's sum of |w| over 126 (four roundings add at most 2; a weight alone
    in its quad keeps 126 codes). Unlike :func:`int8_weights`' bound on *any* two weights (oneDNN's pairing is not
    known), these quads are fixed: on yolov3-tiny's layers the scale is within a few percent of the pair bound's."""
    w = weight.detach().float()
    o, c = w.shape[0], w.shape[-1]
    padded = torch.zeros(*w.shape[:-1], -(-c // 8) * 8)
    padded[..., :c] = w.abs()
    quads = padded.view(*w.shape[:-1], -1, 2, 2, 2).sum((-3, -1))  # [..., C/8, 2]: channels 8m + 4h + 2j + e
    scale = (quads.reshape(o, -1).amax(1) / 126).clamp_min(1e-12)
    return torch.round(w / scale.view(-1, *[1] * (w.ndim - 1))).to(torch.int8), scale
