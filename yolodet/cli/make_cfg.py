"""``yolodet make-cfg``: a fine-tuning cfg from a (COCO) Darknet cfg: N classes (``classes`` and the head convs'
``filters``), AlexeyAB's training keys (batch, max_batches, steps), optionally anchors computed from the dataset::

    yolodet make-cfg --cfg yolo-v3-tiny --data ../shared/data/raccoon --output raccoon.cfg
    yolodet make-cfg --cfg cfg/yolo-v3-tiny.cfg --classes 3 --output three.cfg --max-batches 6000
"""

from __future__ import annotations

import argparse
import logging

from yolodet.cli.options import OptionError

log = logging.getLogger("yolodet.make_cfg")

HELP = "make a fine-tuning cfg (classes, filters, training keys, anchors) from a COCO cfg"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = __doc__, "Exit codes: 0 written; 2 bad cfg, dataset or arguments."
    p.add_argument("--cfg", required=True, help="source cfg (e.g. a COCO cfg): a path or a shipped cfg's name")
    p.add_argument("--output", required=True, help="cfg to write")
    p.add_argument("--classes", type=int, help="class count (default: the --data dataset's)")
    p.add_argument("--data", help="dataset (.data, COCO json, VOC folder/list, YAML): class count and --anchors")
    p.add_argument("--anchors", action="store_true", help="recompute the anchors from --data (k-means on IoU)")
    p.add_argument("--batch", type=int, default=64, help="[net] batch (default: 64)")
    p.add_argument("--subdivisions", type=int, help="[net] subdivisions (default: the cfg's)")
    p.add_argument("--max-batches", type=int, help="default: max(2000 * classes, 6000)")
    p.add_argument("--width", type=int, help="network width (multiple of 32)")
    p.add_argument("--height", type=int, help="network height (multiple of 32)")


def run(args: argparse.Namespace) -> int:
    from yolodet.atomic import atomic_write_bytes
    from yolodet.cfg import parse_cfg_text
    from yolodet.cfg.edit import finetune_cfg, format_anchors
    from yolodet.cfg.net import NetConfig
    from yolodet.cfg.shipped import resolve_cfg
    from yolodet.data import load_dataset
    from yolodet.training.anchors import box_sizes, kmeans_anchors

    try:
        cfg = resolve_cfg(args.cfg)
    except FileNotFoundError as exc:
        raise OptionError(f"--cfg {exc}") from None
    text = cfg.read_text(encoding="utf-8", errors="replace")
    source = load_dataset(args.data, "train") if args.data else None
    classes = args.classes or (len(source.names) if source else None)
    if classes is None:
        raise OptionError("give --classes or --data")
    anchors = None
    if args.anchors:
        if source is None:
            raise OptionError("--anchors needs --data")
        blocks = parse_cfg_text(text, str(cfg))
        net = NetConfig.from_block(blocks[0])
        width, height = args.width or net.width, args.height or net.height
        yolo = next((b for b in blocks if b.type == "yolo"), None)
        if yolo is None:
            raise OptionError(f"--anchors: {cfg} has no [yolo] section")
        num = len(yolo.get_floats("anchors")) // 2
        anchors, iou = kmeans_anchors(box_sizes(source, width, height), num)
        log.info("anchors for %dx%d: %s (mean best IoU %.4f)", width, height, format_anchors(anchors), iou)
    out = finetune_cfg(text, classes, anchors=anchors, batch=args.batch, subdivisions=args.subdivisions,
                       max_batches=args.max_batches, width=args.width, height=args.height, path=str(cfg))
    atomic_write_bytes(args.output, out.encode())
    print(f"wrote {args.output}: {classes} classes")
    return 0
