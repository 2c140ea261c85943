#!/usr/bin/env python
"""COCO mAP of a Darknet cfg + weights, reproducing Darknet's own numbers by default.

Ground truth: a COCO ``instances`` json (``--annotations``, images in ``--images`` or guessed), or a Darknet
``.data`` file (``--data``: its ``valid=`` list, ``names=``, YOLO txt labels found the Darknet way), converted to
COCO ground truth on the fly. Category ids are decided from the ground truth: the official 80 -> 91 table when it
uses COCO ids and the model has 80 classes, identity otherwise.

Defaults are Darknet's COCO-validation protocol (``darknet detector valid``): candidates with ``obj * cls >
0.005``, per-class NMS at IoU 0.45, every detection written, COCOeval maxDets 100, images decoded with stb_image.
The two Darknet conventions differ in ``--preprocess``:

  darknet-resize     AlexeyAB/darknet (default unless the cfg says letter_box=1): plain resize
  darknet-letterbox  pjreddie/darknet (and AlexeyAB with letter_box=1): aspect kept, gray bars

yolov3-tiny at 416 on coco128: Darknet gives AP 0.1504 / AP50 0.2826 (resize) and 0.1397 / 0.2915 (letterbox).

The last line printed is machine-readable: ``AP=0.1504 AP50=0.2826``. Exit codes: 0 ok, 2 bad arguments or inputs.
"""

from __future__ import annotations

from yolodet.cli.openmp import set_openmp_defaults

# Idle OpenMP threads spin briefly, then sleep (see yolodet.openmp); must precede `import torch`.
set_openmp_defaults()

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from yolodet.atomic import atomic_write_bytes  # noqa: E402
from yolodet.cfg import CfgError  # noqa: E402
from yolodet.modeling.checkpoint import CheckpointError  # noqa: E402
from yolodet.cli.options import add_precision_options, add_threads_option, threads_problem  # noqa: E402
from yolodet.data import DatasetError, read_coco, read_darknet_data  # noqa: E402
from yolodet.data.images import IMAGE_DECODERS  # noqa: E402
from yolodet.inference.loader import default_workers
from yolodet.inference.detector import Detector  # noqa: E402
from yolodet.evaluation import EvalResult, evaluate, pr_curve_figure  # noqa: E402
from yolodet.cli.fetch import FetchError, ensure_weights  # noqa: E402
from yolodet.inference.preprocess import PREPROCESS_MODES  # noqa: E402
from yolodet.modeling.weights import WeightsError  # noqa: E402

log = logging.getLogger("eval_coco")

