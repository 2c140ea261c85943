"""``yolodet val``: COCO mAP of a Darknet cfg + weights on a COCO json, Darknet .data, VOC or YAML dataset, with
Darknet's validation protocol (pycocotools).

Defaults are Darknet's COCO protocol ``darknet-map`` (AlexeyAB's ``detector map``, pjreddie's ``detector valid``;
``--protocol alexeyab-valid`` is AlexeyAB's ``detector valid``, 0.001 / 0.6): candidates with
objectness > 0.005 and class score obj*cls > 0.005 (every class above it, multi-label), per-class NMS at IoU 0.45,
every remaining detection written, COCOeval with maxDets 100. Category ids come from the ground truth (80 -> 91
COCO table when the ground truth uses COCO ids and the model has 80 classes, identity otherwise).

Preprocessing (--preprocess):
  darknet-resize     AlexeyAB/darknet (default unless the cfg says letter_box=1): plain resize
  darknet-letterbox  pjreddie/darknet (and AlexeyAB with letter_box=1): aspect kept, gray bars
  resize, letterbox  OpenCV's faster resize (not bit-exact with Darknet)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
from pathlib import Path

from yolodet.cli.options import (
    OptionError,
    add_device_option,
    add_img_size_option,
    add_inference_input_options,
    add_model_options,
    add_precision_options,
    add_threads_option,
    add_threshold_options,
    apply_threads,
    img_size,
    max_pixels,
    model_files,
)

log = logging.getLogger("yolodet.val")

HELP = "COCO mAP of a cfg + weights on a dataset, with Darknet's protocol (pycocotools)"
EPILOG = "Exit codes: 0 evaluated; 2 bad cfg/weights/dataset/arguments. The last line is `AP=... AP50=...`."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from yolodet.data.images import IMAGE_DECODERS
    from yolodet.inference.preprocess import PREPROCESS_MODES
    from yolodet.evaluation.protocols import PROTOCOLS
    from yolodet.inference.settings import EVAL_CONF_THRES, NMS_THRES

    p.description, p.epilog = __doc__, EPILOG
    add_model_options(p)
    gt = p.add_argument_group("ground truth (one of)")
    gt.add_argument("--annotations", help="COCO instances json")
    gt.add_argument("--data", help="dataset: Darknet .data, COCO json, Pascal VOC folder/list or dataset YAML")
    p.add_argument("--images", help="image folder of --annotations (default: guessed from the json's location)")
    p.add_argument("--split", default="valid", help="split of --data to evaluate (default: valid)")
    add_img_size_option(p)
    p.add_argument("--preprocess", choices=PREPROCESS_MODES,
                   help="default: darknet-letterbox if the cfg sets letter_box=1, else darknet-resize")
    add_threshold_options(p, EVAL_CONF_THRES, NMS_THRES, "Darknet candidate threshold")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS),
                   help="a named Darknet COCO protocol, setting --conf-thres and --nms-thres: alexeyab-valid "
                        "(0.001 / 0.6, AlexeyAB's detector valid), darknet-map (0.005 / 0.45, the default numbers: "
                        "AlexeyAB's detector map and pjreddie's valid), pjreddie-valid")
    p.add_argument("--max-det", type=int, default=100, help="COCOeval maxDets per image and class (default 100)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--workers", type=int, help="image loading processes overlapping the network (default: the "
                                               "cores torch's threads leave free, at most 2)")
    add_device_option(p)
    add_precision_options(p)
    add_inference_input_options(p)
    add_threads_option(p)
    p.add_argument("--decoder", choices=IMAGE_DECODERS,
                   help="image decoder (default: stb, Darknet's, when built; else opencv)")
    p.add_argument("--results", help="write the COCO results json here (atomically)")
    p.add_argument("--plots", help="write pr_curve.png (AP50 precision-recall per class and overall) in this folder")


def _check(args: argparse.Namespace) -> None:
    if bool(args.annotations) == bool(args.data):
        raise OptionError("give exactly one of --annotations (COCO json) or --data (a dataset)")
    if args.images and not args.annotations:
        raise OptionError("--images goes with --annotations")
    if args.weights and not Path(args.weights).is_file():
        raise OptionError(f"--weights {args.weights}: no such file")
    for flag in ("annotations", "data"):
        value = getattr(args, flag)
        if value and not Path(value).exists():
            raise OptionError(f"--{flag} {value}: no such file or folder")
    if args.images and not Path(args.images).is_dir():
        raise OptionError(f"--images {args.images}: no such folder")
    if args.batch_size < 1 or (args.workers is not None and args.workers < 0) or args.max_det < 1:
        raise OptionError("--batch-size and --max-det must be >= 1, --workers >= 0")


def load_ground_truth(args: argparse.Namespace):
    """(source, COCO gt dict or None): the json itself for COCO (crowd regions count as in the official eval)."""
    from yolodet.data import DatasetError, load_dataset, read_coco

    annotations = args.annotations or (args.data if Path(args.data).suffix.lower() == ".json" else None)
    if annotations:
        source = read_coco(annotations, args.images)
        with open(annotations, encoding="utf-8") as f:
            gt = json.load(f)
    else:
        source, gt = load_dataset(args.data, args.split), None
    for issue in source.issues:
        if issue.severity == "warning":
            log.warning("%s", issue)
    if not source.samples:
        raise DatasetError(f"no images to evaluate in {args.annotations or args.data}")
    return source, gt


def run(args: argparse.Namespace) -> int:
    from yolodet.atomic import atomic_write_bytes
    from yolodet.device import resolve_device
    from yolodet.distributed import init_from_env
    from yolodet.evaluation import evaluate, pr_curve_figure
    from yolodet.inference.detector import Detector
    from yolodet.inference.loader import default_workers
    from yolodet.inference.settings import check_thresholds

    _check(args)
    if args.protocol:
        from yolodet.evaluation.protocols import get_protocol

        protocol = get_protocol(args.protocol)
        args.conf_thres, args.nms_thres = protocol.conf_thres, protocol.nms_thres
    check_thresholds(args.conf_thres, args.nms_thres)
    apply_threads(args.threads)
    world, device = init_from_env(resolve_device(args.device))  # under torchrun: each rank runs a shard
    source, gt = load_ground_truth(args)
    cfg, weights = model_files(args.cfg, args.weights)
    detector = Detector.from_cfg(cfg, weights, img_size=img_size(args.img_size), preprocess=args.preprocess,
                                 device=device, precision=args.precision, allow_partial=args.allow_partial,
                                 backend=args.backend, calibration=args.calibrate)
    if len(source.names) == len(detector.names):
        detector.names = list(source.names)
    log.info("model %s + %s: %d classes, input %dx%d, %s, %s, %s", cfg or "(embedded cfg)", weights,
             len(detector.names), *detector.img_size, detector.preprocess_mode, detector.device, detector.precision)
    workers = args.workers if args.workers is not None else default_workers(len(source.samples), args.batch_size)
    result = evaluate(detector, source, conf_thres=args.conf_thres, nms_thres=args.nms_thres,
                      batch_size=args.batch_size, workers=workers, gt=gt, max_det=args.max_det,
                      decoder=args.decoder, progress=args.progress, max_pixels=max_pixels(args.max_image_pixels))
    if not world.main:  # every rank has the gathered result; rank 0 reports and writes
        return 0
    if args.results:
        atomic_write_bytes(args.results, json.dumps(result.results, separators=(",", ":")).encode())
        log.info("wrote %d detections to %s", len(result.results), args.results)
    if args.plots:
        path, buf = Path(args.plots) / "pr_curve.png", io.BytesIO()
        pr_curve_figure(result).savefig(buf, format="png")
        atomic_write_bytes(path, buf.getvalue())
        log.info("wrote %s", path)
    print_report(result)
    return 0


def print_report(result) -> None:
    """The per-class table, the pycocotools summary, the protocol and ``AP=... AP50=...`` as the last line."""
    rows = [r for r in result.per_class if r.num_gt > 0]
    width = max([len(r.name) for r in rows] + [5])
    print(f"{'class':<{width}}  {'id':>3}  {'gt':>5}  {'AP':>6}  {'AP50':>6}")
    for r in rows:
        print(f"{r.name:<{width}}  {r.category_id:>3}  {r.num_gt:>5}  {_fmt(r.ap)}  {_fmt(r.ap50)}")
    absent = len(result.per_class) - len(rows)
    if absent:
        print(f"({absent} classes have no ground truth here and are not scored)")
    print(result.summary)
    p = result.protocol
    print(f"protocol: {p['img_size'][0]}x{p['img_size'][1]} {p['preprocess']}, {p['precision']}, "
          f"decoder {p['decoder']}, conf {p['conf_thres']:g}, NMS {p['nms_thres']:g}, maxDets {p['max_det']}, "
          f"category ids {result.category_rule}")
    print(f"{result.num_images} images ({result.num_unreadable} unreadable), {len(result.results)} detections, "
          f"{result.images_per_s:.1f} images/s")
    print(f"AP={result.ap:.4f} AP50={result.ap50:.4f}")


def _fmt(value: float) -> str:
    return f"{value:6.4f}" if not math.isnan(value) else f"{'-':>6}"
