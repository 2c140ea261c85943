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
    1 for linear); any other activation after it in fp32. Subclasses register ``packed``, ``scale`` (and what else
    their kernel reads) and implement :meth:`_run`.

    :meth:`run` gives the kernel's epilogue (``yolodet/_int8/epilogue.h``) to the int8 network: a residual added
    after the activation (a ``[shortcut]`` fused into the convolution) and the output as the next layer's uint8
    codes, with or without the fp32 output."""

    sources: tuple[int, ...] = ()

    def __init__(self, conv: FrozenConv, in_qp: tuple[float, int]) -> None:
        super().__init__()
        self.register_buffer("bias", conv.bias.detach().float().contiguous())
        self.in_qp, self.out_shape, self.act = in_qp, conv.out_shape, conv.act
        self.filters = conv.weight.shape[0]
        slope = conv._fused_slope()  # linear, leaky, relu; None: linear in the kernel, the activation after it
        self.slope, self._frozen = (1.0, conv) if slope is None else (slope, None)

    def _register_products(self, codes: torch.Tensor, scale: torch.Tensor, in_qp: tuple[float, int]) -> None:
        """Register what a kernel summing one set of products per output reads (1x1, direct 3x3): ``codes`` int8
        [P, O, C] (P: the taps, summed), ``scale`` [O] -> ``packed`` (:func:`pack`), ``corr`` [O] (the input's zero
        point x the sum of each output's codes), ``scale`` [O] (the input's scale x ``scale``)."""
        scale_in, zero = in_qp
        self.register_buffer("packed", pack(codes, 4))
        self.register_buffer("corr", (zero * codes.long().sum((0, 2))).int())
        self.register_buffer("scale", (scale_in * scale.double()).float())

    @property
    def fuses_epilogue(self) -> bool:
        """Whether the whole activation runs in the kernel, so that :meth:`run` can add a residual after it and
        write codes."""
        return self._frozen is None

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """The output's (H', W') for an input of (h, w): the same, unless the kernel strides."""
        return h, w

    def _run(self, kernel, x: np.ndarray, out: np.ndarray | None, threads: int, **epilogue) -> None:
        """One image: x uint8 [H, W, C] codes -> out float32 [H', W', O] (or None), written; ``epilogue``: the
        kernel's optional ``residual``, ``codes``, ``code_scale``, ``code_zero``."""
        raise NotImplementedError

    def run(self, q: torch.Tensor, residual: torch.Tensor | None = None,
            codes_qp: tuple[float, int] | None = None, keep_float: bool = True
            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """q uint8 [B, C, H, W] -> (fp32 [B, O, H', W'] or None, uint8 codes [B, O, H', W'] of ``codes_qp`` or
        None), both channels_last (:meth:`out_size`). ``residual`` (fp32 [B, O, H', W']) is added after the
        activation; ``codes_qp`` asks for the codes (bit for bit :func:`~yolodet.inference.quantize._quantize` of the
        fp32 output); ``keep_float`` False skips the fp32 output (then ``codes_qp`` is required). Both need
        :attr:`fuses_epilogue`."""
        if (residual is not None or codes_qp is not None) and not self.fuses_epilogue:
            raise ValueError("a residual or codes need the activation inside the kernel (leaky, relu or linear)")
        if not keep_float and codes_qp is None:
            raise ValueError("keep_float=False needs codes_qp")
        kernel = avx2_kernels()
        q = q.contiguous(memory_format=torch.channels_last)
        b = q.shape[0]
        h, w = self.out_size(*q.shape[2:])
        out = torch.empty(b, h, w, self.filters) if keep_float else None
        codes = torch.empty(b, h, w, self.filters, dtype=torch.uint8) if codes_qp is not None else None
        if residual is not None:
            residual = residual.float().permute(0, 2, 3, 1).contiguous()  # [B, H, W, O]; no copy if channels_last
        threads = torch.get_num_threads()
        for i in range(b):
            epilogue = {}
            if residual is not None:
                epilogue["residual"] = residual[i].numpy()
            if codes is not None:
                epilogue.update(codes=codes[i].numpy(), code_scale=codes_qp[0], code_zero=codes_qp[1])
            self._run(kernel, q[i].permute(1, 2, 0).numpy(), None if out is None else out[i].numpy(), threads,
                      **epilogue)
        y = None if out is None else out.permute(0, 3, 1, 2)  # [B, O, H, W], channels_last
        if y is not None and self._frozen is not None:
            y = self._frozen._activate_(y)
        return y, None if codes is None else codes.permute(0, 3, 1, 2)

    def forward(self, q: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return self.run(q)[0]
