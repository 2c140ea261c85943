#!/usr/bin/env python
"""Detect objects in images, folders, globs or videos with a Darknet cfg + weights; write annotated images,
a JSON of detections and (optionally) Darknet-style txt labels."""

from __future__ import annotations

from yolodet.cli.openmp import set_openmp_defaults

# Idle OpenMP threads spin briefly, then sleep (see yolodet.openmp); must precede `import torch`.
set_openmp_defaults()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from yolodet.cfg import CfgError  # noqa: E402
from yolodet.modeling.checkpoint import CheckpointError, is_checkpoint  # noqa: E402
from yolodet.cli.options import add_precision_options, add_threads_option, threads_problem  # noqa: E402
from yolodet.data.images import IMAGE_DECODERS
from yolodet.inference.loader import InferenceDataset, default_workers, inference_loader
from yolodet.inference.detector import Detector  # noqa: E402
from yolodet.inference.draw import draw_detections  # noqa: E402
from yolodet.cli.fetch import FetchError, ensure_weights  # noqa: E402
from yolodet.inference.sources import SAMPLE_IMAGE, MediaInput, expand_sources, iter_video_frames, write_image
from yolodet.atomic import atomic_write_bytes
from yolodet.inference.postprocess import Detections  # noqa: E402
from yolodet.inference.preprocess import PREPROCESS_MODES  # noqa: E402
from yolodet.modeling.weights import WeightsError  # noqa: E402

