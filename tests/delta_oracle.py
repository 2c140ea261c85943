"""Builds and runs ``tests/oracle/delta_dump.c`` (our harness) against the Darknet sources of the shared oracle:
Darknet's own training deltas (``l.delta`` of each detection head, ``state.train = 1``) for a cfg, weights, input
and truths. The build goes to a cache folder keyed by the sources and compiler; tests skip without gcc/g++ or the
sources."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HARNESS = Path(__file__).resolve().parent / "oracle" / "delta_dump.c"
# Darknet's library objects (its Makefile's list with GPU=0 OPENCV=0), without the example programs.
_SOURCES = """gemm utils dark_cuda convolutional_layer list image activations im2col col2im blas crop_layer
dropout_layer maxpool_layer softmax_layer data matrix network connected_layer cost_layer parser option_list
detection_layer route_layer box normalization_layer avgpool_layer layer local_layer shortcut_layer
representation_layer activation_layer rnn_layer gru_layer crnn_layer batchnorm_layer region_layer reorg_layer
reorg_old_layer tree yolo_layer gaussian_yolo_layer upsample_layer lstm_layer conv_lstm_layer
scale_channels_layer sam_layer demo""".split()
_CXX_SOURCES = ("image_opencv", "http_stream")


class DeltaOracleError(RuntimeError):
    """The harness could not be built or run (the message says why)."""


def build(darknet: Path, cache: Path | None = None, jobs: int = 2) -> Path:
    """Compile Darknet's sources in ``darknet`` (``src/``, ``include/``, ``3rdparty/``) and the harness; return
    the executable (cached)."""
    cc, cxx = shutil.which("gcc") or shutil.which("cc"), shutil.which("g++") or shutil.which("c++")
    if not cc or not cxx:
        raise DeltaOracleError("no C/C++ compiler")
    files = [darknet / "src" / f"{s}.c" for s in _SOURCES] + [darknet / "src" / f"{s}.cpp" for s in _CXX_SOURCES]
    digest = hashlib.sha256()
    for f in [*files, HARNESS, *sorted((darknet / "src").glob("*.h")), darknet / "include" / "darknet.h"]:
        digest.update(f.name.encode() + f.read_bytes())
    digest.update(subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.encode())
    root = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "yolodet-delta-oracle"
    out = root / digest.hexdigest()[:16]
    exe = out / "delta_dump"
    if exe.is_file():
        return exe
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    inc = ["-I", str(darknet / "include"), "-I", str(darknet / "src"), "-I", str(darknet / "3rdparty/stb/include")]

    def compile_one(src: Path) -> Path:
        obj = tmp / (src.stem + ".o")
        tool = [cxx, "-std=c++11"] if src.suffix == ".cpp" else [cc]
        res = subprocess.run([*tool, "-O2", "-w", *inc, "-c", str(src), "-o", str(obj)], capture_output=True,
                             text=True)
        if res.returncode:
            raise DeltaOracleError(f"compiling {src} failed:\n{res.stderr[-2000:]}")
        return obj

    try:
        with ThreadPoolExecutor(jobs) as pool:
            objects = list(pool.map(compile_one, [*files, HARNESS]))
        res = subprocess.run([cxx, "-o", str(tmp / "delta_dump"), *map(str, objects), "-lm", "-pthread"],
                             capture_output=True, text=True)
        if res.returncode:
            raise DeltaOracleError(f"linking delta_dump failed:\n{res.stderr[-3000:]}")
        out.mkdir(exist_ok=True)
        os.replace(tmp / "delta_dump", exe)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return exe


def run(exe: Path, cfg: Path, weights: Path, x: np.ndarray, truths: np.ndarray, seen: int, workdir: Path
        ) -> dict[int, tuple[float, np.ndarray]]:
    """x: [C, H, W] float32; truths: [N, 5] (cx, cy, w, h fractions, class) -> {head layer: (cost, delta flat)}."""
    inp, tru, out = workdir / "input.bin", workdir / "truth.bin", workdir / "delta.bin"
    np.ascontiguousarray(x, dtype="<f4").tofile(inp)
    np.ascontiguousarray(truths, dtype="<f4").tofile(tru)
    res = subprocess.run([str(exe), str(cfg), str(weights), str(inp), str(tru), str(seen), str(out)],
                         capture_output=True, text=True, timeout=120)
    if res.returncode:
        raise DeltaOracleError(f"delta_dump failed ({res.returncode}): {res.stderr[-2000:]}")
    data = out.read_bytes()
    count, pos, heads = int(np.frombuffer(data, "<i4", 1)[0]), 4, {}
    for _ in range(count):
        index, n = np.frombuffer(data, "<i4", 2, pos)
        cost = float(np.frombuffer(data, "<f4", 1, pos + 8)[0])
        heads[int(index)] = (cost, np.frombuffer(data, "<f4", int(n), pos + 12).copy())
        pos += 12 + 4 * int(n)
    return heads
