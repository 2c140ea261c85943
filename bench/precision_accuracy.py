#!/usr/bin/env python
"""COCO128 accuracy cost of the fast mode, read against the noise floor of a 128-image AP.

Prints, per preprocessing convention, the AP / AP50 of fp32 and of the fast mode (``--fast``, default the device's
``half``: bf16 on CPUs with native bf16, fp16 on CUDA), then the same two evaluated ``--seeds`` more times with an
input jitter the size of bf16's own rounding (each input value times ``1 + 2**-9 * N(0, 1)``: a quarter of a grey
level at mid-grey), the *same* jitter for both precisions in each round. The spread of the jittered fp32 APs is how
much AP on 128 images moves for perturbations nobody could see; the paired difference (fast - fp32, mean and
standard error over the seeds) is the fast mode's cost measured above that floor. A last table evaluates fp32
with the weights rounded to bf16 (the fast mode's own weights without its bf16 arithmetic), and fp32 with the
*weights* jittered instead of the inputs (each BN-folded conv weight times ``1 + e * U(-1, 1)`` for each
``--weight-noise`` e: 2**-9 is bf16's rounding of a weight, 2**-11 fp16's, 2**-13 a quarter of that): how far
AP moves for models that close to the official weights. A per-category table splits the exact fast - fp32 AP
difference into the categories it comes from (a category's AP change over the number of categories with ground
truth): on 128 images, a category with two objects weighs as much as one with 250.

For ``--fast int8`` (what ``half`` is on CPUs without native bf16) the fast mode is calibrated on ``--calibrate``
(default: the bundled sample image, the product's default) and the weight table rounds each BN-folded conv weight to
int8 per output channel as the int8 mode does in the spatial domain (the lane bound of yolodet's AVX2 kernels where
its 1x1 and strided 3x3 ones run, oneDNN's bound elsewhere; its Winograd layers round their transformed weights
instead, which this table does not model). ``--draws N`` adds a table of N *int8 draws*: the same int8 mode with
every calibrated range (each layer's low and high) times ``1 + --draw-noise * N(0, 1)``, as calibrating on other
images moves them, only less (yolov3-tiny, letterbox: one half of coco128 against the other moves a range by a
median 0.8% of its width, the bundled sample against coco128 by 2.4%; the default draw noise is 0.2%). Each draw is
an equally valid int8 model; the spread of their APs is how much the int8 cell itself depends on where its rounding
boundaries happen to fall, and their mean (± its standard error) is the int8 mode's AP shift with that luck
averaged out.

Not a test. Usage: ``python bench/precision_accuracy.py [--seeds 8] [--preprocess darknet-letterbox]``
"""

from __future__ import annotations

from yolodet.cli.openmp import set_openmp_defaults

set_openmp_defaults()  # as the tools do; must precede `import torch`

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402

from yolodet.modeling.checkpoint import load_model  # noqa: E402
from yolodet.data import read_coco  # noqa: E402
from yolodet.inference.loader import default_workers  # noqa: E402
from yolodet.inference.detector import Detector  # noqa: E402
from yolodet.evaluation import EvalResult, evaluate  # noqa: E402
from yolodet.inference.optimize import (
    FrozenConv,
    InferenceModel,
    fast_precision,
    optimize_for_inference,
    resolve_precision,
)
from yolodet.inference.calibrate import Calibration, calibrate  # noqa: E402
from yolodet.inference.frozen import fold_batchnorm  # noqa: E402
from yolodet.inference.postprocess import Detections  # noqa: E402
from yolodet.inference.direct_int8 import Int8Direct3x3  # noqa: E402
from yolodet.inference.int8_rounding import kernel_int8_weights  # noqa: E402
from yolodet.inference.pointwise_int8 import Int8Pointwise  # noqa: E402
from yolodet.inference.quantize import cpu_has_vnni, int8_layer_kind, int8_weights  # noqa: E402

