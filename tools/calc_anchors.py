#!/usr/bin/env python
"""Anchors for a dataset by k-means on IoU (Darknet's ``detector calc_anchors``), printed as a cfg line.

    python tools/calc_anchors.py --data ../shared/data/raccoon --num 6 --width 416 --height 416
"""

from __future__ import annotations

import argparse
import logging
import sys

from yolodet.training.anchors import box_sizes, kmeans_anchors
from yolodet.cfg.edit import format_anchors
from yolodet.data import DatasetError, load_dataset

log = logging.getLogger("yolodet.calc_anchors")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset (.data, COCO json, VOC folder/list)")
    p.add_argument("--split", default="train", help="split to read (default: train)")
    p.add_argument("--num", type=int, default=9, help="number of anchors (default: 9)")
    p.add_argument("--width", type=int, default=416, help="network width (default: 416)")
    p.add_argument("--height", type=int, default=416, help="network height (default: 416)")
    p.add_argument("--seed", type=int, default=0, help="k-means initialisation seed (default: 0)")
    return p


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        sizes = box_sizes(load_dataset(args.data, args.split), args.width, args.height)
        anchors, iou = kmeans_anchors(sizes, args.num, seed=args.seed)
    except (DatasetError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    print(f"# {len(sizes)} boxes, {args.width}x{args.height}, mean best IoU {iou:.4f}")
    print(f"anchors = {format_anchors(anchors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
