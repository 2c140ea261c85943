"""An ONNX Runtime runner of a Darknet's raw-head graph, with the call contract of the optimised copy the
:class:`~yolodet.inference.detector.Detector` runs (:class:`~yolodet.inference.optimize.InferenceModel`):
``runner(x)`` with ``x`` float [B, 3, H, W] in [0, 1] -> the raw head outputs of :meth:`Darknet.forward` as
float32 tensors on ``x``'s device.

The graph is built in memory by :func:`yolodet.inference.onnx_graph.export_raw_onnx` with batch, height and width
as dynamic axes, so one session serves every batch and input size. ``Detector(..., backend="onnxruntime")`` runs
it; preprocessing, decoding and NMS stay yolodet's own.
"""

from __future__ import annotations

import io
import logging
from typing import Sequence

import numpy as np
import torch

from yolodet.inference.onnx_graph import DEFAULT_OPSET, export_raw_onnx, require
from yolodet.modeling.model import Darknet

log = logging.getLogger(__name__)

__all__ = ["OrtRunner", "default_providers"]


def default_providers(device: str | torch.device) -> list[str]:
    """ONNX Runtime execution providers for ``device``: CUDA (then CPU) for a CUDA device, else the CPU."""
    if torch.device(device).type == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner:
    """``model``'s raw-head graph in an ONNX Runtime session (``model`` itself is not kept or modified).

    Args:
        model: any :class:`Darknet` (its weights at construction are the ones exported).
        device: where the outputs go, and which providers run (:func:`default_providers`).
        threads: ONNX Runtime intra-op threads; default: torch's (``torch.get_num_threads()``), as the native
            path uses.
        providers: ONNX Runtime execution providers (overrides ``device``'s).
        img_size: the (w, h) the graph is traced at (any multiple of the largest stride runs afterwards).

    Raises:
        OnnxUnavailableError: ``onnx``/``onnxruntime`` are not installed.
        ExportError: a layer that ONNX cannot express (named with its cfg file:line).
    """

    def __init__(self, model: Darknet, *, device: str | torch.device = "cpu", threads: int | None = None,
                 providers: Sequence[str] | None = None, img_size: Sequence[int] | None = None) -> None:
        ort = require("onnxruntime")
        self.heads = model.heads
        self.net = model.net
        self.num_classes = model.num_classes
        self.device = torch.device(device)
        buf = io.BytesIO()
        export_raw_onnx(model, buf, img_size=img_size, dynamic=True, opset=DEFAULT_OPSET)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        wanted = list(providers or default_providers(self.device))
        available = set(ort.get_available_providers())
        chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        if chosen != wanted:
            log.warning("ONNX Runtime lacks %s; running on %s", sorted(set(wanted) - available), chosen)
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=chosen)
        self.input_name = self.session.get_inputs()[0].name
        log.info("ONNX Runtime %s session on %s, %d threads", ort.__version__, chosen,
                 options.intra_op_num_threads)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B, C, H, W] float (any layout) -> raw head outputs, float32 [B, A*(5+C), H_i, W_i] on x's device."""
        blob = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        outputs = self.session.run(None, {self.input_name: blob})
        return [torch.from_numpy(o).to(x.device) for o in outputs]
