#!/usr/bin/env python
"""Fine-tune yolo-v3-tiny from the official COCO weights on the raccoon dataset (one class, not in COCO) for a
fixed CPU time budget; report training img/s and validation COCO AP/AP50 (pycocotools) before and after.

    nohup python bench/finetune_raccoon.py > bench-raccoon.log 2>&1 &

Any cfg with a trainable head works the same way, e.g. YOLOv2-tiny (``[region]``) from the first 13 layers of the
official yolov3-tiny weights (its backbone, ``yolodet partial``)::

    yolodet partial --cfg ../shared/data/darknet-cfg/yolov3-tiny.cfg --weights ../shared/weights/yolov3-tiny.weights \
        --layers 13 --output runs/yolov3-tiny.conv.13
    python bench/finetune_raccoon.py --cfg ../shared/data/darknet-zoo/yolov2-tiny.cfg \
        --weights runs/yolov3-tiny.conv.13 --output runs/bench-raccoon-v2 --expected-img-s 9

Steps: a 1-class cfg from ``yolov3-tiny.cfg`` (``yolodet.cfg_tools.finetune_cfg``), the COCO weights loaded into
it (all but the two head convs), validation before training, ``tools/train.py`` in a subprocess with
``--time-limit``, validation of the last model after. The run length (``max_batches``) is sized from
``--expected-img-s`` so the learning-rate steps (80%, 90%) fall inside the budget; the time limit stops the run
in any case. Training img/s = images trained / training seconds (validation excluded), from the checkpoint.
Results: ``OUTPUT/bench.json`` and ``OUTPUT/bench.md`` (with the per-epoch curve from ``results.csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from yolodet.cfg.edit import finetune_cfg
from yolodet.modeling.checkpoint import load_checkpoint, load_model
from yolodet.data import load_dataset
from yolodet.evaluation import evaluate
from yolodet.modeling.model import Darknet
from yolodet.training.transfer import init_head_priors, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default=str(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg"))
    p.add_argument("--weights", default=str(SHARED / "weights" / "yolov3-tiny.weights"))
    p.add_argument("--data", default=str(SHARED / "data" / "raccoon"))
    p.add_argument("--output", default="runs/bench-raccoon")
    p.add_argument("--minutes", type=float, default=25.0, help="training time budget (default: 25)")
    p.add_argument("--expected-img-s", type=float, default=11.0, help="sizes max_batches to the budget")
    p.add_argument("--max-batches", type=int, help="optimiser steps (default: sized from the two above)")
    p.add_argument("--img-size", type=int, default=320, help="training base size (multi-scale around it)")
    p.add_argument("--val-img-size", type=int, default=416, help="validation size (the cfg's, default 416)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--freeze", type=int, default=8, help="layers not trained (default: 8, convs 0-6)")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--burn-in", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--eval-interval", type=int, default=2)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more tools/train.py arguments")
    return p


def _evaluate(model: Darknet, source, size: int) -> dict[str, float]:
    result = evaluate(model, source, img_size=size, batch_size=8, workers=0, device="cpu", progress=False)
    return {"ap": round(result.ap, 4), "ap50": round(result.ap50, 4)}


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / f"raccoon-{Path(args.cfg).stem}.cfg"
    cfg.write_text(finetune_cfg(Path(args.cfg).read_text(), 1, batch=args.batch_size, subdivisions=1, path=args.cfg))
    val = load_dataset(args.data, "valid")

    torch.manual_seed(0)  # train.py seeds the same way: this is the model it starts from
    model = Darknet.from_cfg(cfg)
    init_head_priors(model, load_pretrained(model, args.weights).skipped_layers)
    before = _evaluate(model, val, args.val_img_size)
    print(f"before: {before}", flush=True)

    budget = args.minutes * 60
    max_batches = args.max_batches or int(budget * args.expected_img_s / args.batch_size)
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "--cfg", str(cfg), "--data", args.data,
           "--weights", args.weights, "--output", str(out / "run"), "--img-size", str(args.img_size),
           "--val-img-size", str(args.val_img_size), "--batch-size", str(args.batch_size), "--subdivisions", "1",
           "--max-batches", str(max_batches), "--time-limit", str(budget), "--lr", str(args.lr),
           "--burn-in", str(args.burn_in), "--freeze", str(args.freeze), "--threads", str(args.threads),
           "--workers", str(args.workers), "--eval-interval", str(args.eval_interval), "--cache", "--no-progress",
           *args.extra]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        print(f"training failed (rc {rc})")
        return rc

    ckpt = load_checkpoint(out / "run" / "last.pt")
    state = ckpt["run_state"]
    images = state["step"] * args.batch_size
    after = _evaluate(load_model(None, out / "run" / "last.pt"), val, args.val_img_size)
    with open(out / "run" / "results.csv") as f:
        curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
                   f"{torch.__version__}",
        "budget_s": budget, "train_seconds": round(state["train_seconds"], 1), "wall_seconds": round(wall, 1),
        "steps": state["step"], "max_batches": max_batches, "images": images,
        "train_img_per_s": round(images / state["train_seconds"], 2),
        "before": before, "after": after, "best_val_ap50_during_training": round(state["best_fitness"], 4),
        "settings": {k: v for k, v in vars(args).items() if k not in ("cfg", "weights", "data", "output")},
    }
    (out / "bench.json").write_text(json.dumps({**report, "curve": curve}, indent=1))
    def num(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.4f}"

    rows = [f"| {int(r['epoch'])} | {int(r['step'])} | {r['total']:.3f} | {r['img_per_s']:.2f} | {num(r['ap'])} | "
            f"{num(r['ap50'])} |" for r in curve]
    md = "\n".join([
        f"Fine-tuning {Path(args.cfg).stem} from {Path(args.weights).name} on raccoon: "
        f"{report['train_seconds']:.0f} s of training, "
        f"{report['steps']} steps of {args.batch_size}, **{report['train_img_per_s']} img/s**",
        "", "| | val AP | val AP50 |", "|---|---|---|",
        f"| before (start weights, fresh 1-class heads) | {before['ap']:.4f} | {before['ap50']:.4f} |",
        f"| after | {after['ap']:.4f} | {after['ap50']:.4f} |", "",
        "| epoch | step | train loss | img/s | val AP | val AP50 |", "|---|---|---|---|---|---|", *rows, ""])
    (out / "bench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