EXIT_OK, EXIT_BAD_INPUT = 0, 2
_INPUT_ERRORS = (CfgError, CheckpointError, DatasetError, FetchError, WeightsError, ValueError, OSError)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", help="Darknet cfg (optional with a yolodet checkpoint, which embeds its cfg)")
    p.add_argument("--weights", help="Darknet .weights or yolodet checkpoint (default: weights/<cfg stem>.weights, "
                                     "fetched when it is a known official file)")
    gt = p.add_argument_group("ground truth (one of)")
    gt.add_argument("--annotations", help="COCO instances json")
    gt.add_argument("--data", help="Darknet .data file (valid=, names=)")
    p.add_argument("--images", help="image directory of --annotations (default: guessed from the json's location)")
    p.add_argument("--split", default="valid", help="list of the .data file to evaluate (default: valid)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="S", help="network input S or W H (default: cfg's)")
    p.add_argument("--preprocess", choices=PREPROCESS_MODES,
                   help="default: darknet-letterbox if the cfg sets letter_box=1, else darknet-resize")
    p.add_argument("--conf-thres", type=float, default=0.005, help="Darknet candidate threshold (default 0.005)")
    p.add_argument("--nms-thres", type=float, default=0.45, help="per-class NMS IoU (default 0.45)")
    p.add_argument("--max-det", type=int, default=100, help="COCOeval maxDets per image and class (default 100)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, help="image loading processes overlapping the network (default: the "
                                               "cores torch's threads leave free, at most 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_precision_options(p)
    add_threads_option(p)
    p.add_argument("--decoder", choices=IMAGE_DECODERS,
                   help="image decoder (default: stb, Darknet's, when built; else opencv)")
    p.add_argument("--results", help="write the COCO results json here (atomically)")
    p.add_argument("--plots", help="write pr_curve.png (AP50 precision-recall per class and overall) in this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        problem = _check_args(args)
        if problem:
            log.error("%s", problem)
            return EXIT_BAD_INPUT
        if args.threads:
            torch.set_num_threads(args.threads)
        source, gt = _load_ground_truth(args)
        detector = _load_detector(args, source.names)
        workers = args.workers if args.workers is not None else default_workers(len(source.samples),
                                                                                  args.batch_size)
        result = evaluate(detector, source, conf_thres=args.conf_thres, nms_thres=args.nms_thres,
                          batch_size=args.batch_size, workers=workers, gt=gt, max_det=args.max_det,
                          decoder=args.decoder, progress=not args.no_progress)
    except _INPUT_ERRORS as exc:
        log.debug("details", exc_info=True)
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    if args.results:
        _write_json_atomic(Path(args.results), result.results)
        log.info("wrote %d detections to %s", len(result.results), args.results)
    if args.plots:
        path, buf = Path(args.plots) / "pr_curve.png", io.BytesIO()
        pr_curve_figure(result).savefig(buf, format="png")
        atomic_write_bytes(path, buf.getvalue())
        log.info("wrote %s", path)
    _print_report(result)
    return EXIT_OK


def _check_args(args: argparse.Namespace) -> str | None:
    if bool(args.annotations) == bool(args.data):
        return "give exactly one of --annotations (COCO json) or --data (Darknet .data)"
    if args.images and not args.annotations:
        return "--images goes with --annotations"
    if not args.cfg and not args.weights:
        return "give --cfg (and optionally --weights), or --weights with a yolodet checkpoint"
    if args.img_size and len(args.img_size) > 2:
        return "--img-size takes S or W H"
    for flag in ("cfg", "weights", "annotations", "data"):
        value = getattr(args, flag)
        if value and not Path(value).is_file():
            return f"--{flag} {value}: no such file"
    if args.images and not Path(args.images).is_dir():
        return f"--images {args.images}: no such directory"
    if not 0 <= args.conf_thres < 1 or not 0 < args.nms_thres <= 1:
        return f"--conf-thres must be in [0, 1) and --nms-thres in (0, 1], got {args.conf_thres}, {args.nms_thres}"
    if args.batch_size < 1 or (args.workers is not None and args.workers < 0) or args.max_det < 1:
        return "--batch-size and --max-det must be >= 1, --workers >= 0"
    return threads_problem(args.threads)


def _load_ground_truth(args: argparse.Namespace):
    if args.annotations:
        source = read_coco(args.annotations, args.images)
        with open(args.annotations, encoding="utf-8") as f:
            gt = json.load(f)  # the json itself: crowd regions and segment areas count as in the official eval
    else:
        source, gt = read_darknet_data(args.data, args.split), None
    for issue in source.issues:
        if issue.severity == "warning":
            log.warning("%s", issue)
    if not source.samples:
        raise DatasetError(f"no images to evaluate in {args.annotations or args.data}")
    return source, gt


def _load_detector(args: argparse.Namespace, names: list[str]) -> Detector:
    weights = args.weights
    if weights is None:
        weights = ensure_weights(Path("weights") / f"{Path(args.cfg).stem}.weights")
    size = None if not args.img_size else (args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    detector = Detector.from_cfg(args.cfg, weights, img_size=size, preprocess=args.preprocess, device=device,
                                 precision=args.precision)
    if len(names) == len(detector.names):
        detector.names = list(names)
    log.info("model %s + %s: %d classes, input %dx%d, %s, %s, %s", args.cfg or "(embedded cfg)", weights,
             len(detector.names), *detector.img_size, detector.preprocess_mode, detector.device, detector.precision)
    return detector


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Never a half-written results file (temp file, then rename)."""
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":")).encode())


def _print_report(result: EvalResult) -> None:
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
          f"decoder {p['decoder']}, "
          f"conf {p['conf_thres']:g}, NMS {p['nms_thres']:g}, maxDets {p['max_det']}, "
          f"category ids {result.category_rule}")
    print(f"{result.num_images} images ({result.num_unreadable} unreadable), {len(result.results)} detections, "
          f"{result.images_per_s:.1f} images/s")
    print(f"AP={result.ap:.4f} AP50={result.ap50:.4f}")


def _fmt(value: float) -> str:
    return f"{value:6.4f}" if not math.isnan(value) else f"{'-':>6}"


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
