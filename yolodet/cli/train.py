"""``yolodet train``: train or fine-tune a Darknet cfg on a dataset (Darknet .data, COCO json, Pascal VOC folder
or split list, or an Ultralytics dataset YAML).

Typical fine-tuning from COCO weights (the cfg must have the dataset's class count; make one with make-cfg):

    yolodet make-cfg --cfg yolo-v3-tiny --data DATA --output my.cfg
    yolodet train --cfg my.cfg --data DATA --weights weights/yolo-v3-tiny.weights --epochs 30

Writes to --output: last.pt (every epoch and on Ctrl-C; --resume continues it exactly), best.pt/best.weights (best
validation AP50), final.weights, results.csv and results.png (loss parts and mAP per epoch).
"""

from __future__ import annotations

import argparse
import logging

from yolodet.cli.options import add_device_option, add_img_size_option, add_threads_option, apply_threads, img_size

log = logging.getLogger("yolodet.train")

HELP = "train or fine-tune a cfg on a Darknet .data, COCO json, VOC or YAML dataset"
EPILOG = "Exit codes: 0 trained; 2 bad cfg/weights/dataset/arguments; 130 interrupted (last.pt saved: --resume)."
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130


def add_arguments(p: argparse.ArgumentParser) -> None:
    from yolodet.inference.settings import EVAL_CONF_THRES

    p.description, p.epilog = __doc__, EPILOG
    p.add_argument("--cfg", help="Darknet cfg, a path or a shipped cfg's name (not needed with --resume)")
    p.add_argument("--data", help=".data file, COCO json, VOC folder/list or dataset YAML (not needed with --resume)")
    p.add_argument("--weights", help="start from: Darknet .weights (full, other class count, or partial *.conv.N) "
                                     "or a yolodet checkpoint; from scratch when absent")
    p.add_argument("--backbone-weights", metavar="PATH|imagenet",
                   help="ImageNet weights for the cfg's [backbone]: a torchvision state dict, or 'imagenet' for "
                        "torchvision's local cache (never downloaded); default: the cfg's weights= key")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="train this many epochs (steps scale with it)")
    length.add_argument("--max-batches", type=int, help="optimiser steps in all (default: the cfg's max_batches)")
    add_img_size_option(p, what="training network size")
    add_img_size_option(p, "--val-img-size", what="validation size (default: --img-size)")
    p.add_argument("--batch-size", type=int, help="images per optimiser step, Darknet's batch (default: cfg's)")
    p.add_argument("--subdivisions", type=int, help="mini-batches per step (default: cfg's)")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (default: 2)")
    add_device_option(p)
    add_threads_option(p)
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
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no jitter, HSV, flip or mosaic")
    p.add_argument("--jitter", type=float, help="override the [yolo] jitter")
    p.add_argument("--cache", action="store_true", help="keep decoded training images in memory")
    p.add_argument("--max-image-pixels", type=int, help="skip larger images from their header (decompression "
                                                         "bombs; default: yolodet.data.images.DEFAULT_MAX_PIXELS)")
    p.add_argument("--sync-bn", action="store_true", help="under torchrun on GPUs: BatchNorm over the global batch")
    p.add_argument("--amp", dest="amp", action="store_true", default=None, help="fp16 autocast (default on CUDA)")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU (fast only with AVX512-BF16/AMX)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="channels-last memory format (default: on for the CPU, where it is faster)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--seed", type=int, default=0, help="order, sizes and augmentation follow from it (default: 0)")
    p.add_argument("--eval-interval", type=int, default=1, help="validate every N epochs, 0 = never (default: 1)")
    p.add_argument("--conf-thres", type=float, default=EVAL_CONF_THRES,
                   help=f"validation candidate threshold (default: {EVAL_CONF_THRES:g})")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds of training (validation excluded)")
    p.add_argument("--stop-after-steps", type=int, help="act as on Ctrl-C after this many steps (for testing)")


def config_from_args(args: argparse.Namespace):
    """The :class:`~yolodet.training.TrainConfig` the arguments describe (the only place that reads them)."""
    from yolodet.cfg.shipped import resolve_cfg
    from yolodet.cli.options import OptionError
    from yolodet.training import TrainConfig

    cfg = args.cfg
    if cfg is not None:
        try:
            cfg = str(resolve_cfg(cfg))
        except FileNotFoundError as exc:
            raise OptionError(f"--cfg {exc}") from None
    return TrainConfig(
        cfg=cfg, data=args.data, weights=args.weights, backbone_weights=args.backbone_weights, epochs=args.epochs,
        max_batches=args.max_batches, img_size=img_size(args.img_size), val_img_size=img_size(args.val_img_size),
        batch_size=args.batch_size, subdivisions=args.subdivisions, workers=args.workers, device=args.device,
        output=args.output, resume=args.resume, freeze=args.freeze, adam=args.adam, lr=args.lr,
        momentum=args.momentum, decay=args.decay, burn_in=args.burn_in, steps=args.steps, scales=args.scales,
        multi_scale=args.multi_scale, mosaic=args.mosaic, jitter=args.jitter, augment=args.augment,
        cache=args.cache, sync_bn=args.sync_bn, amp=args.amp, bf16=args.bf16, channels_last=args.channels_last,
        seed=args.seed,
        eval_interval=args.eval_interval, conf_thres=args.conf_thres, time_limit=args.time_limit,
        stop_after_steps=args.stop_after_steps, progress=args.progress, max_image_pixels=args.max_image_pixels)


def run(args: argparse.Namespace) -> int:
    from yolodet.distributed import current_world
    from yolodet.training import train

    apply_threads(args.threads)
    summary = train(config_from_args(args))
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if current_world().main:
            print(f"trained {summary.steps} steps in {summary.train_seconds:.0f} s of training; best val AP50 "
              f"{summary.best_ap50:.4f}; results in {summary.output}/")
    return EXIT_OK
