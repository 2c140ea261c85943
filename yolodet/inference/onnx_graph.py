"""A Darknet as an ONNX graph of its raw head outputs: the tensors :meth:`Darknet.forward` returns, one ONNX output
per ``[yolo]`` head (``[B, A*(5+C), H_i, W_i]``, before any sigmoid), or the final output for a classifier.

The graph is made by ``torch.onnx.export(..., dynamo=False)``, the TorchScript tracer: it needs nothing beyond
torch (the dynamo exporter needs ``onnxscript``), exports yolov3-tiny in 0.3 s against the dynamo exporter's 3.0 s
(yolov4: 3.8 s against 7.8 s), which is what makes exporting the whole Darknet zoo in a test affordable, and its
graphs give the same outputs (5e-7 relative) and run as fast in ONNX Runtime once ``mish`` is the ONNX ``Mish``
op (opset >= 18; the tracer's default, ``x * tanh(softplus(x))`` in three ops, made yolov4 20% slower).
BatchNorm is folded into the convolutions by the exporter's constant folding (the graph has no
BatchNormalization node).

:mod:`yolodet.inference.ort` runs these graphs; :mod:`yolodet.export` writes them (and the end-to-end graph).
``onnx`` and ``onnxruntime`` are an optional extra: ``pip install yolodet[onnx]``.
"""

from __future__ import annotations

import copy
import importlib
import io
import logging
import os
import warnings
from typing import IO, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from yolodet.cfg import parse_cfg_text
from yolodet.errors import YolodetError
from yolodet.modeling.blocks.conv import ConnectedBlock, XnorConv
from yolodet.modeling.blocks.misc import Crop
from yolodet.modeling.blocks.recurrent import Gru, Lstm, Rnn
from yolodet.modeling.blocks.yolov1 import Local
from yolodet.modeling.model import Darknet

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_OPSET", "ExportError", "OnnxUnavailableError", "export_raw_onnx", "input_size", "layer_name",
           "network_stride", "output_names", "prepare_for_export", "require", "run_export", "size_fixing_layer"]

DEFAULT_OPSET = 18
"""ONNX opset of every yolodet graph: the first with a ``Mish`` op; TensorRT >= 8.6, OpenVINO and ONNX Runtime
>= 1.14 read it."""

INSTALL_HINT = "pip install yolodet[onnx]"


class ExportError(YolodetError):
    """A model that cannot be written as ONNX (a layer ONNX cannot express, a bad export argument)."""


class OnnxUnavailableError(YolodetError, ImportError):
    """``onnx`` or ``onnxruntime`` is not installed (they are the optional extra ``yolodet[onnx]``)."""


def require(module: str):
    """Import ``onnx`` / ``onnxruntime`` or raise :class:`OnnxUnavailableError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OnnxUnavailableError(f"{module} is not installed ({exc}); {INSTALL_HINT} installs onnx and "
                                   "onnxruntime") from None


class _MishOp(torch.autograd.Function):
    """``mish`` that the tracer writes as one ONNX ``Mish`` node (opset 18)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.mish(x)

    @staticmethod
    def symbolic(g, x):  # noqa: D102
        return g.op("Mish", x)


class _OnnxMish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MishOp.apply(x)


class _FrozenXnor(nn.Module):
    """An ``xnor=1`` conv with its binary weights computed once by torch (``XnorConv.binary_weights``) and stored
    as constants: the graph then has ``Conv(+1/-1 constants) -> Mul -> Add`` on the very ``mean`` and bias the
    torch forward computes, where tracing the forward leaves the ``ReduceMean`` of the weights to the runtime,
    whose other summation order moves ``mean`` by an ulp, and the signs of the next xnor layer's inputs with it."""

    def __init__(self, layer: XnorConv) -> None:
        super().__init__()
        self.layer, self.sources, self.out_shape = layer, layer.sources, layer.out_shape
        sign_w, mean, bias = (t.detach().clone() for t in layer.binary_weights())
        self.register_buffer("sign_w", sign_w)
        self.register_buffer("mean", mean)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return self.layer.binary_forward(x, self.sign_w, self.mean, self.bias)


