#!/usr/bin/env python
"""Inference speed of yolodet against ONNX Runtime, OpenVINO and OpenCV DNN (and the ``pytorchyolo`` package when
installed), as markdown tables for the README.

    python bench/bench_infer.py                  # the four YOLOs at 416, batch 1 and 8, 2 threads
    python bench/bench_infer.py --models yolo-v3-tiny --batches 1 --rounds 5 --e2e-runs 0   # a short run

What is timed: the network forward only (a float32 [B, 3, 416, 416] blob in, raw head outputs out), warm, the
median milliseconds per image. yolodet runs ``optimize_for_inference`` (BN folded, conv+activation fused by oneDNN,
channels_last) in fp32 and in its fast mode (``precision="half"``: fp16 on CUDA, bf16 on CPUs with native bf16,
int8 on other CPUs, calibrated on ``--calibrate`` or the bundled sample image -- the table says which). OpenCV runs ``readNetFromDarknet`` with ``DNN_BACKEND_OPENCV`` on the CPU
in fp32, on the *same* weights: yolo-v3-tiny uses the official weights when ``../shared/weights`` has them, other
models random weights that yolodet writes to a temporary ``.weights`` file for every peer to load. The peers are
timed in turn, one forward each per round, so load from other processes hits all of them alike. Both libraries
get ``--threads`` threads; torch's OpenMP threads spin only briefly before sleeping (``OMP_WAIT_POLICY=PASSIVE``,
``GOMP_SPINCOUNT=10000``, set before torch loads as ``tools/detect.py`` does: :mod:`yolodet.openmp`), so they do
not spin on the cores OpenCV is using.

ONNX Runtime and OpenVINO (each when installed: ``pip install yolodet[onnx] openvino``) run the graph that
``yolodet.export.to_onnx`` writes (raw head outputs, fp32, dynamic axes; OpenVINO reshapes it to the timed
batch and size); ORT has no bf16 convolutions on the CPU, so its fast-mode cell repeats fp32, while OpenVINO's
fast mode is ``INFERENCE_PRECISION_HINT=bf16`` when yolodet's is bf16 (f32 is forced in the fp32 row: OpenVINO
would pick bf16 by itself on CPUs with AVX-512 BF16 / AMX). The ratio columns are peer ms / yolodet ms (above 1:
yolodet is faster).

The end-to-end table times, in the same interleaved rounds, one RGB uint8 image in and its boxes out (original
pixels): yolodet's ``Detector.predict`` on the torch backend and on the ONNX Runtime backend, and the
``--end2end`` ONNX graph (network + decode + NMS in the graph) run by ORT and by OpenVINO after yolodet's own
preprocessing, with the boxes mapped back.

The last table times ``tools/detect.py`` end to end on the bundled sample image (process start to exit: imports,
cfg, weights, optimisation, preprocessing, forward, NMS, drawing and writing the outputs).
"""

from __future__ import annotations

import os

from yolodet.cli.openmp import set_openmp_defaults

