"""A whole training run as one call: ``train(TrainConfig(cfg=..., data=..., weights=...)) -> TrainSummary``.

The loop reads top to bottom: build (model, data, schedule, optimiser), then per epoch train, validate, save.
Darknet's semantics: ``batch`` images per optimiser step, split into ``subdivisions`` mini-batches (gradient
accumulation); the lr schedule counts optimiser steps. Outputs in ``config.output``: ``last.pt`` (every epoch and
on Ctrl-C; ``resume`` continues it exactly), ``best.pt``/``best.weights`` (best validation AP50),
``final.weights``, ``results.csv``, ``results.png``.

Ctrl-C (SIGINT, when called from the main thread) finishes the current step, saves ``last.pt`` and returns a
summary with ``interrupted=True``; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from yolodet.data import DatasetSource, load_dataset
from yolodet.data.train_dataset import TrainBatchSampler, TrainDataset, collate_train, worker_init
from yolodet.data.transforms import AugmentConfig
from yolodet.device import resolve_device
from yolodet.distributed import World, all_gather, init_from_env
from yolodet.errors import YolodetError
from yolodet.evaluation import evaluate
from yolodet.inference.detector import default_preprocess
from yolodet.inference.settings import check_thresholds, check_workers, parse_size
from yolodet.modeling.blocks.backbone import has_backbone
from yolodet.modeling.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights
from yolodet.training.config import TrainConfig, TrainSummary
from yolodet.training.engine import RunState, build_optimizer, get_rng_state, set_rng_state, train_one_epoch
from yolodet.training.history import plot_history, write_csv
from yolodet.training.criterion import UntrainableError, build_loss, check_trainable
from yolodet.training.loss import LOSS_PARTS
from yolodet.training.pretrained import load_backbone_weights
from yolodet.training.schedule import LrSchedule
from yolodet.training.transfer import freeze_layers, init_head_priors, load_pretrained, set_train_mode

log = logging.getLogger(__name__)

__all__ = ["TrainError", "train"]

DEFAULT_OUTPUT = "runs/train"


class TrainError(YolodetError, ValueError):
    """A training run that cannot start as configured (the message says what to change)."""


def train(config: TrainConfig) -> TrainSummary:
    """Train or fine-tune as ``config`` says; see the module docstring for what is written.

    Raises:
        YolodetError: bad cfg, weights, checkpoint, dataset or settings (nothing is trained).
        FloatingPointError: the loss became non-finite (the last complete ``last.pt`` is kept).
    """
    _seed(config.seed)  # model initialisation; a resumed run restores the saved generator states instead
    ckpt = None
    if config.resume:
        ckpt, config = _resume(config)
    elif not config.cfg or not config.data:
        raise TrainError("a training run needs a cfg and a dataset (or resume=...)")
    check_thresholds(config.conf_thres, config.nms_thres)
    model = Darknet.from_cfg_text(ckpt["cfg_text"], ckpt["cfg_path"]) if ckpt else Darknet.from_cfg(config.cfg)
    try:
        check_trainable(model)  # before any data is read: a cfg yolodet cannot train fails here, never halfway
    except UntrainableError as exc:
        raise TrainError(str(exc)) from None
    train_src, val_src = load_dataset(config.data, "train"), load_dataset(config.data, "valid")
    if len(train_src.names) != model.num_classes:
        raise TrainError(f"the cfg has {model.num_classes} classes but {config.data} has {len(train_src.names)}: "
                         f"make a fine-tuning cfg with `yolodet make-cfg --cfg CFG --data {config.data}`")
    if ckpt:
        model.load_state_dict(ckpt["model"])
    else:
        load_backbone_weights(model, config.backbone_weights)  # no-op for cfgs without a [backbone]
        fresh = load_pretrained(model, config.weights).skipped_layers if config.weights else None
        init_head_priors(model, fresh)
    return _fit(config, model, train_src, val_src, ckpt)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resume(config: TrainConfig) -> tuple[dict, TrainConfig]:
    """The checkpoint to resume and ``config`` with the run's saved settings."""
    path = Path(config.output or DEFAULT_OUTPUT) / "last.pt" if config.resume == "auto" else Path(config.resume)
    ckpt = load_checkpoint(path)
    if "run_state" not in ckpt or "args" not in ckpt:
        raise CheckpointError(f"{path}: a model checkpoint, not a training state (no run_state): start a new run "
                              f"from it with weights={path}")
    saved = dict(ckpt["args"])
    if "no_augment" in saved:  # checkpoints of yolodet 0.1 kept the command line's spelling
        saved["augment"] = not saved.pop("no_augment")
    config = config.resumed(saved)
    return ckpt, replace(config, output=config.output or str(path.parent))


