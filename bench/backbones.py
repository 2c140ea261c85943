#!/usr/bin/env python
"""Params, GFLOPs and CPU forward latency of every shipped cfg (torchvision-backbone and Darknet-native) at one
input size, as a markdown table for the README.

    python bench/backbones.py                    # cfg/*.cfg + ../shared/data/darknet-cfg/*.cfg, 416, 2 threads

GFLOPs are Darknet's BFLOPS (see yolodet.info). Latency: batch 1, random weights, eval mode, ``inference_mode``,
``torch.set_num_threads(--threads)``, only ``model(x)`` (no preprocessing, decode or NMS). Every model is built
first and warmed up (oneDNN builds its kernels on the first calls); then ``--rounds`` rounds each time ``--runs``
forwards of every model in turn, so a burst of load from other processes spreads over all rows instead of
spoiling one. The table gives the minimum (the least disturbed run: the number to compare) and the median. Cfgs
whose text duplicates an earlier one are listed once.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from yolodet.modeling.info import build_for_info, layer_table, total_flops, total_params

ROOT = Path(__file__).resolve().parents[1]
SHARED_CFGS = ROOT.parent / "shared" / "data" / "darknet-cfg"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cfgs", nargs="*", help="cfg files (default: cfg/*.cfg, then ../shared/data/darknet-cfg/*.cfg)")
    p.add_argument("--img-size", type=int, default=416, help="square input size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="timed forwards per cfg and round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over all cfgs (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards first (default: %(default)s)")
    return p


def default_cfgs() -> list[Path]:
    seen, cfgs = set(), []
    for path in sorted((ROOT / "cfg").glob("*.cfg")) + sorted(SHARED_CFGS.glob("*.cfg")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text not in seen:
            seen.add(text)
            cfgs.append(path)
    return cfgs


def time_forwards(model: torch.nn.Module, x: torch.Tensor, runs: int) -> list[float]:
    """Seconds per forward, ``runs`` times."""
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return times


def backbone_of(model: torch.nn.Module) -> str:
    from yolodet.modeling.blocks.backbone import BackboneBlock

    names = [layer.spec.name for layer in model.layers if isinstance(layer, BackboneBlock)]
    return ", ".join(names) or "Darknet layers"


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)  # the reference cfgs' duplicate-key warnings are not news here
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfgs = [Path(c) for c in args.cfgs] or default_cfgs()
    models, rows, times = [], [], []
    for cfg in cfgs:
        model = build_for_info(cfg, args.img_size, device="cpu").eval()
        x = torch.rand(1, model.net.channels, args.img_size, args.img_size)
        time_forwards(model, x, args.warmup)
        models.append((model, x))
        rows.append(layer_table(model))
        times.append([])
    for _ in range(args.rounds):
        for (model, x), t in zip(models, times):
            t.extend(time_forwards(model, x, args.runs))
    print(f"<!-- {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
          f"batch 1, {args.img_size}x{args.img_size}, {args.rounds} x {args.runs} runs, load average "
          f"{os.getloadavg()[0]:.1f} -->")
    print("| cfg | backbone | params (M) | GFLOPs | latency min (ms) | latency median (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for cfg, (model, _), table, t in zip(cfgs, models, rows, times):
        name = cfg.relative_to(ROOT) if cfg.is_relative_to(ROOT) else f"../shared/data/darknet-cfg/{cfg.name}"
        print(f"| `{name}` | {backbone_of(model)} | {total_params(table) / 1e6:.2f} | "
              f"{total_flops(table) / 1e9:.2f} | {1000 * min(t):.0f} | {1000 * statistics.median(t):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