class _RawHeads(nn.Module):
    """Export wrapper: ``x [B, C, H, W]`` -> tuple of :meth:`Darknet.forward`'s tensors."""

    def __init__(self, model: Darknet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


def prepare_for_export(model: Darknet, *, half: bool = False, opset: int = DEFAULT_OPSET) -> Darknet:
    """An eval-mode CPU copy of ``model`` (``model`` is left alone) with ``mish`` as ONNX ``Mish`` (opset >= 18),
    in float16 when ``half``, recurrent layers (``[crnn]``, ...) at a zero state: their graph computes the first
    step of a sequence (the state is not an input of the graph)."""
    net = copy.deepcopy(model).eval().cpu().requires_grad_(False)
    net.reset_state()  # a recurrent layer's graph is one step from a zero state, not from the last forward's
    for index, layer in enumerate(net.layers):
        if isinstance(layer, XnorConv):
            net.layers[index] = _FrozenXnor(layer)
    if opset >= 18:
        for name, module in list(net.named_modules()):
            if isinstance(module, nn.Mish):
                parent, _, attr = name.rpartition(".")
                setattr(net.get_submodule(parent) if parent else net, attr, _OnnxMish())
    return net.half() if half else net


def input_size(model: Darknet, img_size: int | Sequence[int] | None, *, dynamic: bool = False) -> tuple[int, int]:
    """``None`` -> the cfg's (width, height); ``416`` -> (416, 416); ``(w, h)`` as is; checked against the
    network's stride (:func:`network_stride`), or, for a network with a layer that fixes its input size
    (:func:`size_fixing_layer`), against the cfg's size; such a network cannot have a dynamic H, W."""
    if img_size is None:
        w, h = model.net.width, model.net.height
    elif isinstance(img_size, int):
        w = h = img_size
    else:
        if len(img_size) != 2:
            raise ExportError(f"img_size must be one size or (width, height), got {list(img_size)}")
        w, h = int(img_size[0]), int(img_size[1])
    fixed = size_fixing_layer(model)
    if fixed is not None:
        cfg_w, cfg_h = model.net.width, model.net.height
        where = f"{layer_name(model, fixed)}: fixes the network's input size at the cfg's {cfg_w}x{cfg_h} " \
                f"({_fixed_because(model.layers[fixed])})"
        if dynamic:
            raise ExportError(f"{where}, so the graph cannot have a dynamic height and width; export without "
                              "dynamic axes")
        if (w, h) != (cfg_w, cfg_h):
            raise ExportError(f"{where}; got an image size of {w}x{h}")
        return w, h
    stride = network_stride(model)
    if w < 1 or h < 1 or w % stride or h % stride:
        raise ExportError(f"image size {w}x{h} must be a positive multiple of the network's stride ({stride}, its "
                          "largest downsampling)")
    return w, h


def network_stride(model: Darknet) -> int:
    """The network's largest downsampling at the cfg's size: ``[net]`` width (height) over the smallest map width
    (height) of any layer, maps of one row or column left out (32 for YOLOv2-v4, also where the heads sit at
    strides 8 or 16 only). Sizes that are multiples of it run (Darknet's own rule for resizing a network)."""
    n = model.net
    ratios = [1]
    for layer in model.layers:
        _, h, w = layer.out_shape
        if h > 1 and w > 1:
            ratios += [max(1, round(n.width / w)), max(1, round(n.height / h))]
    return max(ratios)


def _fixed_because(layer: nn.Module) -> str:
    if isinstance(layer, Local):
        return "a filter bank for every output position"
    if isinstance(layer, Crop):
        return "a window of the cfg's size"
    return "weights for every position of its input map"


def size_fixing_layer(model: Darknet) -> int | None:
    """Index of the first layer that runs only at the cfg's input size, or None: ``[connected]``, ``[rnn]``,
    ``[gru]``, ``[lstm]`` over a map larger than 1x1 (weights for every input position), ``[local]`` (a filter
    bank per position), ``[crop]`` (a window of the cfg's size)."""
    for index, layer in enumerate(model.layers):
        if isinstance(layer, (Local, Crop)):
            return index
        if isinstance(layer, (ConnectedBlock, Rnn, Gru, Lstm)):
            _, h, w = model.layers[index - 1].out_shape if index else model.net.input_shape
            if h * w > 1:
                return index
    return None


def output_names(model: Darknet) -> list[str]:
    """``head0`` ... (one per ``[yolo]`` head, in cfg order), or ``output`` for a classifier."""
    return [f"head{k}" for k in range(len(model.heads))] or ["output"]


def run_export(module: nn.Module, example: torch.Tensor, f: str | os.PathLike | IO[bytes], *, model: Darknet,
               input_names: Sequence[str], output_names: Sequence[str], dynamic_axes: dict | None,
               opset: int) -> None:
    """``torch.onnx.export`` (TorchScript tracer) of ``module`` on ``example``; a failure becomes an
    :class:`ExportError` naming the first Darknet layer of ``model`` (``module``'s network) that cannot be
    exported, with its cfg ``file:line``."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: the graph is checked, not hoped
            torch.onnx.export(module, (example,), f, dynamo=False, opset_version=opset, do_constant_folding=True,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes)
    except Exception as exc:  # noqa: BLE001  (any exporter failure is turned into a located message)
        raise _located_error(model, example, opset, exc) from exc


def export_raw_onnx(model: Darknet, f: str | os.PathLike | IO[bytes], *, img_size: int | Sequence[int] | None = None,
                    dynamic: bool = False, half: bool = False, opset: int = DEFAULT_OPSET) -> None:
    """Write ``model``'s raw-head graph to ``f`` (a path or a binary file object).

    Input ``images``: float [B, C, H, W] in [0, 1] (float16 when ``half``); outputs :func:`output_names`, the
    tensors of :meth:`Darknet.forward`. ``dynamic``: batch, height and width are dynamic axes (the sizes must
    still be multiples of the largest stride); else the graph is fixed to batch 1 at ``img_size``.
    """
    w, h = input_size(model, img_size, dynamic=dynamic)
    net = prepare_for_export(model, half=half, opset=opset)
    example = torch.rand(1, model.net.channels, h, w, dtype=torch.float16 if half else torch.float32)
    names = output_names(model)
    axes = None
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        axes.update({name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in names})
    run_export(_RawHeads(net), example, f, model=net, input_names=["images"], output_names=names,
               dynamic_axes=axes, opset=opset)


class _OneLayer(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, *refs: torch.Tensor) -> torch.Tensor:
        return self.layer(x, list(refs))


def _located_error(model: Darknet, example: torch.Tensor, opset: int, exc: Exception) -> ExportError:
    """Find the first layer that does not export on its own (each layer is exported alone on the input it gets
    in a forward of ``example``) and name it with its cfg file:line."""
    reason = _first_line(exc)
    inputs: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
    saved: list[torch.Tensor] = []
    with torch.no_grad():
        x = example
        for index, layer in enumerate(model.layers):
            refs = [saved[s] for s in layer.sources]
            inputs.append((x, refs))
            try:
                x = layer(x, refs)
            except Exception as run_exc:  # noqa: BLE001  (the network does not run at this size: say where)
                size = f"{example.shape[3]}x{example.shape[2]}"
                return ExportError(f"{layer_name(model, index)}: the network does not run at an input of {size} "
                                   f"(sizes it runs at are multiples of {network_stride(model)}): "
                                   f"{_first_line(run_exc)}")
            saved.append(x)
    for index, (layer, (x, refs)) in enumerate(zip(model.layers, inputs)):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(_OneLayer(layer), (x, *refs), io.BytesIO(), dynamo=False, opset_version=opset)
        except Exception as layer_exc:  # noqa: BLE001
            return ExportError(f"{layer_name(model, index)}: this layer cannot be exported to ONNX (opset {opset}) "
                               f"by {type(layer).__name__}: {_first_line(layer_exc)}")
    return ExportError(f"{model.cfg_path}: ONNX export (opset {opset}) failed: {reason}")


def layer_name(model: Darknet, index: int) -> str:
    """``file:line: [type #index]`` of layer ``index`` (the cfg's path alone when the text is not kept)."""
    blocks = _cfg_blocks(model)
    if index < len(blocks):
        return f"{blocks[index].path}:{blocks[index].line}: [{blocks[index].type} #{index}]"
    return f"{model.cfg_path}: [{type(model.layers[index]).__name__} #{index}]"


def _cfg_blocks(model: Darknet) -> list:
    """The cfg sections after ``[net]`` (index = layer index), re-parsed from the text the model keeps."""
    if not model.cfg_text:
        return []
    try:
        return parse_cfg_text(model.cfg_text, model.cfg_path)[1:]
    except YolodetError:
        return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