def _schedule(config: TrainConfig, model: Darknet, steps_per_epoch: int) -> LrSchedule:
    schedule = LrSchedule.from_net(model.net)
    if config.epochs:
        schedule = schedule.with_max_batches(config.epochs * steps_per_epoch)
    elif config.max_batches:
        schedule = schedule.with_max_batches(config.max_batches)
    if config.lr is not None:
        schedule = replace(schedule, learning_rate=config.lr)
    if config.burn_in is not None:
        schedule = replace(schedule, burn_in=config.burn_in)
    if config.steps is not None:
        scales = tuple(config.scales or [0.1] * len(config.steps))
        schedule = replace(schedule, policy="steps", steps=tuple(config.steps), scales=scales)
    return schedule


def _mean_over_ranks(stats: dict[str, float], world: World) -> dict[str, float]:
    """An epoch's loss parts averaged over the ranks (equal shares: the one-process means) and the throughput
    summed, so that results.csv describes the whole run."""
    if world.size == 1:
        return stats
    parts = all_gather(stats, world)
    merged = {k: sum(p[k] for p in parts) / world.size for k in LOSS_PARTS}
    return {**stats, **merged, "images": sum(p["images"] for p in parts),
            "img_per_s": sum(p["img_per_s"] for p in parts)}


class RankBatches(Sampler[list]):
    """This rank's part of every mini-batch of a :class:`TrainBatchSampler`: images ``rank::size`` of it, so that
    the ranks together see exactly the one-process mini-batch (same images, sizes and augmentation seeds) and
    DDP's gradient average equals the one-process gradient of the per-image mean loss. A final mini-batch with
    fewer images than ranks is topped up with its own first images, so that no rank is left without a backward
    pass (which would stall the others)."""

    def __init__(self, sampler: TrainBatchSampler, world: World) -> None:
        self.sampler, self.world = sampler, world

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for keys in self.sampler:
            if self.world.size > 1 and len(keys) < self.world.size:
                keys = (keys * self.world.size)[:self.world.size]
            yield keys[self.world.rank::self.world.size]


