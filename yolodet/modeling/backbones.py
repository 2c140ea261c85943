"""Torchvision classification backbones as data: name -> which torchvision modules form each feature stage.

A :class:`BackboneSpec` names the torchvision model and lists, per stage, the top-level module paths that stage
runs (``"layer2"``, ``"features.4"`` ...). Stage ``k`` always ends at stride ``2**(k+1)`` (timm's ``feature_info``
convention): stage 0 = stride 2, 1 = 4, 2 = 8, 3 = 16, 4 = 32, for every family. Channels are read from the built
modules (the last BatchNorm of the stage), so width multipliers (EfficientNet-B1..B3) need no table.

Where stages end, following timm's ``features_only`` taps:

* ResNet: stem ``conv1, bn1, relu`` | ``maxpool, layer1`` | ``layer2`` | ``layer3`` | ``layer4``.
* EfficientNet / MobileNetV2: the last stage stops after the last inverted-residual block; the 1x1 "head"
  convolution that only feeds the classifier (1280 channels) is not part of any stage.
* MobileNetV3: torchvision keeps its last 1x1 convolution (960 / 576 channels) inside ``features``, and so does
  the last stage here (as timm does).

Pretrained weights are loaded by :mod:`yolodet.training.pretrained` (only training needs them).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from yolodet.modeling.registry import Registry


@dataclass(frozen=True)
class StageInfo:
    """One feature tap: ``channels`` at ``stride`` input pixels per cell (timm's ``feature_info`` entry)."""

    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    """A torchvision model and how its modules split into feature stages.

    Attributes:
        name: the torchvision builder name (``torchvision.models.get_model(name)``).
        stages: per stage, the module paths it runs, in order; stage ``k`` ends at stride ``2**(k+1)``.
    """

    name: str
    stages: tuple[tuple[str, ...], ...]

    def __call__(self) -> nn.Module:
        """The torchvision model, randomly initialised (``weights=None``: never a download)."""
        import torchvision  # here, not at the top: importing it costs seconds that Darknet-only use never needs

        return torchvision.models.get_model(self.name, weights=None)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(2 ** (k + 1) for k in range(len(self.stages)))

    def stage_modules(self, model: nn.Module, stage: int) -> list[nn.Module]:
        """The modules stage ``stage`` runs, taken from ``model`` (a model this spec built)."""
        return [model.get_submodule(path) for path in self.stages[stage]]

    def feature_info(self, model: nn.Module) -> list[StageInfo]:
        """(channels, stride) of every stage, read from ``model``'s modules; no forward pass."""
        return [StageInfo(stage_channels(self.stage_modules(model, k)), s) for k, s in enumerate(self.strides)]


def stage_channels(modules: list[nn.Module]) -> int:
    """Output channels of a run of torchvision modules: the width of its last BatchNorm2d in module order. Every
    stage of the registered families ends in conv + BN (a ResNet block's ``downsample`` BN comes after ``bn3``
    but only in a layer's first block, and has the same width)."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:  # pragma: no cover - all registered families have a BatchNorm in every stage
        raise ValueError(f"cannot tell the output channels of {[type(m).__name__ for m in modules]}")
    return norms[-1].num_features


BACKBONES: Registry = Registry("backbone")
"""Backbone name (torchvision's) -> :class:`BackboneSpec`."""


def _features(*groups: range) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(f"features.{i}" for i in g) for g in groups)


_RESNET = (("conv1", "bn1", "relu"), ("maxpool", "layer1"), ("layer2",), ("layer3",), ("layer4",))
_EFFICIENTNET = _features(range(0, 2), range(2, 3), range(3, 4), range(4, 6), range(6, 8))
_SPECS = [
    *(BackboneSpec(f"resnet{d}", _RESNET) for d in (18, 34, 50, 101)),
    *(BackboneSpec(f"efficientnet_b{i}", _EFFICIENTNET) for i in range(4)),
    BackboneSpec("efficientnet_v2_s", _features(range(0, 2), range(2, 3), range(3, 4), range(4, 6), range(6, 7))),
    BackboneSpec("mobilenet_v2", _features(range(0, 2), range(2, 4), range(4, 7), range(7, 14), range(14, 18))),
    BackboneSpec("mobilenet_v3_small", _features(range(0, 1), range(1, 2), range(2, 4), range(4, 9), range(9, 13))),
    BackboneSpec("mobilenet_v3_large", _features(range(0, 2), range(2, 4), range(4, 7), range(7, 13), range(13, 17))),
]
for _spec in _SPECS:
    BACKBONES.register(_spec.name)(_spec)


def get_backbone(name: str) -> BackboneSpec:
    """The registered spec (KeyError with the known names otherwise)."""
    return BACKBONES.get(name).builder
