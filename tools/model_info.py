#!/usr/bin/env python
"""Print a Darknet-like layer table for a cfg: per layer the type, filters/size/stride, input -> output shape
(W x H x C), parameters and GFLOPs (Darknet's BFLOPS: 2 x multiply-adds of conv/connected), then the totals.

The model is built on PyTorch's ``meta`` device (shapes only), so even large cfgs print instantly and nothing is
allocated or downloaded. A torchvision backbone section ([backbone], [stage]) is one row for the stages it runs.
"""

from __future__ import annotations

import argparse
import sys

from yolodet.cfg import CfgError
from yolodet.modeling.info import build_for_info, format_table, layer_table


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="Darknet/yolodet cfg file")
    p.add_argument("--img-size", type=int, nargs="+", metavar="S",
                   help="network input: S or W H (default: the cfg's [net] width/height)")
    return p


def main(args: argparse.Namespace) -> int:
    size = None
    if args.img_size:
        if len(args.img_size) > 2:
            print("error: --img-size takes S or W H", file=sys.stderr)
            return 2
        size = args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size)
    try:
        model = build_for_info(args.cfg, size)
    except CfgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.cfg}: {model.net.width} x {model.net.height} x {model.net.channels} input")
    print(format_table(layer_table(model)))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