from _coco128_args import add_coco128_args  # noqa: E402  (bench/, next to this script)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_coco128_args(p)
    p.add_argument("--preprocess", nargs="+", default=["darknet-letterbox", "darknet-resize"])
    p.add_argument("--fast", default="half", help="precision compared with fp32 (default: half, the device's)")
    p.add_argument("--seeds", type=int, default=8, help="jittered rounds per precision (default: %(default)s)")
    p.add_argument("--noise", type=float, default=2.0 ** -9, help="relative jitter of the inputs (default: 2**-9)")
    p.add_argument("--weight-noise", type=float, nargs="+", default=[2.0 ** -9, 2.0 ** -11, 2.0 ** -13],
                   help="relative jitters of the weights in the last table (default: 2**-9 2**-11 2**-13)")
    p.add_argument("--top", type=int, default=6, help="categories in the per-category table (default: 6)")
    p.add_argument("--calibrate", help="int8: folder of calibration images (default: the bundled sample image)")
    p.add_argument("--draws", type=int, default=0,
                   help="int8: also evaluate this many int8 draws (default 0)")
    p.add_argument("--draw-noise", type=float, default=2.0 ** -9,
                   help="relative jitter of the calibrated ranges in the int8 draws (default: 2**-9)")
    p.add_argument("--skip-weight-table", action="store_true", help="leave out the altered-weights table")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, help="image-loading processes (default: as tools/eval_coco.py)")
    return p


