"""Start a training run from other weights: shape-matched loading and freezing the first layers.

:func:`load_pretrained` accepts

* a yolodet checkpoint: every tensor whose name and shape match is copied;
* a full Darknet ``.weights`` file for the same architecture with *another class count* (the usual COCO start):
  the source class count is solved from the file size (only the head convs depend on it), the file is read into
  a copy of the cfg with that count, and every tensor of matching shape is copied: all but the head convs;
* a ``.weights`` file for exactly this cfg, or a partial one (``darknet partial``, ``*.conv.N``): read directly.

Every tensor not copied is reported (:class:`TransferReport`), so a run never starts silently half-initialised.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from yolodet.modeling.blocks.conv import ConvBlock
from yolodet.cfg.edit import set_classes
from yolodet.modeling.checkpoint import is_checkpoint, load_checkpoint
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import WeightsError, load_darknet_weights, read_header

log = logging.getLogger(__name__)

__all__ = ["TransferReport", "freeze_layers", "init_head_priors", "load_matching_state", "load_pretrained",
           "set_train_mode"]


@dataclass
class TransferReport:
    """What :func:`load_pretrained` copied.

    Attributes:
        source: the file.
        loaded: state-dict names copied.
        skipped: ``"name: [source shape] -> [model shape]"`` for tensors present in both with other shapes.
        missing: model tensors the source does not have (left as initialised).
        source_classes: class count of the source model when it was solved from a ``.weights`` file.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    source_classes: int | None = None

    @property
    def skipped_layers(self) -> list[int]:
        """Darknet indices of layers with at least one tensor not loaded."""
        names = [s.split(":")[0] for s in self.skipped] + self.missing
        return sorted({int(m.group(1)) for n in names if (m := re.match(r"layers\.(\d+)\.", n))})

    def summary(self) -> str:
        text = f"{self.source}: loaded {len(self.loaded)} tensors"
        if self.source_classes is not None:
            text += f" (source model: {self.source_classes} classes)"
        if self.skipped_layers:
            text += f"; not loaded (initialised fresh): layers {', '.join(map(str, self.skipped_layers))}"
        return text


def load_matching_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> TransferReport:
    """Copy every tensor of ``state`` whose name and shape match ``model.state_dict()`` (in place)."""
    report = TransferReport(source)
    own = model.state_dict()
    with torch.no_grad():
        for name, target in own.items():
            if name not in state:
                report.missing.append(name)
            elif tuple(state[name].shape) != tuple(target.shape):
                report.skipped.append(f"{name}: {list(state[name].shape)} -> {list(target.shape)}")
            else:
                target.copy_(state[name])
                report.loaded.append(name)
    return report


def load_pretrained(model: Darknet, path: str | os.PathLike) -> TransferReport:
    """Fill ``model`` from a checkpoint or Darknet ``.weights`` (full, other class count, or partial).

    Raises:
        WeightsError, CheckpointError: unreadable file, or a ``.weights`` file that fits neither this cfg nor a
            class-count variant of it nor a prefix of it.
    """
    path = str(path)
    if not Path(path).is_file():
        raise WeightsError(f"{path}: no such weights file")
    if is_checkpoint(path):
        report = load_matching_state(model, load_checkpoint(path)["model"], path)
    else:
        report = _load_weights(model, path)
    log.info("%s", report.summary())
    return report


def _load_weights(model: Darknet, path: str) -> TransferReport:
    with open(path, "rb") as f:
        head = f.read(20)
    header = read_header(head, path)
    floats = (Path(path).stat().st_size - header.nbytes) // 4
    sizes = [sum(t.numel() for t in layer.darknet_tensors()) for layer in model.layers]
    if floats != sum(sizes):
        classes = _solve_classes(model, sizes, floats)
        if classes is not None and classes != model.num_classes:
            source = Darknet.from_cfg_text(set_classes(model.cfg_text, classes, path=model.cfg_path),
                                           f"{model.cfg_path}#classes={classes}")
            load_darknet_weights(source, path)
            report = load_matching_state(model, source.state_dict(), path)
            report.source_classes = classes
            model.seen = getattr(source, "seen", 0)
            return report
    result = load_darknet_weights(model, path)  # same cfg, or a partial file (errors say why it fits neither)
    report = TransferReport(path)
    for name in model.state_dict():
        m = re.match(r"layers\.(\d+)\.", name)
        layer = int(m.group(1)) if m else -1
        (report.loaded if 0 <= layer < result.layers_filled else report.missing).append(name)
    return report


def _solve_classes(model: Darknet, sizes: list[int], floats: int) -> int | None:
    """Class count C' such that the cfg with ``classes=C'`` needs exactly ``floats`` floats, or None.

    Only the conv before each ``[yolo]`` depends on C': it has ``len(mask) * (5 + C')`` filters of
    ``in/groups * k * k`` weights plus one bias (or four BN values) each.
    """
    per_class, fixed = 0, sum(sizes)
    for head in model.heads:
        conv = model.layers[head.layer - 1]
        if not isinstance(conv, ConvBlock):
            return None
        w = conv.conv.weight
        per_filter = w[0].numel() + (4 if conv.bn is not None else 1)
        fixed -= sizes[head.layer - 1]
        per_class += head.num_anchors * per_filter
        fixed += head.num_anchors * 5 * per_filter
    if per_class == 0 or (floats - fixed) % per_class:
        return None
    classes = (floats - fixed) // per_class
    return classes if classes >= 1 else None


def freeze_layers(model: Darknet, count: int) -> int:
    """Stop training layers ``0..count-1`` (no gradients; their BN statistics stay fixed, see
    :func:`set_train_mode`). Returns the number of parameters frozen."""
    if not 0 <= count <= len(model.layers):
        raise ValueError(f"--freeze {count}: the model has {len(model.layers)} layers")
    frozen = 0
    for layer in model.layers[:count]:
        for p in layer.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def set_train_mode(model: Darknet, frozen: int = 0) -> Darknet:
    """``model.train()``, except the first ``frozen`` layers stay in eval mode (frozen BN keeps its statistics:
    updating them would change what the frozen weights compute)."""
    model.train()
    for layer in model.layers[:frozen]:
        layer.eval()
    return model


def init_head_priors(model: Darknet, layers: Sequence[int] | None = None, *, obj_prior: float = 0.01) -> list[int]:
    """Start the objectness bias of freshly initialised head convs at ``logit(obj_prior)``.

    Warning: not Darknet, which starts new heads from its random init: every one of the thousands of background
    predictions then begins at objectness 0.5, and the first updates (a loss of ~0.7 per prediction) can wreck
    pretrained features. A 1% prior (RetinaNet's trick, also YOLOv5's) removes that shock; it only changes the
    starting point.

    Args:
        layers: Darknet indices of the head convs to touch (default: the conv before every ``[yolo]``).

    Returns:
        The layers changed (convs with a bias, i.e. without BN).
    """
    changed = []
    with torch.no_grad():
        for head in model.heads:
            index = head.layer - 1
            conv = model.layers[index]
            if (layers is not None and index not in layers) or not isinstance(conv, ConvBlock) or conv.bn is not None:
                continue
            bias = conv.conv.bias.view(head.num_anchors, -1)  # per anchor: box (4, or 8 with sigmas), obj, classes
            obj = 8 if getattr(head, "kind", "yolo") == "gaussian_yolo" else 4
            bias[:, obj] = math.log(obj_prior / (1 - obj_prior))
            changed.append(index)
    return changed
