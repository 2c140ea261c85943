"""``yolodet anchors``: anchors for a dataset by k-means on IoU (Darknet's ``detector calc_anchors``), printed as
a cfg line::

    yolodet anchors --data ../shared/data/raccoon --num 6 --width 416 --height 416
"""

from __future__ import annotations

import argparse

HELP = "compute anchors for a dataset by k-means on IoU (Darknet's calc_anchors)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = __doc__, "Exit codes: 0 printed; 2 bad dataset or arguments."
    p.add_argument("--data", required=True, help="dataset (.data, COCO json, VOC folder/list, dataset YAML)")
    p.add_argument("--split", default="train", help="split to read (default: train)")
    p.add_argument("--num", type=int, default=9, help="number of anchors (default: 9)")
    p.add_argument("--width", type=int, default=416, help="network width (default: 416)")
    p.add_argument("--height", type=int, default=416, help="network height (default: 416)")
    p.add_argument("--seed", type=int, default=0, help="k-means initialisation seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    from yolodet.cfg.edit import format_anchors
    from yolodet.data import load_dataset
    from yolodet.training.anchors import box_sizes, kmeans_anchors

    sizes = box_sizes(load_dataset(args.data, args.split), args.width, args.height)
    anchors, iou = kmeans_anchors(sizes, args.num, seed=args.seed)
    print(f"# {len(sizes)} boxes, {args.width}x{args.height}, mean best IoU {iou:.4f}")
    print(f"anchors = {format_anchors(anchors)}")
    return 0
