#!/usr/bin/env python
"""Train or fine-tune a Darknet cfg on a dataset (Darknet .data, COCO json, Pascal VOC folder or split list).

Typical fine-tuning from COCO weights (the cfg must have the dataset's class count; make one with
tools/make_cfg.py):

    python tools/make_cfg.py --cfg cfg/yolo-v3-tiny.cfg --data DATA --output my.cfg
    python tools/train.py --cfg my.cfg --data DATA --weights weights/yolov3-tiny.weights --epochs 30

Writes to --output: last.pt (every epoch and on Ctrl-C; --resume continues it exactly), best.pt/best.weights (best
validation AP50), final.weights, results.csv and results.png (loss parts and mAP per epoch).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from yolodet.modeling.blocks.backbone import has_backbone
from yolodet.training.pretrained import load_backbone_weights
from yolodet.cfg import CfgError
from yolodet.modeling.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from yolodet.data import DatasetError, load_dataset
from yolodet.data.train_dataset import TrainBatchSampler, TrainDataset, collate_train, worker_init
from yolodet.data.transforms import AugmentConfig
from yolodet.inference.detector import default_preprocess, parse_size
from yolodet.training.engine import RunState, build_optimizer, get_rng_state, set_rng_state, train_one_epoch
from yolodet.evaluation import evaluate
from yolodet.training.loss import LOSS_PARTS, YoloLoss
from yolodet.atomic import atomic_write_bytes
from yolodet.modeling.model import Darknet
from yolodet.training.schedule import LrSchedule
from yolodet.training.transfer import freeze_layers, init_head_priors, load_pretrained, set_train_mode
from yolodet.modeling.weights import WeightsError, save_darknet_weights

log = logging.getLogger("yolodet.train")
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
# Settings of the machine rather than of the run: a resumed run takes these from the new command line.
_LOCAL_ARGS = {"resume", "output", "workers", "device", "threads", "no_progress", "quiet", "time_limit",
               "stop_after_steps"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", help="Darknet cfg (not needed with --resume)")
    p.add_argument("--data", help=".data file, COCO json, VOC folder/list (not needed with --resume)")
    p.add_argument("--weights", help="start from: Darknet .weights (full, other class count, or partial *.conv.N) "
                                     "or a yolodet checkpoint; from scratch when absent")
    p.add_argument("--backbone-weights", metavar="PATH|imagenet",
                   help="ImageNet weights for the cfg's [backbone]: a torchvision state dict, or 'imagenet' for "
                        "torchvision's local cache (never downloaded); default: the cfg's weights= key")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="train this many epochs (steps scale with it)")
    length.add_argument("--max-batches", type=int, help="optimiser steps in all (default: the cfg's max_batches)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="S", help="network size S or W H (default: cfg's)")
    p.add_argument("--val-img-size", type=int, nargs="+", metavar="S", help="validation size (default: --img-size)")
    p.add_argument("--batch-size", type=int, help="images per optimiser step, Darknet's batch (default: cfg's)")
    p.add_argument("--subdivisions", type=int, help="mini-batches per step (default: cfg's)")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (default: 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--output", help="run folder (default: runs/train, or the checkpoint's folder with --resume)")
    p.add_argument("--resume", nargs="?", const="auto", help="continue OUTPUT/last.pt, or the checkpoint given")
    p.add_argument("--freeze", type=int, default=0, help="do not train layers 0..N-1 (default: 0)")
    p.add_argument("--adam", action="store_true", help="Adam instead of SGD")
    p.add_argument("--lr", type=float, help="learning rate (default: cfg's learning_rate)")
    p.add_argument("--momentum", type=float, help="SGD momentum / Adam beta1 (default: cfg's)")
    p.add_argument("--decay", type=float, help="weight decay of conv weights (default: cfg's)")
    p.add_argument("--burn-in", type=int, help="warm-up steps (default: cfg's, at most 10%% of the run)")
    p.add_argument("--steps", type=int, nargs="+", help="lr step boundaries (default: cfg's, scaled to the run)")
    p.add_argument("--scales", type=float, nargs="+", help="lr factors at --steps (default: cfg's, or 0.1)")
    p.add_argument("--multi-scale", dest="multi_scale", action="store_true", default=None,
                   help="random sizes every 10 steps (default: on when a [yolo] has random=1)")
    p.add_argument("--no-multi-scale", dest="multi_scale", action="store_false")
    p.add_argument("--mosaic", dest="mosaic", action="store_true", default=None, help="default: cfg's mosaic")
    p.add_argument("--no-mosaic", dest="mosaic", action="store_false")
    p.add_argument("--no-augment", action="store_true", help="no jitter, HSV, flip or mosaic")
    p.add_argument("--jitter", type=float, help="override the [yolo] jitter")
    p.add_argument("--cache", action="store_true", help="keep decoded training images in memory")
    p.add_argument("--amp", dest="amp", action="store_true", default=None, help="fp16 autocast (default on CUDA)")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU (fast only with AVX512-BF16/AMX)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="channels-last memory format (default: on for the CPU, where it is faster)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--seed", type=int, default=0, help="order, sizes and augmentation follow from it (default: 0)")
    p.add_argument("--eval-interval", type=int, default=1, help="validate every N epochs, 0 = never (default: 1)")
    p.add_argument("--conf-thres", type=float, default=0.005, help="validation candidate threshold (0.005)")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds of training (validation excluded)")
    p.add_argument("--stop-after-steps", type=int, help="act as on Ctrl-C after this many steps (for testing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true", help="warnings and the summary only")
    return p


class _Interrupt:
    """First Ctrl-C: finish the current step, save, exit 130. Second: the default (immediate) behaviour."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True
        log.warning("interrupted: saving a checkpoint after the current step (Ctrl-C again to abort)")
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _restore_args(args: argparse.Namespace) -> dict | None:
    """With --resume: the checkpoint, and ``args`` updated with the run's saved settings."""
    if not args.resume:
        return None
    path = Path(args.output or "runs/train") / "last.pt" if args.resume == "auto" else Path(args.resume)
    ckpt = load_checkpoint(path)
    if "run_state" not in ckpt or "args" not in ckpt:
        raise CheckpointError(f"{path}: a model checkpoint, not a training state (no run_state): use --weights")
    for key, value in ckpt["args"].items():
        if key not in _LOCAL_ARGS:
            setattr(args, key, value)
    args.output = args.output or str(path.parent)
    return ckpt


