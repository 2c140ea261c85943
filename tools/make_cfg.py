#!/usr/bin/env python
"""Make a fine-tuning cfg from a (COCO) Darknet cfg: N classes (``classes`` and the head convs' ``filters``),
AlexeyAB's training keys (batch, max_batches, steps), optionally anchors computed from the dataset.

    python tools/make_cfg.py --cfg cfg/yolo-v3-tiny.cfg --data ../shared/data/raccoon --output raccoon.cfg
    python tools/make_cfg.py --cfg cfg/yolo-v3-tiny.cfg --classes 3 --output three.cfg --max-batches 6000
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from yolodet.training.anchors import box_sizes, kmeans_anchors
from yolodet.cfg import CfgError, parse_cfg_text
from yolodet.cfg.edit import finetune_cfg, format_anchors
from yolodet.data import DatasetError, load_dataset
from yolodet.atomic import atomic_write_bytes

log = logging.getLogger("yolodet.make_cfg")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="source cfg (e.g. a COCO cfg)")
    p.add_argument("--output", required=True, help="cfg to write")
    p.add_argument("--classes", type=int, help="class count (default: the --data dataset's)")
    p.add_argument("--data", help="dataset (.data, COCO json, VOC folder/list): class count and --anchors")
    p.add_argument("--anchors", action="store_true", help="recompute the anchors from --data (k-means on IoU)")
    p.add_argument("--batch", type=int, default=64, help="[net] batch (default: 64)")
    p.add_argument("--subdivisions", type=int, help="[net] subdivisions (default: the cfg's)")
    p.add_argument("--max-batches", type=int, help="default: max(2000 * classes, 6000)")
    p.add_argument("--width", type=int, help="network width (multiple of 32)")
    p.add_argument("--height", type=int, help="network height (multiple of 32)")
    return p


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        text = Path(args.cfg).read_text(encoding="utf-8", errors="replace")
        source = load_dataset(args.data, "train") if args.data else None
        classes = args.classes or (len(source.names) if source else None)
        if classes is None:
            raise ValueError("give --classes or --data")
        anchors = None
        if args.anchors:
            if source is None:
                raise ValueError("--anchors needs --data")
            net = parse_cfg_text(text, args.cfg)[0]
            width = args.width or net.get_int("width", 416)
            height = args.height or net.get_int("height", 416)
            yolo = next(b for b in parse_cfg_text(text, args.cfg) if b.type == "yolo")
            num = len(yolo.get_floats("anchors")) // 2
            anchors, iou = kmeans_anchors(box_sizes(source, width, height), num)
            log.info("anchors for %dx%d: %s (mean best IoU %.4f)", width, height, format_anchors(anchors), iou)
        out = finetune_cfg(text, classes, anchors=anchors, batch=args.batch, subdivisions=args.subdivisions,
                           max_batches=args.max_batches, width=args.width, height=args.height, path=args.cfg)
    except (CfgError, DatasetError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    atomic_write_bytes(args.output, out.encode())
    print(f"wrote {args.output}: {classes} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
