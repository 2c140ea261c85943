"""``yolodet info``: Darknet's layer table for a cfg: per layer the type, filters/size/stride, input -> output
shape (W x H x C), parameters and GFLOPs (Darknet's BFLOPS: 2 x multiply-adds of conv/connected), then the totals.
The model is built on PyTorch's ``meta`` device (shapes only), so even large cfgs print instantly and nothing is
allocated or downloaded. A torchvision backbone section ([backbone], [stage]) is one row for the stages it runs.
"""

from __future__ import annotations

import argparse

from yolodet.cli.options import OptionError, add_img_size_option, img_size

HELP = "print Darknet's layer table of a cfg (shapes, parameters, BFLOPs), instantly"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = __doc__, "Exit codes: 0 printed; 2 bad cfg or arguments."
    p.add_argument("--cfg", required=True, help="Darknet/yolodet cfg: a path or a shipped cfg's name")
    add_img_size_option(p)


def run(args: argparse.Namespace) -> int:
    from yolodet.cfg.shipped import resolve_cfg
    from yolodet.modeling.info import build_for_info, format_table, layer_table

    try:
        cfg = resolve_cfg(args.cfg)
    except FileNotFoundError as exc:
        raise OptionError(f"--cfg {exc}") from None
    size = img_size(args.img_size)
    if isinstance(size, tuple) and len(size) > 2:
        raise OptionError("--img-size takes S or W H")
    model = build_for_info(cfg, size)
    print(f"{args.cfg}: {model.net.width} x {model.net.height} x {model.net.channels} input")
    print(format_table(layer_table(model)))
    return 0
