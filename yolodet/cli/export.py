"""``yolodet export``: a cfg and its weights as an ONNX file (for ONNX Runtime, TensorRT, OpenVINO).

    yolodet export --cfg yolov3-tiny.cfg --weights yolov3-tiny.weights --format onnx
    yolodet export --cfg yolov3-tiny.cfg --weights yolov3-tiny.weights --end2end --dynamic --output tiny-e2e.onnx
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from typing import Iterator

HELP = "write a model as an ONNX file (raw head outputs, or --end2end with NMS in the graph)"
FORMATS = ("onnx",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Exit codes: 0 written (and checked by onnx.checker); 2 bad cfg/weights/arguments, a layer ONNX "
                "cannot express, or onnx missing (pip install yolodet[onnx]).")
    p.add_argument("--cfg", help="Darknet cfg (optional with a yolodet checkpoint, which embeds its cfg)")
    p.add_argument("--weights", required=True, help="Darknet .weights or yolodet checkpoint")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default: %(default)s)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="S",
                   help="input size: S, or W H (default: the cfg's [net] width and height)")
    p.add_argument("--dynamic", action="store_true", help="batch, height and width as dynamic axes")
    p.add_argument("--half", action="store_true",
                   help="float16 weights and input (for GPU runtimes; the end-to-end decode and NMS stay float32)")
    p.add_argument("--end2end", action="store_true",
                   help="decode, Darknet's candidate rule and per-class NMS in the graph: outputs boxes [B,K,4] "
                        "(xyxy, input pixels), scores [B,K], labels [B,K], num [B]")
    p.add_argument("--conf-thres", type=float, help="--end2end candidate threshold (default: Darknet's 0.25)")
    p.add_argument("--nms-thres", type=float, help="--end2end NMS IoU (default: Darknet's 0.45)")
    p.add_argument("--max-det", type=int, help="--end2end K, detections per image (default: 100)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: 18)")
    p.add_argument("--output", help="output file (default: the weights file with the suffix .onnx, or "
                                    "-end2end.onnx)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from yolodet.export import DEFAULT_OPSET, ExportError, to_onnx
    from yolodet.modeling.checkpoint import load_model

    if args.img_size is not None and len(args.img_size) not in (1, 2):
        raise ExportError(f"--img-size takes one size or W H, got {len(args.img_size)} numbers")
    if not args.end2end:
        given = [f"--{k.replace('_', '-')}" for k in ("conf_thres", "nms_thres", "max_det")
                 if getattr(args, k) is not None]
        if given:
            raise ExportError(f"{', '.join(given)} only apply with --end2end")
    size = None if args.img_size is None else (args.img_size[0] if len(args.img_size) == 1 else args.img_size)
    output = Path(args.output) if args.output else Path(args.weights).with_name(
        Path(args.weights).stem + ("-end2end" if args.end2end else "") + ".onnx")
    model = load_model(args.cfg, args.weights)
    opset = args.opset if args.opset is not None else DEFAULT_OPSET
    with _exporter_log_dropped():
        path = to_onnx(model, output, img_size=size, dynamic=args.dynamic, half=args.half, end2end=args.end2end,
                       conf_thres=args.conf_thres, nms_thres=args.nms_thres, max_det=args.max_det, opset=opset)
    print(f"wrote {path} (ONNX opset {opset}{', end2end' if args.end2end else ''}"
          f"{', dynamic' if args.dynamic else ''}{', fp16' if args.half else ''})")
    return 0


@contextlib.contextmanager
def _exporter_log_dropped() -> Iterator[None]:
    """Drop what torch's C++ ONNX exporter writes to the process's stdout (on a failure it dumps the whole
    TorchScript graph there, ~100 lines, before the error is raised; yolodet's ExportError says what matters)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