class JitteredDetector(Detector):
    """A Detector that multiplies every input batch by ``1 + noise * N(0, 1)`` (seeded: a round's jitter is the
    same whatever the precision, as long as the batches come in the same order, which the loader guarantees)."""

    def __init__(self, *args, noise: float, seed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noise = noise
        self.generator = torch.Generator().manual_seed(seed)

    def infer(self, batch: torch.Tensor, mappings=None, **kwargs) -> list[Detections]:
        jitter = torch.randn(batch.shape, generator=self.generator).to(batch.device)
        return super().infer(batch * (1 + self.noise * jitter), mappings, **kwargs)


def run(args: argparse.Namespace, precision: str, preprocess: str, seed: int | None) -> EvalResult:
    kwargs = dict(preprocess=preprocess, device=args.device, precision=precision, calibration=args.calibrate)
    if seed is None:
        detector = Detector.from_cfg(args.cfg, args.weights, **kwargs)
    else:
        detector = JitteredDetector.from_cfg(args.cfg, args.weights, noise=args.noise, seed=seed, **kwargs)
    return evaluate(detector, args.source, gt=args.gt, workers=args.workers, progress=False)


class PrebuiltDetector(Detector):
    """A Detector that runs a given optimised copy (here: one with altered weights) instead of building its own."""

    def __init__(self, model, net: InferenceModel, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.net = net

    def _network(self) -> InferenceModel:
        return self.net


def int8_rounded(conv: FrozenConv) -> torch.Tensor:
    """``conv``'s [O, C, k, k] weight as the int8 mode rounds it: the lane bound where yolodet's AVX2 1x1 or strided
    kernel runs it, else oneDNN's (:func:`int8_weights`; the Winograd layers' own rounding is not modelled)."""
    w = conv.weight
    if int8_layer_kind(conv, not cpu_has_vnni()) in (Int8Pointwise, Int8Direct3x3):
        codes, scale = kernel_int8_weights(w.permute(0, 2, 3, 1))
        return (codes.float() * scale.view(-1, 1, 1, 1)).permute(0, 3, 1, 2)
    codes, scale = int8_weights(w, cpu_has_vnni())
    return codes.float() * scale.view(-1, 1, 1, 1)


def run_altered_weights(args: argparse.Namespace, preprocess: str, seed: int | None = None,
                        noise: float = 0.0, fast: str = "bf16") -> tuple[float, float]:
    """fp32 (AP, AP50) with every BN-folded conv weight rounded as the fast mode rounds it (bf16, or int8 per
    output channel; ``seed=None``), or jittered by ``1 + noise * U(-1, 1)`` (``seed``: the jitter's random seed)."""
    model = load_model(args.cfg, args.weights)
    net = optimize_for_inference(model, device=args.device)
    g = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.net.layers:
            if isinstance(layer, FrozenConv):
                w = layer.weight
                if g is None and fast == "int8":
                    w.copy_(int8_rounded(layer))
                elif g is None:
                    w.copy_(w.bfloat16().float())
                else:
                    w.mul_(1 + noise * (2 * torch.rand(w.shape, generator=g) - 1).to(w.device))
    detector = PrebuiltDetector(model, net, preprocess=preprocess, device=args.device)
    result = evaluate(detector, args.source, gt=args.gt, workers=args.workers, progress=False)
    return result.ap, result.ap50


def int8_draws(args: argparse.Namespace, preprocess: str) -> list[EvalResult]:
    """``args.draws`` int8 evaluations, each with the calibration's ranges times ``1 + args.draw_noise * N(0, 1)``
    (seeded by the draw's index; the ranges are measured once, as the int8 mode measures them)."""
    model = load_model(args.cfg, args.weights)
    with torch.no_grad():
        folded = fold_batchnorm(model).to(args.device)
        base = calibrate(folded, args.calibrate, img_size=(model.net.width, model.net.height),
                         preprocess_mode=preprocess)
    results = []
    for seed in range(args.draws):
        g = torch.Generator().manual_seed(seed)
        ranges = base.ranges * (1 + args.draw_noise * torch.randn(base.ranges.shape, generator=g, dtype=torch.float64))
        ranges = torch.stack([ranges.min(1).values, ranges.max(1).values], 1)  # low <= high where a range is ~0
        cal = Calibration(ranges, base.images, base.source)
        detector = Detector(model, preprocess=preprocess, device=args.device, precision="int8", calibration=cal)
        results.append(evaluate(detector, args.source, gt=args.gt, workers=args.workers, progress=False))
    return results


def category_shares(fp32: EvalResult, fast: EvalResult, top: int) -> list[str]:
    """Markdown rows: the ``top`` categories whose AP change contributes most to ``fast.ap - fp32.ap``, then the
    rest together (a category's share: its AP change over the number of categories with ground truth, which is how
    COCOeval averages them)."""
    rows = [(a, b) for a, b in zip(fp32.per_class, fast.per_class) if a.num_gt > 0 and not math.isnan(a.ap)]
    n = len(rows)
    rows.sort(key=lambda r: -abs(r[1].ap - r[0].ap))
    preprocess = fp32.protocol.get("preprocess", "")
    out = [f"| {preprocess} | {a.name} | {a.num_gt} | {a.ap:.4f} | {b.ap:.4f} | {(b.ap - a.ap) / n:+.4f} |"
           for a, b in rows[:top]]
    if n > top:
        rest = sum(b.ap - a.ap for a, b in rows[top:]) / n
        out.append(f"| {preprocess} | the other {n - top} | | | | {rest:+.4f} |")
    return out


def _mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    if args.seeds < 2:
        raise SystemExit(f"--seeds must be >= 2 (a spread needs two runs), got {args.seeds}")
    if args.draws == 1 or args.draws < 0:
        raise SystemExit(f"--draws must be 0 or >= 2 (a spread needs two runs), got {args.draws}")
    fast = resolve_precision(args.fast, args.device)
    if fast == "fp32":
        raise SystemExit(f"{args.device} has no fast reduced precision ({fast_precision(args.device)}): nothing to "
                         "compare")
    if args.draws and fast != "int8":
        raise SystemExit(f"--draws varies an int8 calibration; the fast mode here is {fast}")
    args.source = read_coco(args.annotations, None)
    if args.workers is None:
        args.workers = default_workers(len(args.source.samples), 8)
    with open(args.annotations, encoding="utf-8") as f:
        args.gt = json.load(f)
    start = time.perf_counter()
    calibrated = f" calibrated on {args.calibrate or 'the bundled sample'}" if fast == "int8" else ""
    print(f"{Path(args.cfg).name} + {Path(args.weights).name} on {len(args.source.samples)} images; fast mode = "
          f"{fast}{calibrated}; jitter {args.noise:.2g} relative, {args.seeds} seeds; torch {torch.__version__}\n")
    print("| preprocess | metric | fp32 | fast | fast - fp32 | fp32 jittered (mean ± sd) | fast jittered "
          "(mean ± sd) | paired fast - fp32 (mean ± s.e.) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    exact = {}  # (preprocess, precision) -> EvalResult, shared by the tables
    bands = {}  # (preprocess, metric) -> sd of the jittered fp32 runs
    for preprocess in args.preprocess:
        for p in ("fp32", fast):
            exact[preprocess, p] = run(args, p, preprocess, None)
        jittered = {p: [run(args, p, preprocess, seed) for seed in range(args.seeds)] for p in ("fp32", fast)}
        for metric in ("ap", "ap50"):
            a, b = getattr(exact[preprocess, "fp32"], metric), getattr(exact[preprocess, fast], metric)
            ja = [getattr(r, metric) for r in jittered["fp32"]]
            bands[preprocess, metric] = statistics.stdev(ja)
            jb = [getattr(r, metric) for r in jittered[fast]]
            diffs = [y - x for x, y in zip(ja, jb)]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5
            print(f"| {preprocess} | {metric.upper()} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {_mean_sd(ja)} | "
                  f"{_mean_sd(jb)} | {statistics.mean(diffs):+.4f} ± {se:.4f} |", flush=True)

    if args.draws and fast == "int8":
        print(f"\n{args.draws} int8 draws (every calibrated range times 1 + {args.draw_noise:.2g} N(0, 1)) against "
              "the exact fp32 run and its jitter band (the fp32 jittered sd above):\n")
        print("| preprocess | metric | fp32 | int8 | int8 draws (mean ± sd) | draws - fp32 (min to max) | "
              "mean draw - fp32 (± s.e.) | fp32 band | draws inside the band |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for preprocess in args.preprocess:
            draws = int8_draws(args, preprocess)
            for metric in ("ap", "ap50"):
                ref, single = (getattr(exact[preprocess, p], metric) for p in ("fp32", fast))
                values = [getattr(r, metric) for r in draws]
                band = bands[preprocess, metric]
                mean = statistics.mean(values)
                se = statistics.stdev(values) / len(values) ** 0.5
                inside = sum(abs(v - ref) <= band for v in values)
                print(f"| {preprocess} | {metric.upper()} | {ref:.4f} | {single:.4f} | {_mean_sd(values)} | "
                      f"{min(values) - ref:+.4f} to {max(values) - ref:+.4f} | {mean - ref:+.4f} ± {se:.4f} | "
                      f"±{band:.4f} | {inside} of {len(values)} |", flush=True)

    print(f"\nWhere fast - fp32 AP comes from: the {args.top} categories that move it most (a category's AP change "
          "over the number of categories with ground truth; they add up to the total).\n")
    print("| preprocess | category | objects | fp32 AP | fast AP | share of fast - fp32 AP |")
    print("|---|---|---:|---:|---:|---:|")
    for preprocess in args.preprocess:
        for row in category_shares(exact[preprocess, "fp32"], exact[preprocess, fast], args.top):
            print(row, flush=True)

    if args.skip_weight_table:
        print(f"\n{time.perf_counter() - start:.0f} s")
        return
    print("\n| preprocess | fp32 model | AP | AP - fp32 AP | AP50 | AP50 - fp32 AP50 |")
    print("|---|---|---:|---:|---:|---:|")
    for preprocess in args.preprocess:
        ref = exact[preprocess, "fp32"]
        print(f"| {preprocess} | official weights | {ref.ap:.4f} | | {ref.ap50:.4f} | |")
        ap, ap50 = run_altered_weights(args, preprocess, fast=fast)
        rounded = "int8 per channel" if fast == "int8" else "bf16"
        print(f"| {preprocess} | weights rounded to {rounded} | {ap:.4f} | {ap - ref.ap:+.4f} | {ap50:.4f} | "
              f"{ap50 - ref.ap50:+.4f} |", flush=True)
        for noise in args.weight_noise:
            runs = [run_altered_weights(args, preprocess, seed, noise) for seed in range(args.seeds)]
            cells = []
            for values, base in (([r[0] for r in runs], ref.ap), ([r[1] for r in runs], ref.ap50)):
                cells += [f"{_mean_sd(values)} ({min(values):.4f} to {max(values):.4f})",
                          f"{min(values) - base:+.4f} to {max(values) - base:+.4f}"]
            print(f"| {preprocess} | weights x (1 + 2**{math.log2(noise):.0f} U(-1, 1)), {args.seeds} seeds | "
                  + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