set_openmp_defaults()  # as tools/detect.py does; must precede `import torch`

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _onnx_peers import (  # noqa: E402  (bench/, next to this script)
    cpu_flags,
    installed,
    openvino_peer,
    openvino_version,
    ort_peer,
    ort_version,
)
from yolodet.data.images import read_image  # noqa: E402
from yolodet.inference.detector import Detector  # noqa: E402
from yolodet.inference.preprocess import preprocess  # noqa: E402
from yolodet.modeling.blocks.conv import ConvBlock  # noqa: E402
from yolodet.modeling.model import Darknet  # noqa: E402
from yolodet.inference.optimize import cpu_has_native_bf16, optimize_for_inference, resolve_precision  # noqa: E402
from yolodet.inference.winograd import transform_kernels  # noqa: E402
from yolodet.modeling.weights import load_darknet_weights, save_darknet_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = {"yolo-v3-tiny": ROOT.parent / "shared" / "weights" / "yolov3-tiny.weights"}
SAMPLE = ROOT / "yolodet" / "assets" / "zebras.jpg"
MODELS = ("yolo-v3-tiny", "yolo-v4-tiny", "yolo-v3", "yolo-v4")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", "--cfgs", dest="cfgs", nargs="+", default=list(MODELS),
                   help="shipped cfg names (cfg/<name>.cfg) or cfg files (default: %(default)s)")
    p.add_argument("--img-size", type=int, default=416, help="square input size (default: %(default)s)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    p.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="timing budget per (model, batch) row group; rounds are added until it is spent")
    p.add_argument("--min-rounds", type=int, default=7, help="at least this many timed forwards per peer")
    p.add_argument("--rounds", type=int, help="exactly this many timed rounds (overrides --seconds/--min-rounds)")
    p.add_argument("--calibrate", help="int8 fast mode: folder of calibration images (default: the bundled sample)")
    p.add_argument("--fast", default="half", choices=("half", "bf16", "fp16", "int8"),
                   help="the fast mode timed next to fp32 (default: half = the device's fast mode; bf16 forces "
                        "bf16 even where it is emulated)")
    p.add_argument("--e2e-runs", type=int, default=5, help="tools/detect.py runs per model (0: skip)")
    p.add_argument("--no-opencv", action="store_true", help="leave OpenCV DNN out")
    p.add_argument("--no-onnxruntime", action="store_true", help="leave ONNX Runtime out")
    p.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out")
    p.add_argument("--no-image-rows", action="store_true", help="skip the image-in, boxes-out table")
    return p


def random_weights(model: Darknet, seed: int = 0) -> Darknet:
    """Random conv weights and non-trivial BN statistics, scaled so activations stay O(1) through deep nets; the
    head convs get a bias of -4 so that, as with trained weights, few boxes pass the threshold (else drawing and
    writing 10^5 random boxes would dominate the end-to-end time)."""
    g = torch.Generator().manual_seed(seed)
    heads = {h.layer - 1 for h in model.heads}
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            if not isinstance(layer, ConvBlock):
                continue
            w = layer.conv.weight
            w.copy_(torch.randn(w.shape, generator=g) * w[0].numel() ** -0.5)
            if layer.bn is None:
                layer.conv.bias.copy_(torch.randn(w.shape[0], generator=g) * 0.1 - (4.0 if index in heads else 0))
            else:
                n = layer.bn.num_features
                layer.bn.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
                layer.bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
                layer.bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                layer.bn.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
    return model


def weights_file(cfg: Path, tmp: Path) -> tuple[Path, str]:
    """The .weights every peer loads for ``cfg`` and where they come from."""
    official = OFFICIAL.get(cfg.stem)
    if official is not None and official.is_file():
        return official, "official"
    path = tmp / f"{cfg.stem}.weights"
    save_darknet_weights(random_weights(Darknet.from_cfg(cfg)), path)
    return path, "random"


def opencv_peer(cfg: Path, weights: Path, model: Darknet) -> Callable[[np.ndarray], list[np.ndarray]]:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = [f"conv_{h.layer - 1}" for h in model.heads]  # the raw conv outputs, as yolodet returns them

    def run(blob: np.ndarray) -> list[np.ndarray]:
        net.setInput(blob)
        return net.forward(names)
    return run


def pytorchyolo_peer(cfg: Path, weights: Path, notes: list[str]) -> Callable[[np.ndarray], object] | None:
    """The pytorchyolo package's model of ``cfg`` + ``weights``; None (and a note why) when it cannot be used."""
    try:
        from pytorchyolo.models import load_model  # type: ignore[import-not-found]
    except ImportError:
        return None
    except Exception as exc:  # installed but broken, e.g. pytorchyolo 1.8's imgaug under NumPy 2
        notes.append(f"pytorchyolo is installed but does not import: {type(exc).__name__}: {exc}")
        return None
    model = load_model(str(cfg), str(weights)).to("cpu").eval()

    def run(blob: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(blob))
    return run


def time_interleaved(peers: dict[str, Callable[[], object]], seconds: float, min_rounds: int) -> dict[str, float]:
    """Median seconds per call of every peer, timed in turn (one call each per round)."""
    times: dict[str, list[float]] = {name: [] for name in peers}
    for fn in peers.values():  # warm-up: oneDNN/OpenCV build their kernels and caches on the first calls
        fn()
        fn()
    start = time.perf_counter()
    while True:
        for name, fn in peers.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds = len(next(iter(times.values())))
        if rounds >= min_rounds and time.perf_counter() - start >= seconds:
            break
    return {name: statistics.median(v) for name, v in times.items()}


def max_rel_diff(a: list, b: list) -> float:
    """max |a - b| / max |b| over the heads."""
    out = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        out = max(out, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-12)))
    return out


