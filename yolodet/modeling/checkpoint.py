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
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from yolodet.atomic import atomic_writer, output_error
from yolodet.cfg import CfgError
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import WeightsError, load_darknet_weights
from yolodet.errors import YolodetError

log = logging.getLogger(__name__)

FORMAT = "yolodet-checkpoint"


class CheckpointError(YolodetError, ValueError):
    """A checkpoint that cannot be read or does not fit (message names the file)."""


class _RecordingWriter:
    """A file object for ``torch.save`` that remembers the ``OSError`` of a failed write: torch's zip writer
    replaces it with ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos``."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically: an interrupted save never leaves a half-written file at ``path``.

    Raises:
        OutputError: the file could not be written (full disk ...); nothing is left at ``path``.
    """
    with atomic_writer(path) as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError as exc:
            if writer.error is not None:
                raise writer.error from None  # atomic_writer turns it into an OutputError naming the path
            if "inline_container" in str(exc) or "PytorchStreamWriter" in str(exc):
                raise output_error(path, f"the write failed ({str(exc).splitlines()[0]})") from exc
            raise


def save_checkpoint(model: Darknet, path: str | os.PathLike, **extra: Any) -> None:
    """Write ``model`` (and ``extra`` entries) as a yolodet checkpoint, atomically."""
    atomic_save({"format": FORMAT, "version": 1, "cfg_text": model.cfg_text, "cfg_path": model.cfg_path,
                 "model": model.state_dict(), **extra}, path)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True for a ``torch.save`` zip archive (a Darknet ``.weights`` file starts with a binary header), damaged
    ones included (:func:`load_checkpoint` then says what is wrong)."""
    try:
        if zipfile.is_zipfile(path):
            return True
    except Exception:  # noqa: BLE001  zipfile raises BadZipFile, ValueError ... on some damaged archives
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check it: the format marker, a ``model`` state dict of
    finite tensors and the embedded ``cfg_text``.

    Raises:
        CheckpointError: unreadable or corrupt file, a pickle that references code (refused, never loaded), not
            a yolodet checkpoint, a missing or mistyped key (named), NaN/Inf in a tensor (layer named).
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        code = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if code:
            raise CheckpointError(
                f"{path}: refused: the file contains code objects ({code.group(1)}) that unpickling would call; "
                "yolodet will never load such a file (its checkpoints hold only tensors and plain values)") from None
        raise CheckpointError(f"{path}: cannot read checkpoint: {_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001  a corrupt archive fails in many ways inside torch
        raise CheckpointError(f"{path}: cannot read checkpoint: {_reason(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a yolodet checkpoint (no '{FORMAT}' marker)")
    for key, kind in (("model", dict), ("cfg_text", str)):
        if key not in ckpt:
            raise CheckpointError(f"{path}: the yolodet checkpoint has no '{key}' entry (damaged or not written by "
                                  "yolodet)")
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"{path}: the checkpoint's '{key}' is a {type(ckpt[key]).__name__}, not a "
                                  f"{kind.__name__}")
    for name, tensor in ckpt["model"].items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: the checkpoint's 'model' entry {name!r} is a {type(tensor).__name__}, "
                                  "not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            layer = re.match(r"layers\.(\d+)\.", name)
            where = f"layer {layer.group(1)} ({name})" if layer else name
            raise CheckpointError(f"{path}: {where} has {bad} non-finite values (NaN or Inf) among its "
                                  f"{tensor.numel()}")
    return ckpt


def _reason(exc: BaseException) -> str:
    """The first line of torch's message that gives no advice about ``weights_only`` (never to be relaxed)."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and "weights_only" not in line.lower() and "weights only" not in line.lower()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def load_model(cfg: str | os.PathLike | None, weights: str | os.PathLike | None = None, *,
               allow_partial: bool = False) -> Darknet:
    """Build a model from ``cfg`` and fill it from ``weights`` (Darknet ``.weights`` or a yolodet checkpoint).

    With a checkpoint, ``cfg`` may be None: the embedded cfg text is used. Returns the model on the CPU in eval
    mode. ``weights=None`` gives the randomly initialised model.

    Args:
        allow_partial: accept a ``.weights`` file that fills only the first layers (``darknet partial``,
            ``*.conv.N``, a header alone); the others keep their random values and a warning names them. Without
            it such a file is an error: a detector with random layers outputs garbage.

    Raises:
        CfgError, WeightsError, CheckpointError: with the file named.
    """
    if weights is not None and Path(weights).is_file() and is_checkpoint(weights):
        ckpt = load_checkpoint(weights)
        model = Darknet.from_cfg(cfg) if cfg is not None else Darknet.from_cfg_text(
            ckpt["cfg_text"], f"{weights}#cfg")
        try:
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
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
        if not report.complete:
            text = (f"{weights}: partial weights: the file fills {report.weighted_filled} of the "
                    f"{report.weighted_total} layers with weights; layers {_ranges(report.unfilled)} would keep "
                    "random values")
            if not allow_partial:
                raise WeightsError(f"{text}, so detections would be garbage. Use the full weights of this cfg, or "
                                   "allow_partial=True (--allow-partial) to run it anyway")
            log.warning("%s (allowed)", text)
    return model.eval()


def _ranges(indices: tuple[int, ...]) -> str:
    """``(3, 4, 5, 9)`` -> ``"3-5, 9"``."""
    parts: list[tuple[int, int]] = []
    for i in indices:
        if parts and parts[-1][1] == i - 1:
            parts[-1] = (parts[-1][0], i)
        else:
            parts.append((i, i))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
