"""``yolodet partial``: the first N layers of a model's weights as a Darknet ``.weights`` file, as ``darknet
partial cfg weights out N`` writes it (``seen`` reset to 0): the usual start for training another head, or another
cfg that shares the first layers::

    yolodet partial --cfg yolo-v3-tiny --weights weights/yolo-v3-tiny.weights --layers 15   # yolo-v3-tiny.conv.15
    yolodet partial --cfg yolo-v3-tiny --layers 13 --output yolov3-tiny.conv.13             # YOLOv2-tiny's backbone
    yolodet train --cfg yolov2-tiny-raccoon.cfg --data DATA --weights yolov3-tiny.conv.13

The layer count N is Darknet's: layers ``0..N-1`` of the cfg, weighted or not (``yolodet info`` numbers them).
``yolodet train --weights`` and ``yolodet.training.load_pretrained`` read such a file into any cfg whose first
weighted layers have the same shapes; detect and val refuse it unless ``--allow-partial``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from yolodet.cli.options import OptionError, add_model_options, model_files

HELP = "write the first N layers of a model's weights (Darknet's `partial`: *.conv.N files)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = __doc__, "Exit codes: 0 written; 2 bad cfg, weights or arguments."
    add_model_options(p)
    p.add_argument("--layers", type=int, required=True, help="N: keep layers 0..N-1 (Darknet's layer indices)")
    p.add_argument("--output", help="file to write (default: <weights stem>.conv.N beside the weights)")


def run(args: argparse.Namespace) -> int:
    from yolodet.modeling.checkpoint import load_model
    from yolodet.modeling.weights import WeightsHeader, save_darknet_weights

    cfg, weights = model_files(args.cfg, args.weights)
    model = load_model(cfg, weights)
    count = len(model.layers)
    if not 1 <= args.layers <= count:
        raise OptionError(f"--layers {args.layers}: the cfg has layers 0..{count - 1}, so N is in 1..{count}")
    out = Path(args.output) if args.output else weights.with_name(f"{weights.stem}.conv.{args.layers}")
    if out.resolve() == weights.resolve():
        raise OptionError(f"--output {out}: is the --weights file itself")
    save_darknet_weights(model, out, header=WeightsHeader(seen=0), cutoff=args.layers)
    print(f"wrote {out}: layers 0..{args.layers - 1} of {count} ({out.stat().st_size} bytes)")
    return 0
