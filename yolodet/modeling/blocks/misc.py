"""Small Darknet layers: ``[crop]``, ``[batchnorm]``, ``[activation]``, ``[empty]``/``[silence]``, ``[implicit]``,
``[sam]``, ``[local_avgpool]`` and ``[contrastive]``, each as Darknet's CPU inference computes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.base import Block, BuildContext, Shape
from yolodet.modeling.blocks.conv import BN_EPS, make_activation
from yolodet.modeling.blocks.structural import pool_geometry
from yolodet.modeling.registry import BLOCKS


class Crop(Block):
    """``[crop]`` at inference: the centre ``crop_height x crop_width`` window, times 2 minus 1 (pixels in [0, 1]
    -> [-1, 1]) unless ``noadjust=1``. Training's random offset, flip and colour jitter are not applied here."""

    def __init__(self, top: int, left: int, adjust: bool, out_shape: Shape) -> None:
        super().__init__()
        self.top, self.left, self.adjust, self.out_shape = top, left, adjust, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        _, h, w = self.out_shape
        x = x[:, :, self.top:self.top + h, self.left:self.left + w]
        return x * 2 - 1 if self.adjust else x


@BLOCKS.register("crop", keys=("crop_height", "crop_width", "noadjust"))
def build_crop(block: CfgBlock, ctx: BuildContext) -> Crop:
    """Centre crop (Darknet's ``forward_crop_layer`` with ``state.train = 0``)."""
    c, h, w = ctx.in_shape
    ch, cw = block.get_int("crop_height", 1), block.get_int("crop_width", 1)
    for key, value, limit in (("crop_height", ch, h), ("crop_width", cw, w)):
        if not 1 <= value <= limit:
            raise block.error(f"must be in 1..{limit} (the input is {h}x{w}), got {value}", key)
    return Crop((h - ch) // 2, (w - cw) // 2, not block.get_int("noadjust", 0), (c, ch, cw))


class BatchNorm(Block):
    """``[batchnorm]``: per-channel ``(x - mean) / sqrt(var + 1e-5) * scale + bias`` (its own weights)."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(shape[0], eps=BN_EPS, momentum=0.01)
        self.out_shape = shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.bn(x)

    def darknet_tensors(self) -> list[torch.Tensor]:
        """Darknet order (``load_batchnorm_weights``): ``biases, scales, rolling_mean, rolling_variance``."""
        return [self.bn.bias.data, self.bn.weight.data, self.bn.running_mean, self.bn.running_var]


@BLOCKS.register("batchnorm")
def build_batchnorm(block: CfgBlock, ctx: BuildContext) -> BatchNorm:
    """A stand-alone batch normalisation."""
    return BatchNorm(ctx.in_shape)


class Activation(Block):
    """``[activation]`` and ``[empty]``/``[silence]`` (identity): an activation of the input."""

    def __init__(self, act: nn.Module, out_shape: Shape) -> None:
        super().__init__()
        self.act, self.out_shape = act, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.act(x)


@BLOCKS.register("activation", keys=("activation",))
def build_activation(block: CfgBlock, ctx: BuildContext) -> Activation:
    """An activation layer (default linear)."""
    return Activation(make_activation(block, "linear"), ctx.in_shape)


@BLOCKS.register("empty")
def build_empty(block: CfgBlock, ctx: BuildContext) -> Activation:
    """``[empty]`` / ``[silence]``: passes its input on."""
    return Activation(nn.Identity(), ctx.in_shape)


@BLOCKS.register("contrastive", keys=())
def build_contrastive(block: CfgBlock, ctx: BuildContext) -> Activation:
    """``[contrastive]``: a training-only loss layer; at inference Darknet returns at once (identity here)."""
    return Activation(nn.Identity(), ctx.in_shape)


class Implicit(Block):
    """``[implicit]`` (YOLOR): a learned tensor [filters, atoms, 1], the same for every image; ignores its input."""

    def __init__(self, filters: int, atoms: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(filters, atoms, 1))
        self.out_shape = (filters, atoms, 1)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.weight[None].expand(x.shape[0], *self.out_shape)

    def darknet_tensors(self) -> list[torch.Tensor]:
        return [self.weight.data]


@BLOCKS.register("implicit", keys=("filters", "atoms", "mean", "std"))
def build_implicit(block: CfgBlock, ctx: BuildContext) -> Implicit:
    """A learned constant (``mean``/``std`` only set Darknet's random initialisation)."""
    filters, atoms = block.get_int("filters", 128), block.get_int("atoms", 1)
    for key, value in (("filters", filters), ("atoms", atoms)):
        if value < 1:
            raise block.error(f"must be >= 1, got {value}", key)
    block.get_float("mean", 0.0), block.get_float("std", 0.2)  # validated, used only for Darknet's init
    return Implicit(filters, atoms)


class Sam(Block):
    """``[sam]`` (spatial attention): input * ``from`` output, element-wise (equal shapes), then the activation."""

    def __init__(self, source: int, act: nn.Module, out_shape: Shape) -> None:
        super().__init__()
        self.sources, self.act, self.out_shape = (source,), act, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.act(x * refs[0])


@BLOCKS.register("sam", keys=("from", "activation"))
def build_sam(block: CfgBlock, ctx: BuildContext) -> Sam:
    """Element-wise product with an earlier layer (Darknet asserts equal shapes)."""
    source = ctx.resolve(block, "from", block.get_int("from"))
    if ctx.shapes[source] != ctx.in_shape:
        raise block.error(f"layer {source} is {'x'.join(map(str, ctx.shapes[source]))} but the input is "
                          f"{'x'.join(map(str, ctx.in_shape))}; [sam] needs equal shapes", "from")
    return Sam(source, make_activation(block, "linear"), ctx.in_shape)


class LocalAvgPool(Block):
    """``[local_avgpool]``: average over each window of the cells inside the input (maxpool's padding rule)."""

    def __init__(self, size: int, stride: tuple[int, int], pads: tuple[int, int, int, int], out_shape: Shape):
        super().__init__()
        self.size, self.stride, self.pads, self.out_shape = size, stride, pads, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        total = F.avg_pool2d(F.pad(x, self.pads), self.size, self.stride, divisor_override=1)
        ones = F.pad(torch.ones_like(x[:1, :1]), self.pads)
        count = F.avg_pool2d(ones, self.size, self.stride, divisor_override=1)
        return total / count


@BLOCKS.register("local_avgpool", keys=("size", "stride", "stride_x", "stride_y", "padding"))
def build_local_avgpool(block: CfgBlock, ctx: BuildContext) -> LocalAvgPool:
    """Darknet's ``make_maxpool_layer(..., avgpool=1)``: geometry (and limits) as ``[maxpool]``."""
    return LocalAvgPool(*pool_geometry(block, ctx))
