"""ONNX Runtime and OpenVINO peers of ``bench_infer.py``, and the CPU's instruction-set flags.

Both runtimes read the graphs :mod:`yolodet.export` writes: the raw-head graph (network only, the same work as the
other columns) and the end-to-end graph (network + decode + NMS, for the image-in, boxes-out row). OpenVINO reads
the ONNX file itself (``Core.read_model``, its ONNX frontend), reshaped to the static batch and size timed, with
``INFERENCE_PRECISION_HINT`` set explicitly: it would otherwise run bf16 on CPUs with AVX-512 BF16 / AMX.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import numpy as np

from yolodet.inference import cpu_features

Runner = Callable[[np.ndarray], list]


def installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def ort_peer(onnx_path: Path, threads: int) -> Runner:
    """An ONNX Runtime CPU session of ``onnx_path``: blob -> list of outputs."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(blob: np.ndarray) -> list:
        return session.run(None, {name: blob})
    return run


def openvino_peer(onnx_path: Path, shape: tuple[int, ...], threads: int, precision: str) -> Runner:
    """OpenVINO's CPU plugin on ``onnx_path`` (its ONNX reader), static ``shape``, ``precision`` f32 or bf16."""
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape(list(shape))})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def run(blob: np.ndarray) -> list:
        request.infer({0: blob})
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
    return run


def openvino_version() -> str:
    try:
        import openvino as ov
        return ov.__version__ if hasattr(ov, "__version__") else ov.get_version()
    except ImportError:
        return "not installed"


def ort_version() -> str:
    try:
        import onnxruntime as ort
        return ort.__version__
    except ImportError:
        return "not installed"


_FLAGS = (("AVX2", ("avx2",)), ("AVX-512", ("avx512f",)), ("VNNI", ("avx512_vnni", "avx_vnni")),
          ("BF16", ("avx512_bf16", "avx_ne_convert")), ("AMX", ("amx_tile", "amx_bf16", "amx_int8")))


def cpu_flags() -> str:
    """``AVX2: avx2, AVX-512: avx512f, VNNI: avx512_vnni, ...`` (the flags of the first CPU that each label covers)."""
    flags = cpu_features.cpu_flags()
    if not flags:
        return "unknown (no /proc/cpuinfo)"
    parts = []
    for label, names in _FLAGS:
        have = [n for n in names if n in flags]
        parts.append(f"{label}: {' '.join(have) if have else 'no'}")
    return ", ".join(parts)
