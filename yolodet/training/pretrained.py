"""Pretrained (ImageNet) weights for the torchvision ``[backbone]`` sections of a cfg.

They are ordinary torchvision state dicts, read with ``weights_only=True`` from a file the user names, or from
torchvision's own download cache (``torch.hub.get_dir()/checkpoints``) when the file is already there. Nothing here
ever downloads.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from yolodet.modeling.blocks.backbone import BackboneBlock, StageBlock, has_backbone
from yolodet.modeling.model import Darknet
from yolodet.errors import YolodetError

log = logging.getLogger(__name__)

__all__ = ["IMAGENET", "BackboneWeightsError", "load_backbone_weights", "read_state_dict", "resolve_weights"]

IMAGENET = "imagenet"
"""``weights=imagenet``: torchvision's ImageNet weights, from its local download cache only."""


class BackboneWeightsError(YolodetError, ValueError):
    """Pretrained backbone weights that are missing or do not fit (message names the file and the backbone)."""


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


def load_backbone_weights(model: Darknet, source: str | os.PathLike | None = None) -> list[str]:
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
