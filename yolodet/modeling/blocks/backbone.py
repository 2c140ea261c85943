"""Torchvision backbones as cfg sections: ``[backbone]`` and ``[stage]``.

Syntax (one section = one Darknet layer index, so ``[route]``/``[shortcut]`` address stages by index)::

    [backbone]          # layer 0: resnet50 stages 0..2 -> stride 8, 512 channels
    model=resnet50      # a name of yolodet.backbones.BACKBONES (torchvision's builder name)
    stage=2             # the last stage this section runs (default 0, the stem); stage k ends at stride 2**(k+1)
    weights=none        # initial weights for training: none (default), imagenet (torchvision's local cache
                        # only) or a path (from the current folder) to a torchvision state dict
    normalize=1         # ImageNet mean/std normalisation of the [0, 1] RGB input (default 1)

    [stage]             # layer 1: the next stage of the nearest earlier [backbone] (3) -> stride 16, 1024 channels
    [stage]             # layer 2: stage 4 -> stride 32, 2048 channels
    stage=4             # optional; when given it must be the next stage (stages run in order on each other's output)

The ``[backbone]`` builder makes the torchvision model (``weights=None``: random, never a download), keeps the
modules of stages ``0..stage`` and hands each later stage's modules to the ``[stage]`` section that claims it, so
every parameter belongs to exactly one layer (a stage no ``[stage]`` claims is never run and is not in the state
dict; the classifier is dropped).
Channels come from the modules, strides from the stage table (:mod:`yolodet.backbones`); spatial sizes follow the
``ceil(h / 2)`` rule every stride-2 step of these families obeys. No forward pass is needed to build.

``weights=`` is *not* read when the model is built (a checkpoint rebuilt from its embedded cfg must not need the
file): :func:`yolodet.backbones.load_backbone_weights` reads it, or a ``--backbone-weights`` override, when
training starts from the cfg.

The torchvision modules keep torchvision's own BatchNorm settings (e.g. momentum 0.1 and eps 1e-5 for ResNet,
momentum 0.01 and eps 1e-3 for MobileNetV3), where ``[convolutional]`` layers use Darknet's 0.01 and 1e-5.

Warning: Darknet ``.weights`` files cannot describe torchvision modules: :meth:`darknet_tensors` raises
:class:`yolodet.weights.WeightsError` (saving or loading ``.weights`` for a cfg with a backbone fails loudly instead
of writing a file that silently lacks the backbone). Use yolodet checkpoints (:mod:`yolodet.checkpoint`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yolodet.modeling.backbones import BACKBONES, BackboneSpec, StageInfo, get_backbone
from yolodet.modeling.blocks.base import Block, BuildContext, Shape
from yolodet.cfg import CfgBlock
from yolodet.modeling.registry import BLOCKS
from yolodet.modeling.weights import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _TorchvisionStages(Block):
    """Runs torchvision modules in order. ``tv_paths[i]`` is ``body[i]``'s path in the torchvision model, which is
    how pretrained state dicts are mapped onto it."""

    spec: BackboneSpec
    first: int  # first stage run here
    last: int   # last stage run here (its output is this layer's output)

    def _setup(self, spec: BackboneSpec, first: int, last: int, modules: list[nn.Module], out_shape: Shape):
        self.spec, self.first, self.last = spec, first, last
        self.tv_paths = tuple(p for k in range(first, last + 1) for p in spec.stages[k])
        self.body = nn.Sequential(*modules)
        self.out_shape = out_shape

    def darknet_tensors(self) -> list[torch.Tensor]:
        raise WeightsError(f"a {self.spec.name} backbone (torchvision modules) cannot be stored in a Darknet "
                           ".weights file; save a yolodet checkpoint (yolodet.checkpoint.save_checkpoint) instead")

    def describe(self) -> str:
        stages = f"stage {self.last}" if self.first == self.last else f"stages {self.first}-{self.last}"
        return f"{self.spec.name} {stages}"


class BackboneBlock(_TorchvisionStages):
    """``[backbone]``: [B, 3, H, W] in [0, 1] -> stages ``0..stage`` of a torchvision model -> [B, C, H/s, W/s].

    Attributes:
        feature_info: (channels, stride) of every stage of the model, exposed or not.
        weights: the cfg's ``weights=`` (None for ``none``), read by ``load_backbone_weights`` only.
        next_stage: the stage the next ``[stage]`` section will claim (build time only).
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, stage: int, *, weights: str | None,
                 normalize: bool, in_hw: tuple[int, int]) -> None:
        super().__init__()
        self.feature_info: list[StageInfo] = spec.feature_info(model)
        self.weights, self.normalize = weights, normalize
        modules = [m for k in range(stage + 1) for m in spec.stage_modules(model, k)]
        self._setup(spec, 0, stage, modules, (self.feature_info[stage].channels,
                                              *_downsample(in_hw, stage + 1)))
        # Later stages wait here (a plain list: not submodules, not in the state dict) for [stage] to claim them.
        self._pending = {k: spec.stage_modules(model, k) for k in range(stage + 1, len(spec.stages))}
        self.next_stage = stage + 1
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def claim(self, stage: int) -> list[nn.Module]:
        """Hand stage ``stage``'s modules to a ``[stage]`` section (once)."""
        self.next_stage = stage + 1
        return self._pending.pop(stage)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.body(x)


