#!/usr/bin/env python
"""COCO128 accuracy cost of the fast mode, read against the noise floor of a 128-image AP.

Prints, per preprocessing convention, the AP / AP50 of fp32 and of the fast mode (``--fast``, default the device's
``half``: bf16 on CPUs with native bf16, fp16 on CUDA), then the same two evaluated ``--seeds`` more times with an
input jitter the size of bf16's own rounding (each input value times ``1 + 2**-9 * N(0, 1)``: a quarter of a grey
level at mid-grey), the *same* jitter for both precisions in each round. The spread of the jittered fp32 APs is how
much AP on 128 images moves for perturbations nobody could see; the paired difference (fast - fp32, mean and
standard error over the seeds) is the fast mode's cost measured above that floor. A last table evaluates fp32
with the weights rounded to bf16 (the fast mode's own weights without its bf16 arithmetic), and fp32 with the
*weights* jittered instead of the inputs (each BN-folded conv weight times ``1 + 2**-9 * U(-1, 1)``, the size of
bf16's rounding of a weight): models about as close to the official weights as the bf16 model is.

Not a test. Usage: ``python bench/precision_accuracy.py [--seeds 8] [--preprocess darknet-letterbox]``
"""

from __future__ import annotations

from yolodet.openmp import set_openmp_defaults

set_openmp_defaults()  # as the tools do; must precede `import torch`

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402

from yolodet.checkpoint import load_model  # noqa: E402
from yolodet.data import read_coco  # noqa: E402
from yolodet.data.loader import default_workers  # noqa: E402
from yolodet.detector import Detector  # noqa: E402
from yolodet.evaluation import evaluate  # noqa: E402
from yolodet.optimize import (  # noqa: E402
    FrozenConv,
    InferenceModel,
    fast_precision,
    optimize_for_inference,
    resolve_precision,
)
from yolodet.postprocess import Detections  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default=str(SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg"))
    p.add_argument("--weights", default=str(SHARED / "weights" / "yolov3-tiny.weights"))
    p.add_argument("--annotations", default=str(SHARED / "data" / "coco128" / "annotations" / "instances.json"))
    p.add_argument("--preprocess", nargs="+", default=["darknet-letterbox", "darknet-resize"])
    p.add_argument("--fast", default="half", help="precision compared with fp32 (default: half, the device's)")
    p.add_argument("--seeds", type=int, default=8, help="jittered rounds per precision (default: %(default)s)")
    p.add_argument("--noise", type=float, default=2.0 ** -9,
                   help="relative jitter of the inputs, and of the weights in the last table (default: 2**-9)")
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


def run(args: argparse.Namespace, precision: str, preprocess: str, seed: int | None) -> tuple[float, float]:
    kwargs = dict(preprocess=preprocess, device=args.device, precision=precision)
    if seed is None:
        detector = Detector.from_cfg(args.cfg, args.weights, **kwargs)
    else:
        detector = JitteredDetector.from_cfg(args.cfg, args.weights, noise=args.noise, seed=seed, **kwargs)
    result = evaluate(detector, args.source, gt=args.gt, workers=args.workers, progress=False)
    return result.ap, result.ap50


class PrebuiltDetector(Detector):
    """A Detector that runs a given optimised copy (here: one with altered weights) instead of building its own."""

    def __init__(self, model, net: InferenceModel, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.net = net

    def _network(self) -> InferenceModel:
        return self.net


def run_altered_weights(args: argparse.Namespace, preprocess: str, seed: int | None) -> tuple[float, float]:
    """fp32 AP with every BN-folded conv weight rounded to bf16 as the fast mode rounds it (``seed=None``), or
    jittered by ``1 + noise * U(-1, 1)`` (``seed``: the jitter's random seed)."""
    model = load_model(args.cfg, args.weights)
    net = optimize_for_inference(model, device=args.device)
    g = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.net.layers:
            if isinstance(layer, FrozenConv):
                w = layer.weight
                if g is None:
                    w.copy_(w.bfloat16().float())
                else:
                    w.mul_(1 + args.noise * (2 * torch.rand(w.shape, generator=g) - 1).to(w.device))
    detector = PrebuiltDetector(model, net, preprocess=preprocess, device=args.device)
    result = evaluate(detector, args.source, gt=args.gt, workers=args.workers, progress=False)
    return result.ap, result.ap50


def _mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    if args.seeds < 2:
        raise SystemExit(f"--seeds must be >= 2 (a spread needs two runs), got {args.seeds}")
    fast = resolve_precision(args.fast, args.device)
    if fast == "fp32":
        raise SystemExit(f"{args.device} has no fast reduced precision ({fast_precision(args.device)}): nothing to "
                         "compare")
    args.source = read_coco(args.annotations, None)
    if args.workers is None:
        args.workers = default_workers(len(args.source.samples), 8)
    with open(args.annotations, encoding="utf-8") as f:
        args.gt = json.load(f)
    start = time.perf_counter()
    print(f"{Path(args.cfg).name} + {Path(args.weights).name} on {len(args.source.samples)} images; fast mode = "
          f"{fast}; jitter {args.noise:.2g} relative, {args.seeds} seeds; torch {torch.__version__}\n")
    print("| preprocess | metric | fp32 | fast | fast - fp32 | fp32 jittered (mean ± sd) | fast jittered "
          "(mean ± sd) | paired fast - fp32 (mean ± s.e.) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    fp32_exact = {}  # preprocess -> (AP, AP50), shared by both tables
    for preprocess in args.preprocess:
        exact = {p: run(args, p, preprocess, None) for p in ("fp32", fast)}
        fp32_exact[preprocess] = exact["fp32"]
        jittered = {p: [run(args, p, preprocess, seed) for seed in range(args.seeds)] for p in ("fp32", fast)}
        for k, metric in enumerate(("AP", "AP50")):
            a, b = exact["fp32"][k], exact[fast][k]
            ja = [r[k] for r in jittered["fp32"]]
            jb = [r[k] for r in jittered[fast]]
            diffs = [y - x for x, y in zip(ja, jb)]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5
            print(f"| {preprocess} | {metric} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {_mean_sd(ja)} | {_mean_sd(jb)} "
                  f"| {statistics.mean(diffs):+.4f} ± {se:.4f} |", flush=True)
    print(f"\n| preprocess | metric | fp32 | fp32, weights rounded to bf16 | fp32, weights jittered "
          f"({args.seeds} seeds, mean ± sd) | min | max |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for preprocess in args.preprocess:
        exact = fp32_exact[preprocess]
        rounded = run_altered_weights(args, preprocess, None)
        runs = [run_altered_weights(args, preprocess, seed) for seed in range(args.seeds)]
        for k, metric in enumerate(("AP", "AP50")):
            values = [r[k] for r in runs]
            print(f"| {preprocess} | {metric} | {exact[k]:.4f} | {rounded[k]:.4f} | {_mean_sd(values)} | "
                  f"{min(values):.4f} | {max(values):.4f} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