log = logging.getLogger("yolodet.detect")
ROOT = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2
DEFAULT_CFG = ROOT / "cfg" / "yolo-v3-tiny.cfg"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 every input processed; 1 some inputs could not be read (reported, skipped; the others "
               "were processed); 2 nothing could be done (bad cfg/weights/arguments, no readable input).\n"
               "Preprocessing: by default Darknet's own float32 bilinear resize (bit-exact with Darknet), with "
               "AlexeyAB's geometry rule: plain resize unless the cfg's [net] says letter_box=1.")
    p.add_argument("source", nargs="*", help="image/video files, folders or globs (default: a bundled sample image)")
    p.add_argument("--cfg", help=f"Darknet cfg (default: the cfg embedded in a yolodet checkpoint --weights, else "
                                 f"{DEFAULT_CFG.relative_to(ROOT)})")
    p.add_argument("--weights", help="Darknet .weights or yolodet checkpoint (default: weights/<cfg stem>.weights, "
                                     "fetched and md5-verified when it is a known official file)")
    p.add_argument("--names", help="class names, one per line (default: <cfg stem>.names beside the cfg, else "
                                   "cfg/coco.names for 80-class models)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="S", help="network input: S or W H (default: the cfg's)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="Darknet thresh: obj and obj*cls above it (0.25)")
    p.add_argument("--nms-thres", type=float, default=0.45, help="per-class NMS IoU threshold (0.45)")
    pre = p.add_mutually_exclusive_group()
    pre.add_argument("--preprocess", choices=PREPROCESS_MODES, help="preprocessing mode (see below)")
    pre.add_argument("--letterbox", dest="preprocess", action="store_const", const="letterbox",
                     help="OpenCV letterbox (aspect kept, gray fill)")
    pre.add_argument("--resize", dest="preprocess", action="store_const", const="resize", help="OpenCV plain resize")
    pre.add_argument("--darknet-exact", dest="preprocess", action="store_const", const=None,
                     help="Darknet's own resize, geometry from the cfg (the default)")
    p.add_argument("--decoder", choices=IMAGE_DECODERS, help="image decoder (default: stb, Darknet's own, when "
                   "built; else opencv)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_precision_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="images (or video frames) per forward pass (default: 8)")
    p.add_argument("--workers", type=int, help="image reading/resizing processes, overlapping the network "
                                               "(default: the cores torch's threads leave free, at most 2; 0 for a "
                                               "single batch)")
    add_threads_option(p)
    p.add_argument("--output", default="runs/detect", help="output folder (default: %(default)s)")
    p.add_argument("--save-txt", action="store_true", help="also write Darknet label txt files (class cx cy w h)")
    p.add_argument("--no-images", action="store_true", help="do not write annotated images/videos")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


def resolve_names(args: argparse.Namespace, num_classes: int) -> list[str] | None:
    cfg = Path(args.cfg or DEFAULT_CFG)
    for candidate in ([Path(args.names)] if args.names else [cfg.with_suffix(".names"), ROOT / "cfg" / "coco.names"]):
        if candidate.is_file():
            names = [n.strip() for n in candidate.read_text().splitlines() if n.strip()]
            if len(names) == num_classes:
                return names
            if args.names:
                raise ValueError(f"{candidate}: {len(names)} names for a model with {num_classes} classes")
    return None


def detections_json(det: Detections, names: list[str]) -> list[dict]:
    return [{"class_id": int(l), "name": names[l], "score": round(float(s), 6),
             "box_xyxy": [round(float(v), 2) for v in b]}
            for b, s, l in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist())]


def darknet_txt(det: Detections, width: int, height: int) -> str:
    """Darknet's ``-save_labels`` format: ``class cx cy w h`` normalised, one line per detection."""
    lines = []
    for (x1, y1, x2, y2), label in zip(det.boxes.tolist(), det.labels.tolist()):
        lines.append(f"{label} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def report(name: str, det: Detections, names: list[str], ms: float, quiet: bool) -> None:
    if quiet:
        return
    print(f"{name}: Predicted in {ms:.1f} milli-seconds.")
    for (x1, y1, x2, y2), s, l in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        print(f"{names[l]}: {s:.0%}\t(left_x: {x1:4.0f}   top_y: {y1:4.0f}   width: {x2 - x1:4.0f}   "
              f"height: {y2 - y1:4.0f})")


class Run:
    """One detect invocation: the detector, the output folder and what has been written so far."""

    def __init__(self, args: argparse.Namespace, detector: Detector) -> None:
        self.args, self.detector = args, detector
        self.out = Path(args.output)
        self.records: list[dict] = []
        self.failed: list[dict] = []

    def predict(self, images: list[np.ndarray]) -> tuple[list[Detections], float]:
        t0 = time.perf_counter()
        dets = self.detector.predict(images, conf_thres=self.args.conf_thres, nms_thres=self.args.nms_thres,
                                     batch_size=self.args.batch_size)
        return dets, (time.perf_counter() - t0) * 1000 / max(1, len(images))

    def images(self, items: list[MediaInput]) -> None:
        """Batches read and resized by ``DataLoader`` workers (while the network runs on the previous batch)."""
        if not items:
            return
        detector, args = self.detector, self.args
        workers = args.workers if args.workers is not None else default_workers(len(items), args.batch_size)
        # stb_image by default, Darknet's own JPEG decoder, so boxes match the C Darknet's (video frames: OpenCV)
        dataset = InferenceDataset([i.path for i in items], detector.img_size, detector.preprocess_mode,
                                   decoder=args.decoder, keep_original=not args.no_images)
        loader = inference_loader(dataset, batch_size=args.batch_size, workers=workers,
                                  pin_memory=detector.device.type == "cuda")
        for batch in loader:
            for _, path, error in batch.failures:
                log.error("skipped: %s", error)
                self.failed.append({"file": str(path), "error": error})
            if not len(batch):
                continue
            t0 = time.perf_counter()
            dets = [d.to("cpu") for d in detector.infer(batch.images, batch.mappings, conf_thres=args.conf_thres,
                                                        nms_thres=args.nms_thres)]
            ms = (time.perf_counter() - t0) * 1000 / len(batch)
            originals = batch.originals or [None] * len(batch)
            for path, mapping, image, det in zip(batch.paths, batch.mappings, originals, dets):
                self.save(path, (mapping.orig_w, mapping.orig_h), det, ms, image)

    def save(self, path: Path, size: tuple[int, int], det: Detections, ms: float, image: np.ndarray | None,
             frame: int | None = None) -> None:
        """Record one image's (or frame's) detections; draw them on ``image`` unless --no-images."""
        names = self.detector.names
        w, h = size
        stem = path.stem if frame is None else f"{path.stem}_{frame:06d}"
        if frame is None:
            report(str(path), det, names, ms, self.args.quiet)
        self.records.append({"file": str(path), "frame": frame, "width": w, "height": h,
                             "detections": detections_json(det, names)})
        if self.args.save_txt:
            atomic_write_bytes(self.out / "labels" / f"{stem}.txt", darknet_txt(det, w, h).encode())
        if image is not None and frame is None:
            write_image(self.out / f"{stem}{path.suffix if path.suffix.lower() in ('.jpg', '.png') else '.jpg'}",
                        draw_detections(image, det, names))

    def video(self, item: MediaInput) -> None:
        cap = cv2.VideoCapture(str(item.path))
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        cap.release()
        writer, tmp, frames, total_ms = None, self.out / f".{item.path.stem}.tmp.mp4", 0, 0.0
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            for chunk in _chunks(iter_video_frames(item.path), self.args.batch_size):
                dets, ms = self.predict(chunk)
                for frame, det in zip(chunk, dets):
                    self.save(item.path, (frame.shape[1], frame.shape[0]), det, ms, frame, frame=frames)
                    total_ms, frames = total_ms + ms, frames + 1
                    if not self.args.no_images:
                        if writer is None:
                            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                     (frame.shape[1], frame.shape[0]))
                        writer.write(cv2.cvtColor(draw_detections(frame, det, self.detector.names),
                                                  cv2.COLOR_RGB2BGR))
        finally:
            if writer is not None:
                writer.release()
        if frames == 0:
            log.error("skipped: %s: OpenCV cannot read frames from this video", item.path)
            self.failed.append({"file": str(item.path), "error": "no readable frames"})
            tmp.unlink(missing_ok=True)
            return
        if writer is not None:
            tmp.replace(self.out / f"{item.path.stem}.mp4")
        if not self.args.quiet:
            print(f"{item.path}: {frames} frames, {total_ms / frames:.1f} ms per frame")


def _chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Consecutive lists of ``size`` frames (the last one shorter)."""
    chunk = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_detector(args: argparse.Namespace) -> Detector:
    if args.cfg is None and not (args.weights and Path(args.weights).is_file() and is_checkpoint(args.weights)):
        args.cfg = str(DEFAULT_CFG)
    weights = Path(args.weights) if args.weights else ROOT / "weights" / f"{Path(args.cfg).stem}.weights"
    if not args.weights or not weights.exists():
        weights = ensure_weights(weights)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    size = args.img_size[0] if args.img_size and len(args.img_size) == 1 else args.img_size
    detector = Detector.from_cfg(args.cfg, weights, img_size=size, preprocess=args.preprocess, device=device,
                                 precision=args.precision)
    names = resolve_names(args, detector.model.num_classes)
    if names:
        detector.names = names
    return detector


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    problem = threads_problem(args.threads)
    if problem:
        log.error("%s", problem)
        return EXIT_ERROR
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or not 0 <= args.conf_thres <= 1 or not 0 <= args.nms_thres <= 1 \
            or (args.workers is not None and args.workers < 0):
        log.error("--batch-size must be >= 1, --workers >= 0 and the thresholds within [0, 1]")
        return EXIT_ERROR
    inputs, problems = expand_sources(args.source or [str(SAMPLE_IMAGE)])
    for problem in problems:
        log.error("%s", problem)
    if not inputs:
        log.error("no input to process")
        return EXIT_ERROR
    try:
        detector = build_detector(args)
    except (CfgError, WeightsError, CheckpointError, FetchError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    run = Run(args, detector)
    t0 = time.perf_counter()
    run.images([i for i in inputs if i.kind == "image"])
    for item in (i for i in inputs if i.kind == "video"):
        run.video(item)
    elapsed = time.perf_counter() - t0
    summary = {"cfg": args.cfg, "weights": str(args.weights or f"weights/{Path(args.cfg).stem}.weights"),
               "img_size": list(detector.img_size), "preprocess": detector.preprocess_mode,
               "conf_thres": args.conf_thres, "nms_thres": args.nms_thres, "device": str(detector.device),
               "precision": detector.precision}
    atomic_write_bytes(run.out / "detections.json", json.dumps(
        {"model": summary, "images": run.records, "failed": run.failed}, indent=1).encode())
    failed = len(run.failed) + len(problems)
    print(f"{len(run.records)} images/frames, {sum(len(r['detections']) for r in run.records)} detections in "
          f"{elapsed:.2f} s; {failed} inputs failed; results in {run.out}/")
    if not run.records:
        return EXIT_ERROR
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
