"""``to_onnx``: a Darknet as an ONNX file, plain (raw head outputs) or end to end (boxes out).

The file is checked by ``onnx.checker`` before it replaces anything at ``path`` (written to a temp file, then
renamed: :mod:`yolodet.atomic`), and carries its settings as ONNX metadata (``yolodet.*`` keys: input size,
preprocess mode, thresholds, output layout) so a deployment can read how to feed it.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from yolodet.atomic import atomic_write_bytes
from yolodet.export.end2end import END2END_OUTPUTS, End2End
from yolodet.inference.detector import default_preprocess
from yolodet.inference.onnx_graph import (
    DEFAULT_OPSET,
    ExportError,
    export_raw_onnx,
    input_size,
    layer_name,
    output_names,
    prepare_for_export,
    require,
    run_export,
)
from yolodet.modeling.model import Darknet

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CONF_THRES", "DEFAULT_MAX_DET", "DEFAULT_NMS_THRES", "to_onnx"]

DEFAULT_CONF_THRES = 0.25
"""Darknet's ``detector test`` default ``-thresh`` (the cfg has no test-time threshold key)."""
DEFAULT_NMS_THRES = 0.45
"""Darknet's ``detector test`` NMS IoU (hard-coded ``nms = .45`` in detector.c)."""
DEFAULT_MAX_DET = 100
"""K of the end-to-end outputs (COCO's per-image cap)."""


def to_onnx(model: Darknet, path: str | os.PathLike, *, img_size: int | Sequence[int] | None = None,
            dynamic: bool = False, half: bool = False, end2end: bool = False, conf_thres: float | None = None,
            nms_thres: float | None = None, max_det: int | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` as an ONNX file at ``path`` and return the path.

    Args:
        model: a :class:`Darknet` (not modified; exported in eval mode on the CPU).
        img_size: input size, an int or (w, h); the cfg's when None. Multiple of the largest head stride.
        dynamic: batch, height and width as dynamic axes (else batch 1 at ``img_size``).
        half: float16 weights and input (for GPU runtimes: TensorRT, ORT's CUDA provider); the end-to-end decode
            and NMS still run in float32.
        end2end: boxes out (:mod:`yolodet.export.end2end`) instead of the raw head outputs.
        conf_thres, nms_thres, max_det: end-to-end settings; None: :data:`DEFAULT_CONF_THRES` (0.25),
            :data:`DEFAULT_NMS_THRES` (0.45), :data:`DEFAULT_MAX_DET` (100).
        opset: ONNX opset (default :data:`DEFAULT_OPSET`, 18).

    Raises:
        ExportError: a layer ONNX cannot express (naming the layer and its cfg file:line), bad arguments, a graph
            that fails ``onnx.checker``.
        OnnxUnavailableError: ``onnx`` is not installed (``pip install yolodet[onnx]``).
    """
    onnx = require("onnx")
    if not 9 <= opset <= 20:
        raise ExportError(f"opset must be between 9 and 20 (the TorchScript exporter's range), got {opset}")
    if end2end and opset < 11:
        raise ExportError(f"--end2end needs opset >= 11 (NonMaxSuppression with per-class scores), got {opset}")
    w, h = input_size(model, img_size, dynamic=dynamic)
    buf = io.BytesIO()
    settings: dict[str, str] = {"img_size": f"{w},{h}", "dynamic": str(int(dynamic)), "half": str(int(half)),
                                "end2end": str(int(end2end)), "opset": str(opset),
                                "input": "images float[B, C, H, W] RGB in [0, 1]"}
    if model.heads:
        settings["preprocess"] = default_preprocess(model)
    if end2end:
        conf, nms, k = _end2end_settings(model, conf_thres, nms_thres, max_det)
        settings.update(conf_thres=repr(conf), nms_thres=repr(nms), max_det=str(k),
                        outputs="boxes [B,K,4] xyxy input pixels, scores [B,K], labels [B,K] int32 (-1 pad), "
                                "num [B] int32")
        _export_end2end(model, buf, (w, h), dynamic=dynamic, half=half, conf=conf, nms=nms, k=k, opset=opset)
    else:
        settings["outputs"] = ", ".join(output_names(model)) + " raw head outputs [B, A*(5+C), H_i, W_i]"
        export_raw_onnx(model, buf, img_size=(w, h), dynamic=dynamic, half=half, opset=opset)
    proto = onnx.load_from_string(buf.getvalue())
    if end2end:
        _name_end2end_shapes(proto, "batch" if dynamic else 1, k)
    for key, value in settings.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"yolodet.{key}", value
    proto.producer_name = "yolodet"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001  (onnx raises its own ValidationError / InferenceError types)
        raise ExportError(f"{model.cfg_path}: the exported graph fails onnx.checker: {exc}") from exc
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    log.info("wrote %s (opset %d, %s, %dx%d%s%s)", path, opset, "end2end" if end2end else "raw heads", w, h,
             ", dynamic" if dynamic else "", ", fp16" if half else "")
    return path


def _end2end_settings(model: Darknet, conf: float | None, nms: float | None, k: int | None
                      ) -> tuple[float, float, int]:
    if not model.heads:
        raise ExportError(f"{model.cfg_path}: --end2end needs [yolo] heads; this cfg is a classifier")
    for head in model.heads:
        kind = getattr(head, "kind", "yolo")
        if kind != "yolo":
            raise ExportError(f"{layer_name(model, head.layer)}: --end2end decodes [yolo] heads only, not "
                              f"[{kind}]; export the raw head outputs (without --end2end); Detector and `yolodet detect` decode them")
    conf = DEFAULT_CONF_THRES if conf is None else float(conf)
    nms = DEFAULT_NMS_THRES if nms is None else float(nms)
    k = DEFAULT_MAX_DET if k is None else int(k)
    if not 0 <= conf < 1:
        raise ExportError(f"conf_thres must be in [0, 1), got {conf}")
    if not 0 < nms <= 1:
        raise ExportError(f"nms_thres must be in (0, 1], got {nms}")
    if k < 1:
        raise ExportError(f"max_det must be >= 1, got {k}")
    return conf, nms, k


def _name_end2end_shapes(proto, batch: int | str, k: int) -> None:
    """Write the end-to-end outputs' shapes into the graph (the tracer leaves B and K unknown behind the NMS):
    boxes [B, K, 4], scores/labels [B, K], num [B]."""
    shapes = {"boxes": (batch, k, 4), "scores": (batch, k), "labels": (batch, k), "num": (batch,)}
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value


def _export_end2end(model: Darknet, f, size: tuple[int, int], *, dynamic: bool, half: bool, conf: float,
                    nms: float, k: int, opset: int) -> None:
    net = prepare_for_export(model, half=half, opset=opset)
    module = End2End(net, conf_thres=conf, nms_thres=nms, max_det=k).eval()
    example = torch.rand(1, model.net.channels, size[1], size[0], dtype=torch.float16 if half else torch.float32)
    axes = None
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        axes.update({name: {0: "batch"} for name in END2END_OUTPUTS})
    run_export(module, example, f, model=net, input_names=["images"], output_names=list(END2END_OUTPUTS),
               dynamic_axes=axes, opset=opset)
