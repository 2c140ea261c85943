"""The training loss of a whole model, each head by its kind, and the check that a model can be trained at all.

``check_trainable(model)`` runs before anything is built for training, so a cfg yolodet cannot train fails at the
start with the layer, its section and the reason, never halfway. ``build_loss(model)`` picks per head:
``[yolo]`` -> :mod:`yolodet.training.loss`, ``[region]`` -> :mod:`yolodet.training.loss_region`,
``[Gaussian_yolo]`` -> :mod:`yolodet.training.loss_gaussian`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from yolodet.cfg import CfgBlock, parse_cfg_text
from yolodet.errors import YolodetError
from yolodet.modeling.blocks.conv import XnorConv
from yolodet.modeling.blocks.recurrent import RecurrentBlock
from yolodet.modeling.blocks.yolo import common_class_count
from yolodet.modeling.model import Darknet
from yolodet.training.loss import yolo_head_loss
from yolodet.training.loss_gaussian import GaussianTrainSpec, gaussian_head_loss, gaussian_untrainable
from yolodet.training.loss_region import RegionTrainSpec, region_head_loss, region_untrainable

TRAINABLE_HEADS = ("yolo", "region", "gaussian_yolo")


class UntrainableError(YolodetError, ValueError):
    """The model has a layer or head yolodet cannot train (the message names it and says why)."""


def check_trainable(model: Darknet) -> None:
    """Raise :class:`UntrainableError` for the first layer or head of ``model`` yolodet cannot train."""
    blocks = _layer_blocks(model)
    where = f"{model.cfg_path}"
    for i, layer in enumerate(model.layers):
        block = blocks[i]
        if isinstance(layer, RecurrentBlock):
            raise UntrainableError(f"{where}: layer {i} [{block.type}] (line {block.line}): recurrent layers run "
                                   f"for inference only; yolodet cannot train them (Darknet trains them over "
                                   f"time steps)")
        if isinstance(layer, XnorConv):
            raise UntrainableError(f"{where}: layer {i} [convolutional] xnor=1 (line {block.line}): binary "
                                   f"(XNOR) convolutions are not trainable in yolodet")
    if not model.heads:
        raise UntrainableError(f"{where} has no detection heads: yolodet trains detectors only")
    for head in model.heads:
        block = blocks[head.layer]
        kind = getattr(head, "kind", "yolo")
        reason = None
        if kind not in TRAINABLE_HEADS:
            reason = f"[{block.type}] heads are not trainable in yolodet (trainable: [yolo], [region], " \
                     f"[Gaussian_yolo])"
        elif kind == "region":
            reason = region_untrainable(head, block)
        elif kind == "gaussian_yolo":
            reason = gaussian_untrainable(head, block)
        if reason:
            raise UntrainableError(f"{where}: layer {head.layer} [{block.type}] (line {block.line}): {reason}")
    try:
        common_class_count(model.heads, "train")
    except ValueError as exc:
        raise UntrainableError(f"{where}: {exc}") from None


class DetectionLoss:
    """Darknet's loss over every head of a model (each head by its kind; see the loss modules).

    Call: ``loss(outputs, targets, input_size, seen=0) -> {"box", "obj", "cls", "total"}`` (scalars, each divided
    by the batch size; ``total`` is their sum).

    Args (call):
        outputs: raw head outputs, ``outputs[k]``: ``[B, A_k*(per_anchor), H_k, W_k]`` (computed in float32).
        targets: ``[M, 6]`` rows ``(image index, class, x1, y1, x2, y2)``, corners as fractions of the input.
        input_size: network input ``(width, height)`` in pixels.
        seen: images trained on before this mini-batch plus its own (Darknet's ``net.seen``); ``[region]`` pulls
            predictions towards their anchors while it is below 12800.

    Attributes:
        jitter, random: the first head's ``jitter`` and the largest ``random`` (augmentation and multi-scale).
    """

    def __init__(self, model: Darknet) -> None:
        check_trainable(model)
        blocks = _layer_blocks(model)
        self.num_classes = common_class_count(model.heads, "train")
        self.heads: list[object] = []
        for head in model.heads:
            kind = getattr(head, "kind", "yolo")
            if kind == "region":
                self.heads.append(RegionTrainSpec.from_block(head, blocks[head.layer]))
            elif kind == "gaussian_yolo":
                self.heads.append(GaussianTrainSpec.from_block(head, blocks[head.layer]))
            else:
                self.heads.append(head)
        first = self.heads[0]
        self.jitter = first.jitter
        self.random = max(h.random for h in self.heads)

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor, input_size: tuple[int, int],
                 seen: int = 0) -> dict[str, torch.Tensor]:
        if len(outputs) != len(self.heads):
            raise ValueError(f"{len(outputs)} outputs for {len(self.heads)} heads")
        if targets.ndim != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets must be [M, 6] (image, class, x1, y1, x2, y2), got {tuple(targets.shape)}")
        targets = targets.to(device=outputs[0].device, dtype=torch.float32)
        batch = outputs[0].shape[0]
        parts: dict[str, list[torch.Tensor]] = {"box": [], "obj": [], "cls": []}
        for spec, out in zip(self.heads, outputs):
            if isinstance(spec, RegionTrainSpec):
                head = region_head_loss(spec, out.float(), targets, seen)
            elif isinstance(spec, GaussianTrainSpec):
                head = gaussian_head_loss(spec, out.float(), targets, input_size)
            else:
                head = yolo_head_loss(spec, out.float(), targets, input_size)
            for name, value in head.items():
                parts[name].append(value)
        result = {name: torch.stack(values).sum() / batch for name, values in parts.items()}
        result["total"] = result["box"] + result["obj"] + result["cls"]
        return result


def build_loss(model: Darknet) -> DetectionLoss:
    """The loss for ``model`` (:class:`UntrainableError` when :func:`check_trainable` refuses it)."""
    return DetectionLoss(model)


def _layer_blocks(model: Darknet) -> list[CfgBlock]:
    """The cfg section of each layer (index = Darknet layer index), parsed again from the model's cfg text."""
    blocks = parse_cfg_text(model.cfg_text, model.cfg_path)[1:]
    if len(blocks) != len(model.layers):
        raise UntrainableError(f"{model.cfg_path}: the model has {len(model.layers)} layers but its cfg text "
                               f"{len(blocks)} sections")
    return blocks
