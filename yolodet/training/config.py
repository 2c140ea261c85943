"""What a training run is: :class:`TrainConfig` (every setting, its default and the reason for it, in one place)
and :class:`TrainSummary` (what the run produced). ``yolodet train`` only turns its arguments into a
:class:`TrainConfig`; Python users build one directly and call :func:`yolodet.training.train`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from yolodet.device import DEFAULT_DEVICE
from yolodet.inference.settings import EVAL_CONF_THRES, NMS_THRES

__all__ = ["LOCAL_SETTINGS", "TrainConfig", "TrainSummary"]

LOCAL_SETTINGS = frozenset({"resume", "output", "workers", "device", "progress", "time_limit", "stop_after_steps"})
"""Settings of the machine rather than of the run: a resumed run takes these from the new config, every other
setting from the checkpoint it resumes."""


@dataclass
class TrainConfig:
    """One training or fine-tuning run. ``None`` means "the cfg's value" unless said otherwise.

    Attributes:
        cfg: the Darknet cfg (not needed with ``resume``).
        data: the dataset: Darknet ``.data``, COCO json, Pascal VOC folder or list, or a YOLO dataset YAML.
        weights: start from Darknet ``.weights`` (full, other class count, or partial ``*.conv.N``) or a yolodet
            checkpoint; from scratch when None.
        backbone_weights: ImageNet weights for a ``[backbone]``: a torchvision state dict, or ``"imagenet"``
            (torchvision's local cache, never downloaded); None: the cfg's ``weights=`` key.
        epochs / max_batches: run length in epochs, or in optimiser steps (default: the cfg's ``max_batches``).
        img_size / val_img_size: training / validation network size, S or (W, H) (validation: the training one).
        batch_size, subdivisions: Darknet's ``batch`` (images per optimiser step) and mini-batches per step.
        workers: data-loading processes (2: keeps the augmentation off the training threads).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:N`` (:func:`yolodet.device.resolve_device`).
        output: the run folder; with ``resume`` None means the resumed checkpoint's folder.
        resume: ``"auto"`` (``output/last.pt``) or a checkpoint path: continue that run exactly.
        freeze: do not train layers ``0..freeze-1`` (fine-tuning a small dataset).
        adam, lr, momentum, decay, burn_in, steps, scales: optimiser and lr schedule (Darknet's SGD by default).
        multi_scale: random sizes every 10 steps (None: on when a ``[yolo]`` has ``random=1``, as Darknet).
        mosaic, jitter, augment: augmentation (None: the cfg's); ``augment=False`` turns all of it off.
        cache: keep decoded training images in memory.
        sync_bn: under torchrun on GPUs, BatchNorm statistics over the global mini-batch (SyncBatchNorm).
        amp, bf16, channels_last: fp16 autocast (None: on for CUDA), bf16 autocast on the CPU, memory format
            (None: channels-last on the CPU, where it is faster).
        seed: sample order, sizes, augmentation and initialisation all follow from it.
        eval_interval: validate every N epochs (0: never; the last epoch always is).
        conf_thres, nms_thres: the validation protocol (COCO's candidate rule).
        max_image_pixels: images above this many pixels are refused as decompression bombs (None: the default).
        time_limit: stop after this many seconds of training (validation excluded), as a finished run.
        stop_after_steps: act as on Ctrl-C after this many steps (tests use it).
        progress: progress bars on stderr.
    """

    cfg: str | None = None
    data: str | None = None
    weights: str | None = None
    backbone_weights: str | None = None
    epochs: int | None = None
    max_batches: int | None = None
    img_size: int | Sequence[int] | None = None
    val_img_size: int | Sequence[int] | None = None
    batch_size: int | None = None
    subdivisions: int | None = None
    workers: int = 2
    device: str = DEFAULT_DEVICE
    output: str | None = None
    resume: str | None = None
    freeze: int = 0
    adam: bool = False
    lr: float | None = None
    momentum: float | None = None
    decay: float | None = None
    burn_in: int | None = None
    steps: Sequence[int] | None = None
    scales: Sequence[float] | None = None
    multi_scale: bool | None = None
    mosaic: bool | None = None
    jitter: float | None = None
    augment: bool = True
    cache: bool = False
    sync_bn: bool = False
    amp: bool | None = None
    bf16: bool = False
    channels_last: bool | None = None
    seed: int = 0
    eval_interval: int = 1
    conf_thres: float = EVAL_CONF_THRES
    nms_thres: float = NMS_THRES
    max_image_pixels: int | None = None
    time_limit: float | None = None
    stop_after_steps: int | None = None
    progress: bool = True

    def run_settings(self) -> dict[str, Any]:
        """The settings a checkpoint keeps for ``resume`` (everything but :data:`LOCAL_SETTINGS`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in LOCAL_SETTINGS}

    def resumed(self, saved: dict[str, Any]) -> "TrainConfig":
        """This config with the run settings of a checkpoint (keys this version does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(self)} - LOCAL_SETTINGS
        return dataclasses.replace(self, **{k: v for k, v in saved.items() if k in known})


@dataclass
class TrainSummary:
    """What :func:`yolodet.training.train` produced.

    Attributes:
        output: the run folder.
        steps, epochs: optimiser steps and epochs done.
        train_seconds: time spent training (validation excluded).
        best_ap50, best_epoch: the best validation AP50 and its epoch (NaN / 0 without validation).
        final_ap, final_ap50: the last validation's AP and AP50 (NaN if there was none).
        last, best: ``last.pt`` / ``best.pt`` paths (``best`` None without a validation).
        weights: Darknet ``.weights`` written (``final.weights``, ``best.weights``); empty for torchvision
            backbones, which exist only as checkpoints.
        interrupted: stopped by Ctrl-C (or ``stop_after_steps``) with ``last.pt`` saved; resume to continue.
        history: one row per epoch, as in ``results.csv``.
    """

    output: Path
    steps: int = 0
    epochs: int = 0
    train_seconds: float = 0.0
    best_ap50: float = float("nan")
    best_epoch: int = 0
    final_ap: float = float("nan")
    final_ap50: float = float("nan")
    last: Path | None = None
    best: Path | None = None
    weights: list[Path] = field(default_factory=list)
    interrupted: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
