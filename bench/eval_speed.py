#!/usr/bin/env python
"""COCO128 end-to-end evaluation wall time: yolodet's ``evaluate`` vs an ONNX Runtime loop and an OpenCV-DNN loop,
in one run.

Every side reads the same images with the same decoder, feeds the same Darknet-exact preprocessed arrays, decodes
with the same :class:`~yolodet.inference.decode.YoloDecoder`, applies the same candidate rule and per-class NMS
(:func:`~yolodet.inference.postprocess.postprocess`) and scores with the same COCOeval. Only the network and the
loop differ: yolodet's ``evaluate`` (its optimised PyTorch model, images read in loader workers when the cores
allow) versus a plain loop over ``onnxruntime`` (the raw-head graph ``yolodet.export.to_onnx`` writes, when
installed) and over ``cv2.dnn.readNetFromDarknet``. OpenCV's own ``[yolo]`` layer zeroes class scores <= 0.2 (its
default ``thresh``), which would break Darknet's 0.005 protocol, so that loop takes the raw outputs of the
convolutions that feed the heads (``conv_<head - 1>``) instead.

Not a test. Usage: ``python bench/eval_speed.py [--preprocess darknet-letterbox] [--batch-size 8] [--workers 2]``
"""

from __future__ import annotations

from yolodet.cli.openmp import set_openmp_defaults

set_openmp_defaults()  # as tools/eval_coco.py does; must precede `import torch`

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from yolodet.data import read_coco  # noqa: E402
from yolodet.inference.loader import InferenceDataset, default_workers  # noqa: E402
from yolodet.data.images import default_decoder
from yolodet.inference.detector import Detector  # noqa: E402
from yolodet.evaluation import category_mapping, coco_evaluate, detections_to_coco, evaluate  # noqa: E402
from yolodet.inference.postprocess import postprocess  # noqa: E402

from _coco128_args import add_coco128_args  # noqa: E402  (bench/, next to this script)
from _onnx_peers import installed, ort_peer  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_coco128_args(p)
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--preprocess", default="darknet-resize")
    p.add_argument("--batch-size", type=int, default=8, help="both sides (OpenCV gets N-image blobs)")
    p.add_argument("--workers", type=int, help="yolodet's image-loading processes (default: as tools/eval_coco.py, "
                                               "the cores torch's threads leave free, at most 2)")
    p.add_argument("--device", default="cpu", help="yolodet's device (the peers run on the CPU)")
    p.add_argument("--no-opencv", action="store_true", help="leave the OpenCV DNN loop out")
    p.add_argument("--no-onnxruntime", action="store_true", help="leave the ONNX Runtime loop out")
    return p


def peer_eval(args: argparse.Namespace, source, gt: dict, decoder_name: str, network: str
              ) -> tuple[float, float, float, int]:
    """A plain loop with ``network`` ("onnxruntime" or "opencv") for the forward; returns (seconds, AP, AP50,
    detections). The timing includes loading the network (an ONNX file written here for ORT)."""
    start = time.perf_counter()
    detector = Detector.from_cfg(args.cfg, args.weights, img_size=args.img_size, preprocess=args.preprocess)
    with tempfile.TemporaryDirectory() as tmp:
        forward = _forward(args, detector, network, Path(tmp))
        class_ids, _ = category_mapping(detector.model.num_classes, [c["id"] for c in gt["categories"]],
                                        source.category_ids)
        dataset = InferenceDataset([s.image for s in source.samples], detector.img_size, args.preprocess,
                                   decoder=decoder_name)
        results = []
        for first in range(0, len(dataset), args.batch_size):
            items = [dataset[i] for i in range(first, min(first + args.batch_size, len(dataset)))]
            items = [it for it in items if it.image is not None]
            raw = [torch.from_numpy(o) for o in forward(np.stack([it.image for it in items]))]
            preds = detector.decoder(raw, detector.img_size)
            dets = postprocess(preds, conf_thres=0.005, nms_thres=0.45, mappings=[it.mapping for it in items])
            for it, det in zip(items, dets):
                results.extend(detections_to_coco(det, source.samples[it.index].image_id, class_ids))
    scores = coco_evaluate(gt, results, image_ids=[s.image_id for s in source.samples])
    return time.perf_counter() - start, scores.stats[0], scores.stats[1], len(results)


def _forward(args: argparse.Namespace, detector: Detector, network: str, tmp: Path
             ) -> Callable[[np.ndarray], list[np.ndarray]]:
    """float32 [B, 3, H, W] blob -> raw head outputs, by ONNX Runtime or OpenCV DNN."""
    if network == "onnxruntime":
        from yolodet.export import to_onnx

        path = to_onnx(detector.model, tmp / "model.onnx", img_size=detector.img_size, dynamic=True)
        return ort_peer(path, torch.get_num_threads())
    net = cv2.dnn.readNetFromDarknet(args.cfg, args.weights)
    outputs = [f"conv_{h.layer - 1}" for h in detector.model.heads]

    def run(blob: np.ndarray) -> list[np.ndarray]:
        net.setInput(blob)
        return net.forward(outputs)
    return run


def main(args: argparse.Namespace) -> int:
    for path in (args.cfg, args.weights, args.annotations):
        if not Path(path).is_file():
            print(f"error: {path}: no such file (this bench needs ../shared)", file=sys.stderr)
            return 2
    source = read_coco(args.annotations)
    gt = json.loads(Path(args.annotations).read_text())
    decoder = default_decoder()

    if args.workers is None:
        args.workers = default_workers(len(source.samples), args.batch_size)
    start = time.perf_counter()
    detector = Detector.from_cfg(args.cfg, args.weights, img_size=args.img_size, preprocess=args.preprocess,
                                 device=args.device)
    result = evaluate(detector, source, batch_size=args.batch_size, workers=args.workers, gt=gt,
                      decoder=decoder, progress=False)
    ours = time.perf_counter() - start

    peers = {}
    if not args.no_onnxruntime and installed("onnxruntime"):
        peers["ONNX Runtime loop (cpu)"] = peer_eval(args, source, gt, decoder, "onnxruntime")
    if not args.no_opencv:
        peers["OpenCV DNN loop (cpu)"] = peer_eval(args, source, gt, decoder, "opencv")

    n_img = len(source.samples)
    print(f"COCO128 end-to-end eval ({n_img} images), {Path(args.cfg).name} {args.img_size} {args.preprocess}, "
          f"decoder {decoder}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"OpenCV {cv2.__version__} threads {cv2.getNumThreads()}")
    print(f"{'pipeline':<28} {'wall s':>8} {'img/s':>7} {'AP':>7} {'AP50':>7} {'dets':>6} {'peer / yolodet':>15}")
    print(f"{'yolodet (' + str(args.device) + f', workers {args.workers})':<28} {ours:8.1f} {n_img / ours:7.2f} "
          f"{result.ap:7.4f} {result.ap50:7.4f} {len(result.results):6d}")
    for name, (theirs, ap, ap50, n) in peers.items():
        print(f"{name:<28} {theirs:8.1f} {n_img / theirs:7.2f} {ap:7.4f} {ap50:7.4f} {n:6d} {theirs / ours:14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
