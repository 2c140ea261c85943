"""``yolodet detect``: detect objects in images, folders, globs, videos, cameras or streams with a Darknet cfg +
weights; write annotated images/videos, a JSON of detections and (optionally) Darknet-style txt labels."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from yolodet.cli.options import (
    add_device_option,
    add_img_size_option,
    add_inference_input_options,
    add_model_options,
    add_precision_options,
    add_threads_option,
    add_threshold_options,
    apply_threads,
    check_output_dir,
    img_size,
    max_pixels,
    model_files,
)

log = logging.getLogger("yolodet.detect")

HELP = "detect objects in images, folders, videos, cameras and streams (boxes drawn, JSON/txt results)"
EPILOG = """\
Sources: image files, folders, globs, video files, a camera index (0) or an RTSP/RTMP/HTTP(S) stream URL
(default: a bundled sample image). Live sources drop stale frames instead of queueing them; --max-frames or
Ctrl-C end them cleanly with every output written.

Exit codes: 0 every input processed; 1 some inputs could not be read (reported, skipped; the others were
processed); 2 nothing could be done (bad cfg/weights/arguments, no readable input); 130 interrupted before any
frame. Preprocessing: by default Darknet's own float32 bilinear resize (bit-exact with Darknet), with AlexeyAB's
geometry rule: plain resize unless the cfg's [net] says letter_box=1."""

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    from yolodet.data.images import IMAGE_DECODERS
    from yolodet.inference.preprocess import PREPROCESS_MODES
    from yolodet.inference.settings import CONF_THRES, NMS_THRES

    p.epilog = EPILOG
    p.add_argument("source", nargs="*", help="images, folders, globs, videos, camera index or stream URL "
                                             "(default: a bundled sample image)")
    add_model_options(p)
    p.add_argument("--names", help="class names, one per line (default: <cfg stem>.names beside the cfg, else "
                                   "the COCO names for 80-class models)")
    add_img_size_option(p)
    add_threshold_options(p, CONF_THRES, NMS_THRES, "Darknet thresh: objectness and obj*cls above it")
    pre = p.add_mutually_exclusive_group()
    pre.add_argument("--preprocess", choices=PREPROCESS_MODES, help="preprocessing mode (see below)")
    pre.add_argument("--letterbox", dest="preprocess", action="store_const", const="letterbox",
                     help="OpenCV letterbox (aspect kept, gray fill)")
    pre.add_argument("--resize", dest="preprocess", action="store_const", const="resize", help="OpenCV plain resize")
    pre.add_argument("--darknet-exact", dest="preprocess", action="store_const", const=None,
                     help="Darknet's own resize, geometry from the cfg (the default)")
    p.add_argument("--decoder", choices=IMAGE_DECODERS, help="image decoder (default: stb, Darknet's own, when "
                   "built; else opencv)")
    add_device_option(p)
    add_precision_options(p)
    add_inference_input_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="images (or video frames) per forward pass (default: 8)")
    p.add_argument("--workers", type=int, help="image reading/resizing processes, overlapping the network "
                                               "(default: the cores torch's threads leave free, at most 2)")
    add_threads_option(p)
    p.add_argument("--max-frames", type=int, help="at most this many frames from each video, camera or stream")
    p.add_argument("--output", default="runs/detect", help="output folder (default: %(default)s)")
    p.add_argument("--save-txt", action="store_true", help="also write Darknet label txt files (class cx cy w h)")
    p.add_argument("--no-images", action="store_true", help="do not write annotated images/videos")


def resolve_names(names: str | None, cfg: Path | None, num_classes: int) -> list[str] | None:
    """``--names``, else ``<cfg stem>.names`` beside the cfg, else the COCO names for an 80-class model."""
    from yolodet.cfg.shipped import COCO_NAMES
    from yolodet.cli.options import OptionError

    candidates = [Path(names)] if names else ([cfg.with_suffix(".names")] if cfg else []) + [COCO_NAMES]
    for candidate in candidates:
        if candidate.is_file():
            found = [n.strip() for n in candidate.read_text().splitlines() if n.strip()]
            if len(found) == num_classes:
                return found
            if names:
                raise OptionError(f"--names {candidate}: {len(found)} names for a model with {num_classes} classes")
    if names:
        raise OptionError(f"--names {names}: no such file")
    return None


def build_detector(args: argparse.Namespace):
    """The :class:`~yolodet.inference.detector.Detector` the arguments describe (cfg, weights, names)."""
    from yolodet.inference.detector import Detector

    cfg, weights = model_files(args.cfg, args.weights)
    detector = Detector.from_cfg(cfg, weights, img_size=img_size(args.img_size), preprocess=args.preprocess,
                                 device=args.device, precision=args.precision, allow_partial=args.allow_partial,
                                 backend=args.backend, calibration=args.calibrate)
    names = resolve_names(args.names, cfg, detector.model.num_classes)
    if names:
        detector.names = names
    return detector, cfg, weights