class StageBlock(_TorchvisionStages):
    """``[stage]``: the next stage of an earlier ``[backbone]`` (layer ``backbone``), [B, C, H, W] -> [B, C', H/2,
    W/2]."""

    def __init__(self, spec: BackboneSpec, backbone: int, stage: int, modules: list[nn.Module],
                 out_shape: Shape) -> None:
        super().__init__()
        self.backbone = backbone
        self._setup(spec, stage, stage, modules, out_shape)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.body(x)


def _downsample(hw: tuple[int, int], steps: int) -> tuple[int, int]:
    """Spatial size after ``steps`` stride-2 steps: each conv/pool has padding (k-1)/2, so out = ceil(in / 2)."""
    h, w = hw
    for _ in range(steps):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


@BLOCKS.register("backbone", keys=("model", "stage", "weights", "normalize"))
def build_backbone(block: CfgBlock, ctx: BuildContext) -> BackboneBlock:
    """A torchvision backbone's first stages (``model=``, up to ``stage=``)."""
    name = block.get_str("model")
    if name not in BACKBONES:
        raise block.error(f"unknown backbone {name!r}; known: {', '.join(BACKBONES.names())}", "model")
    spec = get_backbone(name)
    stage = block.get_int("stage", 0)
    if not 0 <= stage < len(spec.stages):
        raise block.error(f"{name} has stages 0..{len(spec.stages) - 1} (strides "
                          f"{', '.join(map(str, spec.strides))}); {stage} is out of range", "stage")
    c, h, w = ctx.in_shape
    if c != 3:
        raise block.error(f"torchvision backbones take 3-channel RGB input, this layer's input has {c} channels",
                          "model")
    normalize = block.get_int("normalize", 1)
    if normalize not in (0, 1):
        raise block.error(f"must be 0 or 1, got {normalize}", "normalize")
    weights = block.get_str("weights", "none")
    return BackboneBlock(spec, spec(), stage, weights=None if weights == "none" else weights,
                         normalize=bool(normalize), in_hw=(h, w))


@BLOCKS.register("stage", keys=("stage",))
def build_stage(block: CfgBlock, ctx: BuildContext) -> StageBlock:
    """The next stage of the nearest earlier ``[backbone]``."""
    found = [i for i, layer in enumerate(ctx.layers) if isinstance(layer, BackboneBlock)]
    if not found:
        raise block.error("[stage] needs an earlier [backbone] section to take its stage from")
    index = found[-1]
    backbone: BackboneBlock = ctx.layers[index]
    spec, last = backbone.spec, len(backbone.spec.stages) - 1
    stage = block.get_int("stage", backbone.next_stage)
    where = f"{spec.name} (layer {index})"
    if not 0 <= stage <= last:
        raise block.error(f"{where} has stages 0..{last}; stage {stage} is out of range", "stage")
    if stage != backbone.next_stage:
        if backbone.next_stage > last:
            raise block.error(f"{where} has stages 0..{last} and all of them are taken; stage {stage} is out of "
                              "range", "stage")
        raise block.error(f"the next stage of {where} is {backbone.next_stage}: stages run in order, each on the "
                          "previous one's output", "stage")
    c, h, w = ctx.in_shape
    expected = backbone.feature_info[stage - 1].channels
    if c != expected:
        raise block.error(f"stage {stage} of {where} takes {expected} channels, its input (layer {ctx.index - 1}) "
                          f"has {c}")
    out = (backbone.feature_info[stage].channels, *_downsample((h, w), 1))
    return StageBlock(spec, index, stage, backbone.claim(stage), out)


def has_backbone(model: nn.Module) -> bool:
    """True when ``model`` has torchvision layers, i.e. it cannot be written as Darknet ``.weights`` (use a
    checkpoint: :func:`yolodet.modeling.checkpoint.save_checkpoint`)."""
    return any(isinstance(m, BackboneBlock) for m in model.layers)
