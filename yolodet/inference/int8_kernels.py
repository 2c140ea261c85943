"""What yolodet's AVX2 int8 layers share (:class:`~yolodet.inference.winograd_int8.Int8Winograd`,
:class:`~yolodet.inference.pointwise_int8.Int8Pointwise`): the extension's loader, its packed weight layout, and a
base layer that runs one image at a time into an fp32 NHWC output with leaky/relu fused."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from yolodet.inference.frozen import FrozenConv
from yolodet.inference.cpu_features import avx2_extension

__all__ = ["NR", "KernelConv", "avx2_kernels", "pack"]

NR = 16  # output channels per packed weight block (WINO_NR, WINO4_NR, POINTWISE_NR in yolodet/_int8/)


def avx2_kernels():
    """yolodet's AVX2 int8 kernels (the extension ``yolodet._int8_avx2``: Winograd F(2x2) and F(4x4), 1x1), or
    None where it was not built or this CPU lacks AVX2 or FMA."""
    return avx2_extension("_int8_avx2")


def pack(codes: torch.Tensor, group: int) -> torch.Tensor:
    """[P, O, C] weight codes (P positions: 16 or 36 for Winograd, 1 for 1x1) -> the kernels' layout
    [P, ceil(O/16), ceil(C/group), 16, group], zero-padded, flattened (a 5-D buffer breaks
    ``Module.to(channels_last)``). ``group``: the channels one product instruction sums, 4 for int8 codes
    (``vpmaddubsw`` + ``vpmaddwd``), 2 for int16 (``vpmaddwd``)."""
    p, o, c = codes.shape
    ob, cg = -(-o // NR), -(-c // group)
    padded = torch.zeros(p, ob * NR, cg * group, dtype=codes.dtype)
    padded[:, :o, :c] = codes
    return padded.view(p, ob, NR, cg, group).permute(0, 1, 3, 2, 4).contiguous().flatten()


class KernelConv(nn.Module):
    """Base of a :class:`FrozenConv` run by an AVX2 kernel on uint8 codes (``in_qp``): [B, C, H, W] uint8 ->
    fp32 [B, O, H, W] (channels_last) after the activation; same interface as
    :class:`~yolodet.inference.quantize.QuantConv`. Leaky and relu run inside the kernel (``slope``: 0 for relu,
    1 for none); any other activation after it in fp32. Subclasses register ``packed``, ``scale`` (and what else
    their kernel reads) and implement :meth:`_run`."""

    sources: tuple[int, ...] = ()

    def __init__(self, conv: FrozenConv, in_qp: tuple[float, int]) -> None:
        super().__init__()
        self.register_buffer("bias", conv.bias.detach().float().contiguous())
        self.in_qp, self.out_shape, self.act = in_qp, conv.out_shape, conv.act
        self.filters = conv.weight.shape[0]
        slope = conv._fused_slope()  # leaky, relu; None: linear in the kernel, the activation after it
        self.slope, self._frozen = (1.0, conv) if slope is None else (slope, None)

    def _run(self, kernel, x: np.ndarray, out: np.ndarray, threads: int) -> None:
        """One image: x uint8 [H, W, C] codes -> out float32 [H, W, O], written."""
        raise NotImplementedError

    def forward(self, q: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        kernel = avx2_kernels()
        q = q.contiguous(memory_format=torch.channels_last)
        b, _, h, w = q.shape
        out = torch.empty(b, h, w, self.filters)
        threads = torch.get_num_threads()
        for i in range(b):
            self._run(kernel, q[i].permute(1, 2, 0).numpy(), out[i].numpy(), threads)
        y = out.permute(0, 3, 1, 2)  # [B, O, H, W], channels_last
        return y if self._frozen is None else self._frozen._activate_(y)
