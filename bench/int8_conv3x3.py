#!/usr/bin/env python
"""Where int8 can and cannot beat fp32 on a CPU: one 3x3 convolution (+ leaky) at a time, the shapes of
yolov3 and yolov3-tiny at 416, batch 1 (and yolov3's 1x1 shapes in a second table).

Prints per layer (ms, median of ``--runs`` after warm-up; random weights and inputs):

- **fp32 direct**: yolodet's :class:`~yolodet.inference.frozen.FrozenConv` with Winograd off (oneDNN, leaky fused);
- **fp32 Winograd**: the same layer by :class:`~yolodet.inference.winograd.Winograd3x3`, F(4x4, 3x3), then leaky
  (what the fp32 CPU path runs where ``winograd_pays``; measured on every shape here);
- **int8 direct**: yolodet's :class:`~yolodet.inference.quantize.QuantConv` (oneDNN's int8 kernel, uint8 codes in,
  then leaky in fp32), the int8 fast mode's layer;
- **int8 Winograd products**: only the multiply-adds an int8 Winograd would still need (36 products per 4x4 tile
  for F(4x4, 3x3), 16 per 2x2 tile for F(2x2, 3x3)) on uint8/int8 codes, through the int8 kernels PyTorch exposes:
  oneDNN's grouped 1x1 int8 convolution (weights packed once, the tiles as its pixels, as the fp32 Winograd path
  does it) and ``torch._int_mm`` (oneDNN's s8s8s32 GEMM, one per tile position; it repacks the weights on every
  call);
- **transforms**: what fp32 Winograd spends outside its products (its time minus that of its 36 fp32 products
  alone): the input and output transforms an int8 Winograd needs as well (plus quantising the transformed input);
- **int8 F(4x4) floor**: the faster F(4x4, 3x3) int8 products plus those transforms, a *lower bound* for an int8
  Winograd built from these kernels: where it is not below int8 direct, no such int8 Winograd is faster;
- **int8 Winograd F(2x2)** and **F(4x4)**: yolodet's own AVX2 kernels
  (:class:`~yolodet.inference.winograd_int8.Int8Winograd`, 8-bit F(2x2, 3x3) and F(4x4, 3x3) with 16-bit
  transformed operands; transforms and leaky included), warm and **cold** (the caches flushed before every call, as
  in a network, where each layer's weights come from memory: F(4x4)'s are 4.5x larger), and which of the two the
  int8 fast mode picks on this layer without VNNI (:func:`~yolodet.inference.winograd_int8.f4_pays`; oneDNN's
  direct int8 below 32 input channels), its cold time (int8 direct: warm) over the faster fp32 column.

A second table times yolo-v3's 1x1 shapes (+ leaky): fp32 direct, oneDNN's int8 (:class:`QuantConv`, leaky after
it in fp32) and yolodet's AVX2 1x1 kernel (:class:`~yolodet.inference.pointwise_int8.Int8Pointwise`, leaky fused),
warm and cold, what the int8 fast mode runs on them without VNNI. A third times yolo-v3's five stride-2 3x3 shapes
the same way against yolodet's AVX2 strided kernel (:class:`~yolodet.inference.direct_int8.Int8Direct3x3`).

Run it twice: as is, and with ``ONEDNN_MAX_CPU_ISA=AVX2`` in the environment, which holds oneDNN to what an
AVX2-only CPU runs (no VNNI: int8 multiply-adds by ``vpmaddubsw`` + ``vpmaddwd``). The header prints the ISA.

Not a test. Usage: ``python bench/int8_conv3x3.py [--runs 30] [--threads 2]``
"""

from __future__ import annotations

from yolodet.cli.openmp import set_openmp_defaults

set_openmp_defaults()  # as the tools do; must precede `import torch`

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from yolodet.inference.direct_int8 import Int8Direct3x3  # noqa: E402
from yolodet.inference.frozen import FrozenConv, fold_batchnorm  # noqa: E402
from yolodet.inference.memory import keep_freed_memory  # noqa: E402
from yolodet.inference.pointwise_int8 import Int8Pointwise  # noqa: E402
from yolodet.inference.quantize import QuantConv, cpu_has_vnni, int8_available  # noqa: E402
from yolodet.inference.winograd import Winograd3x3, winograd_pays  # noqa: E402
from yolodet.inference.winograd_int8 import Int8Winograd, f4_pays, int8_winograd_available  # noqa: E402
from yolodet.modeling.model import Darknet  # noqa: E402

