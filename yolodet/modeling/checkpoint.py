"""yolodet checkpoints (``.pt``) and the one entry point that loads a model from cfg + weights of either kind.

Checkpoint format (a ``torch.save`` dict, readable with ``torch.load(..., weights_only=True)``)::

    {"format": "yolodet-checkpoint", "version": 1,
     "cfg_text": str,        # the cfg the model was built from, so the file alone rebuilds the model
     "cfg_path": str,        # where that cfg came from (information only)
     "model": state_dict,    # Darknet.state_dict() (torchvision backbone modules included)
     ...}                    # training adds its own keys (optimizer, step, rng states, ...)

Darknet ``.weights`` files cannot describe torchvision modules; checkpoints can describe any cfg. Every tool that
takes ``--weights`` accepts both: the kind is decided from the file's content (a zip archive is a checkpoint).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from yolodet.atomic import atomic_writer
from yolodet.cfg import CfgError
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import WeightsError, load_darknet_weights
from yolodet.errors import YolodetError

log = logging.getLogger(__name__)

FORMAT = "yolodet-checkpoint"


class CheckpointError(YolodetError, ValueError):
    """A checkpoint that cannot be read or does not fit (message names the file)."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically: an interrupted save never leaves a half-written file at ``path``."""
    with atomic_writer(path) as f:
        torch.save(obj, f)


def save_checkpoint(model: Darknet, path: str | os.PathLike, **extra: Any) -> None:
    """Write ``model`` (and ``extra`` entries) as a yolodet checkpoint, atomically."""
    atomic_save({"format": FORMAT, "version": 1, "cfg_text": model.cfg_text, "cfg_path": model.cfg_path,
                 "model": model.state_dict(), **extra}, path)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True for a ``torch.save`` zip archive (a Darknet ``.weights`` file starts with a binary header)."""
    return zipfile.is_zipfile(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format marker."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a yolodet checkpoint (no '{FORMAT}' marker)")
    return ckpt


def load_model(cfg: str | os.PathLike | None, weights: str | os.PathLike | None = None) -> Darknet:
    """Build a model from ``cfg`` and fill it from ``weights`` (Darknet ``.weights`` or a yolodet checkpoint).

    With a checkpoint, ``cfg`` may be None: the embedded cfg text is used. Returns the model on the CPU in eval
    mode.

    Raises:
        CfgError, WeightsError, CheckpointError: with the file named.
    """
    if weights is not None and Path(weights).is_file() and is_checkpoint(weights):
        ckpt = load_checkpoint(weights)
        model = Darknet.from_cfg(cfg) if cfg is not None else Darknet.from_cfg_text(
            ckpt["cfg_text"], f"{weights}#cfg")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{weights}: does not fit cfg {cfg or '(embedded)'}: {exc}") from None
        return model.eval()
    if cfg is None:
        raise CfgError("a cfg is needed with Darknet .weights (only checkpoints embed their cfg)")
    model = Darknet.from_cfg(cfg)
    if weights is not None:
        if not Path(weights).is_file():
            raise WeightsError(f"{weights}: no such weights file")
        report = load_darknet_weights(model, weights)
        log.info("loaded %s: %d of %d layers with weights", weights, report.weighted_filled, report.weighted_total)
    return model.eval()