def e2e_seconds(cfg: Path, weights: Path, extra: list[str], runs: int, threads: int) -> float:
    """Median wall time of ``tools/detect.py`` on the sample image, process start to exit."""
    times = []
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(ROOT / "tools" / "detect.py"), str(SAMPLE), "--cfg", str(cfg), "--weights",
               str(weights), "--output", out, "--quiet", "--threads", str(threads), *extra]
        for _ in range(runs):
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr}")
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def onnx_files(model: Darknet, tmp: Path, name: str) -> tuple[Path, Path]:
    """The raw-head and the end-to-end ONNX graphs of ``model`` (dynamic axes), as ``yolodet export`` writes
    them."""
    from yolodet.export import to_onnx
    raw = to_onnx(model, tmp / f"{name}.onnx", dynamic=True)
    e2e = to_onnx(model, tmp / f"{name}-end2end.onnx", dynamic=True, end2end=True, conf_thres=0.25,
                  nms_thres=0.45, max_det=100)
    return raw, e2e


def graph_boxes(run, image: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """Image in, boxes out through an end-to-end graph: yolodet's preprocessing, the graph, the mapping back."""
    blob, mapping = preprocess(image, (size, size), mode)
    boxes, _, _, num = run(blob[None])
    return mapping.to_original(torch.from_numpy(np.asarray(boxes)[0, :int(np.asarray(num)[0])]))


def _cfg_path(name: str) -> Path:
    shipped = ROOT / "cfg" / f"{name}.cfg"
    return shipped if shipped.is_file() else Path(name)


def main(args: argparse.Namespace) -> int:
    if args.rounds is not None:
        args.seconds, args.min_rounds = 0.0, max(args.rounds, 1)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    fast = resolve_precision(args.fast, "cpu")
    fast_label = f"fast ({fast})" + ("" if fast != "fp32" or args.fast != "half" else ": nothing faster on this CPU")
    use_ort = not args.no_onnxruntime and installed("onnxruntime") and installed("onnx")
    use_ov = not args.no_openvino and installed("openvino") and installed("onnx")
    ov_fast = "bf16" if fast == "bf16" else "f32"
    load_before = os.getloadavg()
    rows, image_rows, e2e_rows, notes = [], [], [], []
    image = read_image(SAMPLE)
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in map(_cfg_path, args.cfgs):
            weights, origin = weights_file(cfg, Path(tmp))
            model = Darknet.from_cfg(cfg)
            load_darknet_weights(model, weights)
            model.eval()
            fp32 = optimize_for_inference(model, precision="fp32", device="cpu")
            fastm = fp32 if fast == "fp32" else optimize_for_inference(
                model, precision=fast, device="cpu", calibration=args.calibrate, img_size=(args.img_size,) * 2)
            cv = None if args.no_opencv else opencv_peer(cfg, weights, model)
            pty = pytorchyolo_peer(cfg, weights, notes)
            raw_onnx, e2e_onnx = onnx_files(model, Path(tmp), cfg.stem) if use_ort or use_ov else (None, None)
            ort_run = ort_peer(raw_onnx, args.threads) if use_ort else None
            for batch in args.batches:
                blob = np.random.default_rng(0).random((batch, 3, args.img_size, args.img_size), dtype=np.float32)
                x = torch.from_numpy(blob)
                shape = blob.shape
                ov32 = openvino_peer(raw_onnx, shape, args.threads, "f32") if use_ov else None
                ovf = openvino_peer(raw_onnx, shape, args.threads, ov_fast) if use_ov and ov_fast != "f32" else ov32
                peers: dict[str, Callable[[], object]] = {"fp32": lambda: fp32(x)}
                if fastm is not fp32:
                    peers["fast"] = lambda: fastm(x)
                if ort_run is not None:
                    peers["ort"] = lambda: ort_run(blob)
                if ov32 is not None:
                    peers["ov"] = lambda: ov32(blob)
                if ovf is not ov32:
                    peers["ov_fast"] = lambda: ovf(blob)
                if cv is not None:
                    peers["opencv"] = lambda: cv(blob)
                if pty is not None:
                    peers["pytorchyolo"] = lambda: pty(blob)
                ref = fp32(x)
                for key, label, fn in (("opencv", "OpenCV", cv), ("ort", "ONNX Runtime", ort_run),
                                       ("ov", "OpenVINO f32", ov32), ("ov_fast", f"OpenVINO {ov_fast}", ovf)):
                    if key in peers:
                        notes.append(f"{cfg.stem} batch {batch}: yolodet fp32 vs {label} raw outputs differ by "
                                     f"{max_rel_diff(ref, fn(blob)):.1e} (max abs / max)")
                if fastm is not fp32:
                    notes.append(f"{cfg.stem} batch {batch}: {fast} vs fp32 outputs differ by "
                                 f"{max_rel_diff(fastm(x), ref):.1e}")
                med = time_interleaved(peers, args.seconds, args.min_rounds)
                ms = {k: v * 1000 / batch for k, v in med.items()}
                for mode, key, ov_key in (("fp32", "fp32", "ov"),
                                          (fast_label, "fast" if "fast" in ms else "fp32",
                                           "ov_fast" if "ov_fast" in ms else "ov")):
                    rows.append((cfg.stem, origin, batch, mode, ms[key], ms.get("ort"), ms.get(ov_key),
                                 ms.get("opencv"), ms.get("pytorchyolo")))
            if not args.no_image_rows:
                image_rows.extend(image_in_boxes_out(cfg.stem, model, e2e_onnx, image, args, use_ort, use_ov, notes))
            if args.e2e_runs > 0:
                e2e_rows.append((cfg.stem, "fp32", e2e_seconds(cfg, weights, [], args.e2e_runs, args.threads)))
                if fast != "fp32":
                    extra = ["--calibrate", args.calibrate] if fast == "int8" and args.calibrate else []
                    e2e_rows.append((cfg.stem, fast, e2e_seconds(cfg, weights, ["--precision", fast, *extra],
                                                                 args.e2e_runs, args.threads)))
    load_after = os.getloadavg()

    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical), torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), ONNX Runtime {ort_version()}, OpenVINO "
          f"{openvino_version()}, OpenCV {cv2.__version__}; {args.threads} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}; "
          f"input {args.img_size}x{args.img_size}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print(f"CPU flags: {cpu_flags()}; native bf16 (oneDNN): {cpu_has_native_bf16()}; yolodet fast mode "
          f"(--fast {args.fast}): {fast}; OpenVINO fast mode: {ov_fast}; fp32 Winograd transforms: "
          f"{'yolodet AVX2' if transform_kernels() is not None else 'PyTorch'}")
    print()
    print("| model | weights | batch | yolodet mode | yolodet ms/img | ORT ms/img | OpenVINO ms/img | OpenCV DNN ms/img "
          "| ORT / yolodet | OpenVINO / yolodet | OpenCV / yolodet | pytorchyolo ms/img |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, origin, batch, mode, ours, ortms, ovms, cvms, ptyms in rows:
        cells = [_ms(v) for v in (ortms, ovms, cvms)] + [_ratio(v, ours) for v in (ortms, ovms, cvms)]
        print(f"| {name} | {origin} | {batch} | {mode} | {ours:.1f} | {' | '.join(cells)} "
              f"| {f'{ptyms:.1f}' if ptyms else 'not installed'} |")
    print()
    print("| model | batch | yolodet fp32 ms/img | yolodet fast ms/img | ORT | OpenVINO | OpenCV | fp32 img/s | "
          "fast img/s | fp32 / fastest peer | fast / fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, batch), (f32, fastms, peer_ms) in _summary(rows).items():
        best = min((v for v in peer_ms if v), default=None)
        print(f"| {name} | {batch} | {f32:.1f} | {fastms:.1f} | {' | '.join(_ms(v) for v in peer_ms)} | "
              f"{1000 / f32:.1f} | {1000 / fastms:.1f} | {_ratio(f32, best) if best else '-'} | "
              f"{fastms / f32:.2f} |")
    if image_rows:
        print()
        print("| image in, boxes out (1 image, fp32) | yolodet ms | yolodet ORT backend ms | ORT end2end graph ms "
              "| OpenVINO end2end graph ms |")
        print("|---|---:|---:|---:|---:|")
        for name, values in image_rows:
            print(f"| {name} | {' | '.join(_ms(values.get(k)) for k in ('torch', 'ort_backend', 'ort_e2e', 'ov_e2e'))} |")
    if e2e_rows:
        print()
        print("| `tools/detect.py`, one image, process start to exit | precision | seconds |")
        print("|---|---|---:|")
        for name, prec, sec in e2e_rows:
            print(f"| {name} | {prec} | {sec:.2f} |")
    print()
    for note in notes:
        print(f"- {note}")
    return 0


def image_in_boxes_out(name: str, model: Darknet, e2e_onnx: Path | None, image: np.ndarray,
                       args: argparse.Namespace, use_ort: bool, use_ov: bool, notes: list[str]) -> list:
    """One row: milliseconds from an RGB uint8 image to its boxes (original pixels), per peer, interleaved."""
    size = args.img_size
    native = Detector(model, img_size=size, optimize=True)
    mode = native.preprocess_mode
    peers: dict[str, Callable[[], object]] = {"torch": lambda: native.predict([image])[0].boxes}
    if use_ort:
        backend = Detector(model, img_size=size, backend="onnxruntime")
        e2e = ort_peer(e2e_onnx, args.threads)
        peers["ort_backend"] = lambda: backend.predict([image])[0].boxes
        peers["ort_e2e"] = lambda: graph_boxes(e2e, image, size, mode)
    if use_ov:
        ov_e2e = openvino_peer(e2e_onnx, (1, 3, size, size), args.threads, "f32")
        peers["ov_e2e"] = lambda: graph_boxes(ov_e2e, image, size, mode)
    ref = peers["torch"]()
    for key, fn in peers.items():
        boxes = fn()
        same = boxes.shape == ref.shape and (boxes.numel() == 0 or float((boxes - ref).abs().max()) < 1e-2)
        notes.append(f"{name} image in, boxes out: {key} gives {len(boxes)} boxes"
                     + ("" if same else f" (torch: {len(ref)}; they DIFFER)"))
    med = time_interleaved(peers, args.seconds, args.min_rounds)
    return [(name, {k: v * 1000 for k, v in med.items()})]


def _summary(rows: list) -> dict:
    """(model, batch) -> (fp32 ms, fast ms, [ORT, OpenVINO f32, OpenCV ms]) from the main table's rows."""
    out: dict = {}
    for name, _, batch, mode, ours, ortms, ovms, cvms, _ in rows:
        f32, fastms, peers = out.get((name, batch), (None, None, None))
        if mode == "fp32":
            out[name, batch] = (ours, fastms if fastms is not None else ours, [ortms, ovms, cvms])
        else:
            out[name, batch] = (f32, ours, peers)
    return out


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value else "-"


def _ratio(peer: float | None, ours: float) -> str:
    return f"{peer / ours:.2f}" if peer else "-"


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