# (in channels, out channels, map side): every 3x3 stride-1 shape of yolov3 (and yolov3-tiny's 16 -> 32 and
# 384 -> 256) at 416.
SHAPES = ((16, 32, 208), (32, 64, 208), (64, 128, 104), (128, 256, 52), (256, 512, 26), (384, 256, 26), (512, 1024, 13))
# The same for its 1x1 convolutions (the residual blocks' and the heads' widest).
SHAPES_1X1 = ((64, 32, 208), (128, 64, 104), (256, 128, 52), (384, 128, 52), (512, 256, 26), (768, 256, 26),
              (1024, 512, 13))
# yolo-v3's stride-2 3x3 shapes at 416 (in channels, out channels, input map side).
SHAPES_STRIDED = ((32, 64, 416), (64, 128, 208), (128, 256, 104), (256, 512, 52), (512, 1024, 26))
# The input codes' (scale, zero point) of every int8 layer timed here: a zero point like the ones calibration gives
# after leaky (20-60 on yolov3-tiny and yolo-v3). oneDNN pays for a non-zero one; yolodet's kernels subtract it once
# per output channel.
CODES_QP = (0.02, 25)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=30, help="timed calls per column (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    return p


def median_ms(fn: Callable[[], object], runs: int, before: Callable[[], object] | None = None) -> float:
    """Median ms of ``fn()`` over ``runs`` calls after 3 untimed ones; ``before()``, if given, runs untimed before
    each call."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def direct_conv(c: int, o: int, side: int, size: int = 3, stride: int = 1) -> FrozenConv:
    """One BN-folded leaky size x size conv, C -> O at side x side (the input), random weights (as a cfg would build
    it), Winograd off."""
    cfg = (f"[net]\nwidth={side}\nheight={side}\nchannels={c}\n\n[convolutional]\nbatch_normalize=1\n"
           f"filters={o}\nsize={size}\nstride={stride}\npad=1\nactivation=leaky\n")
    torch.manual_seed(0)
    model = Darknet.from_cfg_text(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return fold_batchnorm(model.eval(), winograd=False).layers[0]


def int8_products(c: int, o: int, side: int, tile: int, runs: int) -> tuple[float, float]:
    """(grouped oneDNN int8 conv, torch._int_mm) ms for F(tile x tile, 3x3)'s products alone."""
    positions = (tile + 2) ** 2
    tiles = (-(-side // tile)) ** 2
    w = torch.randint(-127, 128, (positions * o, c, 1, 1), dtype=torch.int8)
    scales, zeros = torch.full((positions * o,), 1e-3), torch.zeros(positions * o, dtype=torch.int64)
    bias = torch.zeros(positions * o)
    pixels = torch.randint(0, 256, (1, positions * c, tiles, 1), dtype=torch.uint8)
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    args = ([1, 1], [0, 0], [1, 1], positions)
    packed = torch.ops.onednn.qconv_prepack(w, scales, 0.05, 64, *args, list(pixels.shape))
    grouped = median_ms(lambda: torch.ops.onednn.qconv2d_pointwise(
        pixels, 0.05, 64, packed, scales, zeros, bias, *args, 1.0, 0, torch.float32, "none", [], ""), runs)
    a = torch.randint(-64, 64, (positions, tiles, c), dtype=torch.int8)
    b = torch.randint(-127, 128, (positions, c, o), dtype=torch.int8)
    gemms = median_ms(lambda: [torch._int_mm(a[p], b[p]) for p in range(positions)], runs)
    return grouped, gemms


def fp32_products(wino: Winograd3x3, side: int, runs: int) -> float:
    """ms of F(4x4, 3x3)'s 36 fp32 products alone, as the fp32 Winograd path runs them (:meth:`Winograd3x3.products`,
    a grouped 1x1 oneDNN convolution), on random transformed tiles."""
    tiles = (-(-side // 4)) ** 2
    v = torch.rand(tiles, 36, wino.weight.shape[1])
    return median_ms(lambda: wino.products(v), runs)


def kernel_table(what: str, label: str, shapes, stride: int, kernel, runs: int, flush: torch.Tensor) -> None:
    """One table of leaky convolutions (1x1, or 3x3 with ``stride``): fp32 direct, oneDNN's int8 (:class:`QuantConv`,
    leaky after it in fp32) and yolodet's AVX2 ``kernel`` layer, the int8 ones warm and cold."""
    print(f"\n| C -> O @ {what} | GMAC | fp32 direct | int8 oneDNN | int8 oneDNN cold | yolodet {label} "
          f"| yolodet {label} cold | yolodet / oneDNN, cold |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c, o, side in shapes:
        x = torch.rand(1, c, side, side).contiguous(memory_format=torch.channels_last)
        codes = torch.randint(0, 256, x.shape, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
        direct = direct_conv(c, o, side, size=1 if stride == 1 else 3, stride=stride)
        qconv = QuantConv(direct, CODES_QP)
        own = kernel(direct, CODES_QP) if kernel.applies(direct) else None
        t_fp32 = median_ms(lambda: direct(x), runs)
        t_q = [median_ms(lambda: qconv(codes), runs, before) for before in (None, lambda: flush.add_(1))]
        t_own = ([median_ms(lambda: own(codes), runs, before) for before in (None, lambda: flush.add_(1))]
                 if own is not None else [float("nan")] * 2)
        gmac = c * o * (1 if stride == 1 else 9) * (-(-side // stride)) ** 2 / 1e9
        print(f"| {c} -> {o} @ {side} | {gmac:.2f} | {t_fp32:.2f} | {t_q[0]:.2f} | {t_q[1]:.2f} | "
              f"{t_own[0]:.2f} | {t_own[1]:.2f} | {t_own[1] / t_q[1]:.2f} |", flush=True)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as optimize_for_inference does: a layer's fresh outputs reuse freed pages, not new ones
    if not int8_available():
        print("this PyTorch build has no oneDNN int8 convolution")
        return 1
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    print(f"oneDNN ISA cap: {isa}; int8 with VNNI: {cpu_has_vnni()}; "
          f"{args.threads} threads; batch 1\n")
    print("| C -> O @ map | GMAC | Winograd pays | fp32 direct | fp32 Winograd | int8 direct | int8 / best fp32 "
          "| F(4x4) products, grouped conv | F(4x4) products, _int_mm | F(2x2) products, grouped conv "
          "| F(2x2) products, _int_mm | transforms | int8 F(4x4) floor | yolodet F(2x2) | F(2x2) cold | yolodet F(4x4) "
          "| F(4x4) cold | picked | picked cold / best fp32 |")
    print("|---|---:|:-:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|")
    flush = torch.zeros(64 << 18)  # 64 MB, more than any last-level cache a 2-core machine gets
    with torch.inference_mode():
        for c, o, side in SHAPES:
            x = torch.rand(1, c, side, side).contiguous(memory_format=torch.channels_last)
            direct = direct_conv(c, o, side)
            wino = Winograd3x3(direct.weight, direct.bias)  # on every shape, also where winograd_pays says no
            qconv = QuantConv(direct, CODES_QP)
            codes = torch.randint(0, 256, x.shape, dtype=torch.uint8)
            codes = codes.contiguous(memory_format=torch.channels_last)
            t_direct = median_ms(lambda: direct(x), args.runs)
            t_wino = median_ms(lambda: F.leaky_relu_(wino(x), 0.1), args.runs)
            t_int8 = median_ms(lambda: qconv(codes), args.runs)
            f4 = int8_products(c, o, side, 4, args.runs)
            f2 = int8_products(c, o, side, 2, args.runs)
            transforms = t_wino - fp32_products(wino, side, args.runs)
            own = {}  # tile -> (warm, cold) ms
            for tile in (2, 4):
                layer = Int8Winograd(direct, CODES_QP, tile=tile) if int8_winograd_available() else None
                own[tile] = ((median_ms(lambda: layer(codes), args.runs),
                              median_ms(lambda: layer(codes), args.runs, before=lambda: flush.add_(1)))
                             if layer is not None else (float("nan"), float("nan")))
            picked = (0 if not Int8Winograd.applies(direct)  # too few input channels: oneDNN's direct int8
                      else 4 if f4_pays(o, c, side, side) else 2)
            gmac = 9 * c * o * side * side / 1e9
            pays = "yes" if winograd_pays(c, o, side, side) else "no"
            print(f"| {c} -> {o} @ {side} | {gmac:.2f} | {pays} | {t_direct:.2f} | {t_wino:.2f} | {t_int8:.2f} | "
                  f"{t_int8 / min(t_direct, t_wino):.2f} | {f4[0]:.2f} | {f4[1]:.2f} | {f2[0]:.2f} | {f2[1]:.2f} | "
                  f"{transforms:.2f} | {min(f4) + transforms:.2f} | {own[2][0]:.2f} | {own[2][1]:.2f} | "
                  f"{own[4][0]:.2f} | {own[4][1]:.2f} | {f'F({picked}x{picked})' if picked else 'int8 direct'} | "
                  f"{(own[picked][1] if picked else t_int8) / min(t_direct, t_wino):.2f} |",
                  flush=True)
        kernel_table("map (1x1)", "1x1", SHAPES_1X1, 1, Int8Pointwise, args.runs, flush)
        kernel_table("input map (3x3, stride 2)", "strided", SHAPES_STRIDED, 2, Int8Direct3x3, args.runs, flush)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