def report(frame, names: list[str]) -> None:
    """Darknet's ``detector test`` printout for one image."""
    print(f"{frame.source}: Predicted in {frame.ms:.1f} milli-seconds.")
    det = frame.detections
    for (x1, y1, x2, y2), s, l in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        print(f"{names[l]}: {s:.0%}\t(left_x: {x1:4.0f}   top_y: {y1:4.0f}   width: {x2 - x1:4.0f}   "
              f"height: {y2 - y1:4.0f})")


def run(args: argparse.Namespace) -> int:
    from yolodet.device import resolve_device
    from yolodet.distributed import all_gather, init_from_env, shard
    from yolodet.inference.predict import predict_inputs
    from yolodet.inference.settings import check_counts, check_thresholds
    from yolodet.inference.sources import SAMPLE_IMAGE, expand_sources, video_fps
    from yolodet.inference.writers import DetectionWriter

    apply_threads(args.threads)
    check_thresholds(args.conf_thres, args.nms_thres)
    check_counts(batch_size=args.batch_size, max_frames=args.max_frames, workers=args.workers)
    out = check_output_dir(args.output)
    inputs, problems = expand_sources(args.source or [str(SAMPLE_IMAGE)])
    for problem in problems:
        log.error("%s", problem)
    if not inputs:
        log.error("no input to process")
        return EXIT_ERROR
    world, device = init_from_env(resolve_device(args.device))
    args.device = str(device)
    order = {id(item): n for n, item in enumerate(inputs)}
    if world.size > 1:  # files are split across the ranks; cameras and streams stay on rank 0
        files = [i for i in inputs if not i.live]
        inputs = shard(files, world) + ([i for i in inputs if i.live] if world.main else [])
    detector, cfg, weights = build_detector(args)
    writer = DetectionWriter(out, detector.names, save_images=not args.no_images, save_txt=args.save_txt)
    keys: list[tuple[int, int, int]] = []  # (image 0 / frame 1, input position, frame): the one-process order
    failed_keys: list[tuple[int, int, int]] = []
    fps = {i.name: video_fps(i.path) for i in inputs if i.kind == "video"}
    frames: dict[str, int] = {}
    t0, interrupted = time.perf_counter(), False
    try:
        for frame in predict_inputs(detector, inputs, conf_thres=args.conf_thres, nms_thres=args.nms_thres,
                                    batch_size=args.batch_size, workers=args.workers, decoder=args.decoder,
                                    keep_images=not args.no_images, max_frames=args.max_frames,
                                    max_image_pixels=max_pixels(args.max_image_pixels)):
            if frame.error is not None:
                log.error("skipped: %s", frame.error)
            elif frame.index is None and not args.quiet:
                report(frame, detector.names)
            elif frame.index is not None:
                frames[frame.source] = frames.get(frame.source, 0) + 1
            writer.add(frame, fps.get(frame.source, 25.0))
            key = (0 if frame.input.kind == "image" else 1, order.get(id(frame.input), -1), frame.index or 0)
            (failed_keys if frame.error is not None else keys).append(key)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing the results so far")
    elapsed = time.perf_counter() - t0
    settings = {"cfg": str(cfg) if cfg else "(embedded in the checkpoint)", "weights": str(weights),
                "img_size": list(detector.img_size), "preprocess": detector.preprocess_mode,
                "conf_thres": args.conf_thres, "nms_thres": args.nms_thres, "device": str(detector.device),
                "precision": detector.precision}
    if world.size > 1:
        parts = all_gather((keys, writer.records, failed_keys, writer.failed), world)
        first = lambda pair: pair[0]  # noqa: E731
        writer.records = [r for _, r in sorted(((k, r) for p in parts for k, r in zip(p[0], p[1])), key=first)]
        writer.failed = [f for _, f in sorted(((k, f) for p in parts for k, f in zip(p[2], p[3])), key=first)]
    writer.close(settings, write_json=world.main)
    if not world.main:
        return EXIT_OK
    if not args.quiet:
        for source, count in frames.items():
            print(f"{source}: {count} frames")
    failed = len(writer.failed) + len(problems)
    print(f"{len(writer.records)} images/frames, {sum(len(r['detections']) for r in writer.records)} detections in "
          f"{elapsed:.2f} s; {failed} inputs failed; results in {out}/")
    if not writer.records:
        return 130 if interrupted else EXIT_ERROR
    return EXIT_PARTIAL if failed else EXIT_OK