@dataclass
class _Stop:
    """Why the loop should stop: Ctrl-C (or ``stop_after_steps``), or the time limit."""

    requested: bool = False
    time_up: bool = False
    epoch_start: float = 0.0
    plotted: float = 0.0
    previous: object = field(default=None, repr=False)

    def __call__(self, signum, frame) -> None:  # the SIGINT handler
        self.requested = True
        log.warning("interrupted: saving a checkpoint after the current step (Ctrl-C again to abort)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _fit(config: TrainConfig, model: Darknet, train_src: DatasetSource, val_src: DatasetSource,
         ckpt: dict | None) -> TrainSummary:
    world, device = init_from_env(resolve_device(config.device))
    out = Path(config.output or DEFAULT_OUTPUT)
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
    darknet_format = not has_backbone(model)
    net = model.net
    batch = config.batch_size or net.batch
    subdivisions = min(config.subdivisions or net.subdivisions, batch)
    if batch < 1 or subdivisions < 1 or batch % subdivisions:
        raise TrainError(f"batch {batch} must be a positive multiple of subdivisions {subdivisions}")
    check_workers(config.workers)
    if config.freeze < 0 or config.eval_interval < 0:
        raise TrainError("freeze and eval_interval must be >= 0")
    size = parse_size(config.img_size, model)
    val_size = parse_size(config.val_img_size, model) if config.val_img_size else size
    loss_fn = build_loss(model)
    multiscale = loss_fn.random  # Darknet: random=1 means a factor of 1.4
    if config.multi_scale is not None:
        multiscale = (multiscale or 1.0) if config.multi_scale else 0.0
    aug = AugmentConfig.from_net(net, loss_fn.jitter, jitter=config.jitter, mosaic=config.mosaic)
    if not config.augment:
        aug = AugmentConfig(letterbox=aug.letterbox)
    if world.size > 1 and (batch // subdivisions) % world.size:
        raise TrainError(f"the mini-batch of {batch // subdivisions} images (batch {batch} / subdivisions "
                         f"{subdivisions}) does not split over {world.size} processes: make batch / subdivisions "
                         f"a multiple of the world size")
    sampler = TrainBatchSampler(len(train_src.samples), batch // subdivisions, size=size, seed=config.seed,
                                multiscale=multiscale, accumulate=subdivisions)
    dataset = TrainDataset(train_src, aug, cache=config.cache, **(
        {} if config.max_image_pixels is None else {"max_pixels": config.max_image_pixels or None}))
    loader = DataLoader(dataset,
                        batch_sampler=RankBatches(sampler, world),
                        num_workers=config.workers, collate_fn=collate_train, pin_memory=device.type == "cuda",
                        persistent_workers=config.workers > 0, worker_init_fn=worker_init,
                        multiprocessing_context="spawn" if config.workers > 0 else None)  # see worker_init
    schedule = _schedule(config, model, sampler.steps_per_epoch)
    epochs = math.ceil(schedule.max_batches / sampler.steps_per_epoch)
    momentum = config.momentum if config.momentum is not None else net.momentum
    decay = config.decay if config.decay is not None else net.decay
    channels_last = device.type == "cpu" if config.channels_last is None else config.channels_last
    if config.sync_bn and world.size > 1:
        if device.type != "cuda":
            raise TrainError("sync_bn needs CUDA: torch's SyncBatchNorm runs on GPUs only")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    frozen = freeze_layers(model, config.freeze)
    network = model if world.size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, lr=schedule(0), momentum=momentum, decay=decay, adam=config.adam,
                                betas=(momentum, 0.999))
    amp = device.type == "cuda" if config.amp is None else config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    autocast = torch.float16 if amp else (torch.bfloat16 if config.bf16 and device.type == "cpu" else None)
    state = RunState()
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = RunState.from_dict(ckpt["run_state"])
        set_rng_state(ckpt["rng"])
        log.info("resuming %s at epoch %d, step %d", out / "last.pt", state.epoch, state.step)
    log.info("%d process(es); %d train / %d val images, %d classes; batch %d = %d x %d, %d steps (%d epochs of %d), "
             "size %s%s, lr %g, burn_in %d, steps %s; %s, %d parameters frozen; augment %s", world.size,
             len(train_src.samples), len(val_src.samples), model.num_classes, batch, subdivisions, batch // subdivisions,
             schedule.max_batches, epochs, sampler.steps_per_epoch, size, " multi-scale" if multiscale else "",
             schedule.learning_rate, schedule.burn_in, list(schedule.steps), "Adam" if config.adam else "SGD",
             frozen, aug)
    saved_settings = config.run_settings()
    summary = TrainSummary(output=out, last=out / "last.pt")
    stop = _Stop()

    def should_stop(s: RunState) -> bool:
        if config.stop_after_steps is not None and s.step >= config.stop_after_steps:
            stop.requested = True
        if config.time_limit is not None and \
                s.train_seconds + time.perf_counter() - stop.epoch_start >= config.time_limit:
            stop.time_up = True
        return stop.requested or stop.time_up

    def save(path: Path) -> None:
        if not world.main:  # one writer; the other ranks hold the same weights
            return
        model.seen = state.step * batch
        save_checkpoint(model, path, optimizer=optimizer.state_dict(),
                        scaler=scaler.state_dict() if scaler is not None else None, run_state=state.to_dict(),
                        rng=get_rng_state(), args=saved_settings)

    stop.install()
    try:
        while state.step < schedule.max_batches:
            epoch = state.epoch
            sampler.set_epoch(epoch, state.batch_in_epoch)
            set_train_mode(model, config.freeze)
            stop.epoch_start = time.perf_counter()
            stats = train_one_epoch(network, loss_fn, optimizer, loader, schedule=schedule, state=state,
                                    accumulate=subdivisions, batches_per_epoch=sampler.batches_per_epoch,
                                    images_per_step=batch,
                                    max_steps=schedule.max_batches, device=device, scaler=scaler,
                                    autocast_dtype=autocast, channels_last=channels_last, should_stop=should_stop,
                                    progress=config.progress and world.main)
            stats = _mean_over_ranks(stats, world)
            if stop.requested:
                save(out / "last.pt")
                log.warning("saved %s at epoch %d, step %d; continue with --resume --output %s", out / "last.pt",
                            state.epoch, state.step, out)
                summary.interrupted = True
                break
            if state.batch_in_epoch >= sampler.batches_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            done = state.step >= schedule.max_batches or stop.time_up
            row = {"epoch": epoch + 1, "step": state.step, "lr": stats["lr"],
                   **{k: stats[k] for k in LOSS_PARTS}, "img_per_s": stats["img_per_s"],
                   "train_seconds": state.train_seconds, "ap": math.nan, "ap50": math.nan}
            if config.eval_interval and ((epoch + 1) % config.eval_interval == 0 or done):
                result = evaluate(model, val_src, img_size=val_size, preprocess=default_preprocess(model),
                                  conf_thres=config.conf_thres, nms_thres=config.nms_thres,
                                  batch_size=batch // subdivisions, workers=0, device=device, progress=False)
                row.update(ap=result.ap, ap50=result.ap50)
                summary.final_ap, summary.final_ap50 = result.ap, result.ap50
            state.history.append(row)
            improved = not math.isnan(row["ap50"]) and row["ap50"] > state.best_fitness
            if improved:
                state.best_fitness = row["ap50"]
                summary.best_epoch = epoch + 1
            save(out / "last.pt")
            if improved:
                save(out / "best.pt")
                summary.best = out / "best.pt"
                if darknet_format and world.main:  # torchvision backbones exist only as checkpoints
                    save_darknet_weights(model, out / "best.weights")
            if world.main:
                write_csv(out / "results.csv", state.history)
            if world.main and (not math.isnan(row["ap50"]) or done or time.perf_counter() - stop.plotted > 60):
                plot_history(out / "results.png", state.history)  # ~0.3 s: not after every tiny epoch
                stop.plotted = time.perf_counter()
            log.info("epoch %d/%d step %d/%d: %s lr %.2e, %.1f img/s | val AP %.4f AP50 %.4f (best AP50 %.4f)",
                     epoch + 1, epochs, state.step, schedule.max_batches,
                     " ".join(f"{k} {row[k]:.3f}" for k in LOSS_PARTS), row["lr"], row["img_per_s"], row["ap"],
                     row["ap50"], state.best_fitness)
            if stop.requested:  # Ctrl-C during validation or saving: the state above is complete
                log.warning("interrupted: continue with --resume --output %s", out)
                summary.interrupted = True
                break
            if done:
                break
    finally:
        stop.uninstall()
    if darknet_format and not summary.interrupted and world.main:
        save_darknet_weights(model, out / "final.weights")
        summary.weights.append(out / "final.weights")
    if darknet_format and summary.best is not None:
        summary.weights.append(out / "best.weights")
    summary.steps, summary.epochs, summary.train_seconds = state.step, state.epoch, state.train_seconds
    summary.best_ap50 = state.best_fitness if state.history and summary.best is not None else math.nan
    summary.history = list(state.history)
    return summary