def _schedule(args: argparse.Namespace, model: Darknet, steps_per_epoch: int) -> LrSchedule:
    schedule = LrSchedule.from_net(model.net)
    if args.epochs:
        schedule = schedule.with_max_batches(args.epochs * steps_per_epoch)
    elif args.max_batches:
        schedule = schedule.with_max_batches(args.max_batches)
    if args.lr is not None:
        schedule = replace(schedule, learning_rate=args.lr)
    if args.burn_in is not None:
        schedule = replace(schedule, burn_in=args.burn_in)
    if args.steps is not None:
        scales = tuple(args.scales or [0.1] * len(args.steps))
        schedule = replace(schedule, policy="steps", steps=tuple(args.steps), scales=scales)
    return schedule


def _write_csv(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


def _plot(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [row["epoch"] for row in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for part in LOSS_PARTS:
        ax1.plot(x, [row[part] for row in history], marker=".", label=part)
    ax1.set(xlabel="epoch", ylabel="loss per image", title="training loss", yscale="log")
    ax1.legend()
    for key in ("ap50", "ap"):
        points = [(e, row[key]) for e, row in zip(x, history) if not math.isnan(row[key])]
        ax2.plot([e for e, _ in points], [v for _, v in points], marker="o", label=key.upper())
    ax2.set(xlabel="epoch", ylabel="COCO AP", title="validation", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)  # model initialisation; a resumed run restores the saved generator states instead
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    try:
        ckpt = _restore_args(args)
        if ckpt is None and (not args.cfg or not args.data):
            raise ValueError("--cfg and --data are required (unless --resume)")
        model = (Darknet.from_cfg_text(ckpt["cfg_text"], ckpt["cfg_path"]) if ckpt else Darknet.from_cfg(args.cfg))
        train_src, val_src = load_dataset(args.data, "train"), load_dataset(args.data, "valid")
        if len(train_src.names) != model.num_classes:
            raise ValueError(f"the cfg has {model.num_classes} classes but {args.data} has {len(train_src.names)}: "
                             f"make a fine-tuning cfg with tools/make_cfg.py --cfg CFG --data {args.data}")
        if ckpt:
            model.load_state_dict(ckpt["model"])
        else:
            load_backbone_weights(model, args.backbone_weights)  # no-op for cfgs without a [backbone]
            fresh = load_pretrained(model, args.weights).skipped_layers if args.weights else None
            init_head_priors(model, fresh)
        return _fit(args, model, train_src, val_src, ckpt)
    except (CfgError, WeightsError, CheckpointError, DatasetError, ValueError, OSError, FloatingPointError) as exc:
        log.error("%s", exc)
        return EXIT_ERROR


def _fit(args, model, train_src, val_src, ckpt) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.output or "runs/train")
    out.mkdir(parents=True, exist_ok=True)
    darknet_format = not has_backbone(model)
    net = model.net
    batch = args.batch_size or net.batch
    subdivisions = min(args.subdivisions or net.subdivisions, batch)
    if batch % subdivisions:
        raise ValueError(f"batch {batch} is not a multiple of subdivisions {subdivisions}")
    size = parse_size(None if args.img_size is None else (args.img_size * 2)[:2], model)
    val_size = parse_size((args.val_img_size * 2)[:2], model) if args.val_img_size else size
    multiscale = max(h.random for h in model.heads)  # Darknet: random=1 means a factor of 1.4
    if args.multi_scale is not None:
        multiscale = (multiscale or 1.0) if args.multi_scale else 0.0
    aug = AugmentConfig.from_net(net, model.heads[0].jitter, jitter=args.jitter, mosaic=args.mosaic)
    if args.no_augment:
        aug = AugmentConfig(letterbox=aug.letterbox)
    sampler = TrainBatchSampler(len(train_src.samples), batch // subdivisions, size=size, seed=args.seed,
                                multiscale=multiscale, accumulate=subdivisions)
    loader = DataLoader(TrainDataset(train_src, aug, cache=args.cache), batch_sampler=sampler,
                        num_workers=args.workers, collate_fn=collate_train, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0, worker_init_fn=worker_init,
                        multiprocessing_context="spawn" if args.workers > 0 else None)  # see worker_init
    schedule = _schedule(args, model, sampler.steps_per_epoch)
    epochs = math.ceil(schedule.max_batches / sampler.steps_per_epoch)
    momentum = args.momentum if args.momentum is not None else net.momentum
    decay = args.decay if args.decay is not None else net.decay
    channels_last = device.type == "cpu" if args.channels_last is None else args.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    frozen = freeze_layers(model, args.freeze)
    optimizer = build_optimizer(model, lr=schedule(0), momentum=momentum, decay=decay, adam=args.adam,
                                betas=(momentum, 0.999))
    amp = device.type == "cuda" if args.amp is None else args.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    autocast = torch.float16 if amp else (torch.bfloat16 if args.bf16 and device.type == "cpu" else None)
    state = RunState()
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = RunState.from_dict(ckpt["run_state"])
        set_rng_state(ckpt["rng"])
        log.info("resuming %s at epoch %d, step %d", out / "last.pt", state.epoch, state.step)
    log.info("%d train / %d val images, %d classes; batch %d = %d x %d, %d steps (%d epochs of %d), size %s%s, "
             "lr %g, burn_in %d, steps %s; %s, %d parameters frozen; augment %s", len(train_src.samples),
             len(val_src.samples), model.num_classes, batch, subdivisions, batch // subdivisions,
             schedule.max_batches, epochs, sampler.steps_per_epoch, size, " multi-scale" if multiscale else "",
             schedule.learning_rate, schedule.burn_in, list(schedule.steps), "Adam" if args.adam else "SGD", frozen,
             aug)
    saved_args = {k: v for k, v in vars(args).items() if k not in _LOCAL_ARGS}
    loss_fn = YoloLoss(model.heads)
    interrupt = _Interrupt()
    previous = signal.signal(signal.SIGINT, interrupt)
    clock = {"epoch_start": 0.0, "plotted": 0.0, "time_up": False}

    def should_stop(s: RunState) -> bool:
        if args.stop_after_steps is not None and s.step >= args.stop_after_steps:
            interrupt.requested = True
        if args.time_limit is not None and \
                s.train_seconds + time.perf_counter() - clock["epoch_start"] >= args.time_limit:
            clock["time_up"] = True
        return interrupt.requested or clock["time_up"]

    def save(path: Path) -> None:
        model.seen = state.step * batch
        save_checkpoint(model, path, optimizer=optimizer.state_dict(),
                        scaler=scaler.state_dict() if scaler is not None else None, run_state=state.to_dict(),
                        rng=get_rng_state(), args=saved_args)

    try:
        while state.step < schedule.max_batches:
            epoch = state.epoch
            sampler.set_epoch(epoch, state.batch_in_epoch)
            set_train_mode(model, args.freeze)
            clock["epoch_start"] = time.perf_counter()
            stats = train_one_epoch(model, loss_fn, optimizer, loader, schedule=schedule, state=state,
                                    accumulate=subdivisions, batches_per_epoch=sampler.batches_per_epoch,
                                    max_steps=schedule.max_batches, device=device, scaler=scaler,
                                    autocast_dtype=autocast, channels_last=channels_last, should_stop=should_stop,
                                    progress=not args.no_progress)
            if interrupt.requested:
                save(out / "last.pt")
                log.warning("saved %s at epoch %d, step %d; continue with --resume --output %s", out / "last.pt",
                            state.epoch, state.step, out)
                return EXIT_INTERRUPTED
            if state.batch_in_epoch >= sampler.batches_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            done = state.step >= schedule.max_batches or clock["time_up"]
            row = {"epoch": epoch + 1, "step": state.step, "lr": stats["lr"],
                   **{k: stats[k] for k in LOSS_PARTS}, "img_per_s": stats["img_per_s"],
                   "train_seconds": state.train_seconds, "ap": math.nan, "ap50": math.nan}
            if args.eval_interval and ((epoch + 1) % args.eval_interval == 0 or done):
                result = evaluate(model, val_src, img_size=val_size, preprocess=default_preprocess(model),
                                  conf_thres=args.conf_thres, batch_size=batch // subdivisions, workers=0,
                                  device=device, progress=False)
                row.update(ap=result.ap, ap50=result.ap50)
            state.history.append(row)
            improved = not math.isnan(row["ap50"]) and row["ap50"] > state.best_fitness
            if improved:
                state.best_fitness = row["ap50"]
            save(out / "last.pt")
            if improved:
                save(out / "best.pt")
                if darknet_format:  # torchvision backbones exist only as checkpoints
                    save_darknet_weights(model, out / "best.weights")
            _write_csv(out / "results.csv", state.history)
            if not math.isnan(row["ap50"]) or done or time.perf_counter() - clock["plotted"] > 60:
                _plot(out / "results.png", state.history)  # ~0.3 s: not after every tiny epoch
                clock["plotted"] = time.perf_counter()
            log.info("epoch %d/%d step %d/%d: %s lr %.2e, %.1f img/s | val AP %.4f AP50 %.4f (best AP50 %.4f)",
                     epoch + 1, epochs, state.step, schedule.max_batches,
                     " ".join(f"{k} {row[k]:.3f}" for k in LOSS_PARTS), row["lr"], row["img_per_s"], row["ap"],
                     row["ap50"], state.best_fitness)
            if interrupt.requested:  # Ctrl-C during validation or saving: the state above is complete
                log.warning("interrupted: continue with --resume --output %s", out)
                return EXIT_INTERRUPTED
            if done:
                break
    finally:
        signal.signal(signal.SIGINT, previous)
    if darknet_format:
        save_darknet_weights(model, out / "final.weights")
    print(f"trained {state.step} steps in {state.train_seconds:.0f} s of training; best val AP50 "
          f"{state.best_fitness:.4f}; results in {out}/")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
