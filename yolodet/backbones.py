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

Pretrained weights (:func:`load_backbone_weights`) are ordinary torchvision state dicts; they are read from a file
the user names, or from torchvision's own download cache (``torch.hub.get_dir()/checkpoints``) when the file is
already there. Nothing here ever downloads.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from yolodet.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from yolodet.model import Darknet

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
"""``weights=imagenet``: torchvision's ImageNet weights, from its local download cache only."""


class BackboneWeightsError(ValueError):
    """Pretrained backbone weights that are missing or do not fit (message names the file and the backbone)."""


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


# -- pretrained weights ------------------------------------------------------------------------------------------

def hub_cache_candidates(name: str) -> list[Path]:
    """Where torchvision's own downloader would have put ``name``'s ImageNet weights, default version first."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    versions = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / os.path.basename(w.url) for w in versions]


def resolve_weights(name: str, source: str | os.PathLike) -> Path:
    """``source`` (a path, or ``"imagenet"`` for torchvision's local cache) -> an existing file.

    Raises:
        BackboneWeightsError: the file is missing; for ``imagenet`` the message lists where it was looked for and
            the URL to fetch it from by hand (yolodet never downloads).
    """
    if str(source) != IMAGENET:
        path = Path(source)
        if not path.is_file():
            raise BackboneWeightsError(f"{path}: no such backbone weights file (a torchvision state dict for {name})")
        return path
    candidates = hub_cache_candidates(name)
    for path in candidates:
        if path.is_file():
            return path
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    raise BackboneWeightsError(
        f"ImageNet weights for {name} are not in torchvision's cache (looked for {', '.join(map(str, candidates))}); "
        f"yolodet does not download: fetch {url} into {candidates[0].parent}, or pass the file's path")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torchvision state dict file, read with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise BackboneWeightsError(f"{path}: cannot read backbone weights: {exc}") from None
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # a training checkpoint of torchvision's reference scripts
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: not a torchvision state dict (name -> tensor)")
    return dict(state)


def has_backbone(model: "Darknet") -> bool:
    """True when ``model`` has torchvision layers, i.e. it cannot be written as Darknet ``.weights`` (use a
    checkpoint: :func:`yolodet.checkpoint.save_checkpoint`)."""
    from yolodet.blocks.backbone import BackboneBlock

    return any(isinstance(m, BackboneBlock) for m in model.layers)


def load_backbone_weights(model: "Darknet", source: str | os.PathLike | None = None) -> list[str]:
    """Fill every ``[backbone]`` of ``model`` (and its ``[stage]`` sections) with pretrained weights, in place.

    Args:
        source: a torchvision state dict file, or ``"imagenet"`` (torchvision's local cache). None: each
            ``[backbone]``'s own ``weights=`` key (``none`` = keep the random init).

    Returns:
        the files loaded, one per backbone filled.

    Warning:
        ``Darknet.from_cfg`` never reads ``weights=``: the cfg describes the network, and a checkpoint rebuilt from
        its embedded cfg must not depend on a file that was on the training machine. Call this once, when training
        starts from the cfg.

    Raises:
        BackboneWeightsError: missing file, tensors that do not fit (names and shapes in the message), or a
            ``source`` for a model without any ``[backbone]``.
    """
    from yolodet.blocks.backbone import BackboneBlock, StageBlock  # the blocks import this module

    if source is not None and not has_backbone(model):
        raise BackboneWeightsError(f"backbone weights {source} given, but {model.cfg_path} has no [backbone] section")
    loaded = []
    for index, layer in enumerate(model.layers):
        if not isinstance(layer, BackboneBlock):
            continue
        wanted = source if source is not None else layer.weights
        if wanted is None or str(wanted) == "none":
            continue
        path = resolve_weights(layer.spec.name, wanted)
        state = read_state_dict(path)
        parts = [layer] + [m for m in model.layers if isinstance(m, StageBlock) and m.backbone == index]
        pieces = [piece for part in parts for piece in _match(part, state, path)]  # check all, then copy
        for module, own in pieces:
            module.load_state_dict(own)
        used = {f"{prefix}{k}" for (_, own), prefix in zip(pieces, _prefixes(parts)) for k in own}
        unused = sorted(k for k in state if k not in used)
        log.info("layer %d (%s): loaded %s; %d unused tensors (classifier and unexposed stages)%s", index,
                 layer.spec.name, path, len(unused), f": {', '.join(unused[:4])}..." if unused else "")
        loaded.append(str(path))
    return loaded


def _prefixes(parts: list[nn.Module]) -> list[str]:
    return [f"{tv_path}." for part in parts for tv_path in part.tv_paths]


def _match(part: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> list[tuple[nn.Module, dict]]:
    """(module, its tensors from ``state``) for each torchvision module ``part`` holds, names and shapes checked."""
    pieces = []
    for prefix, module in zip(_prefixes([part]), part.body):
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(own))
        if missing:
            raise BackboneWeightsError(f"{path}: no tensors for {prefix}{missing[0]} ({len(missing)} missing): "
                                       f"not a {part.spec.name} state dict?")
        for key, value in expected.items():
            if own[key].shape != value.shape:
                raise BackboneWeightsError(f"{path}: {prefix}{key} is {tuple(own[key].shape)}, the model's "
                                           f"{part.spec.name} has {tuple(value.shape)}")
        pieces.append((module, {k: own[k] for k in expected}))
    return pieces
