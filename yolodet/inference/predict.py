"""Prediction over sources as an iterator of per-frame results::

    detector = Detector.from_cfg("yolo-v3-tiny.cfg", "yolov3-tiny.weights")
    for frame in predict(detector, ["photos/", "clip.mp4", "rtsp://camera/stream", "0"]):
        if frame.error:
            print("skipped", frame.source, frame.error)
        else:
            frame.detections            # boxes xyxy in original pixels, scores, labels (on the CPU)

Images are read and resized in ``DataLoader`` workers (:mod:`yolodet.inference.loader`) while the network runs;
video files are read frame by frame in order; cameras and streams through :class:`~.sources.LiveCapture`, one
frame at a time, the newest first. Memory stays bounded whatever the source. The results go to
:class:`yolodet.inference.writers.DetectionWriter` (annotated images/videos, JSON, Darknet txt) or anywhere else.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from yolodet.data.images import DEFAULT_MAX_PIXELS
from yolodet.inference.detector import Detector
from yolodet.inference.loader import InferenceDataset, default_workers, inference_loader
from yolodet.inference.postprocess import Detections
from yolodet.inference.settings import CONF_THRES, NMS_THRES, check_counts, check_thresholds
from yolodet.inference.sources import LiveCapture, MediaInput, SourceError, expand_sources, iter_video_frames

log = logging.getLogger(__name__)

__all__ = ["Frame", "predict", "predict_inputs"]


@dataclass
class Frame:
    """One image's or video frame's result, or one input that failed (``error`` set, ``detections`` None).

    Attributes:
        input: the :class:`MediaInput` it came from (``input.name`` is what the user wrote).
        index: frame number within a video or stream (0-based); None for an image.
        size: original (width, height).
        image: the original RGB ``uint8[H, W, 3]`` when ``keep_images`` (for drawing), else None.
        detections: boxes xyxy in original pixels, scores, labels.
        ms: network time per image of its batch, in milliseconds (decode and NMS included).
        error: why the input (or the rest of a stream) could not be read.
    """

    input: MediaInput
    index: int | None = None
    size: tuple[int, int] = (0, 0)
    image: np.ndarray | None = None
    detections: Detections | None = None
    ms: float = 0.0
    error: str | None = None

    @property
    def source(self) -> str:
        return self.input.name


def predict(detector: Detector, sources: Sequence[str], **kwargs) -> Iterator[Frame]:
    """Expand ``sources`` (files, folders, globs, videos, camera indices, stream URLs; see
    :func:`~yolodet.inference.sources.expand_sources`) and predict each; see :func:`predict_inputs` for the
    keyword arguments. A source that matches nothing yields one :class:`Frame` with ``error`` set."""
    inputs, problems = expand_sources(list(sources))
    for problem in problems:
        yield Frame(MediaInput(None, "missing", problem.split(":", 1)[0]), error=problem)
    yield from predict_inputs(detector, inputs, **kwargs)


def predict_inputs(detector: Detector, inputs: Iterable[MediaInput], *, conf_thres: float = CONF_THRES,
                   nms_thres: float = NMS_THRES, batch_size: int = 8, workers: int | None = None,
                   decoder: str | None = None, keep_images: bool = True, max_frames: int | None = None,
                   max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[Frame]:
    """Predict every input in order: all images first (batched, read ahead by ``workers`` processes), then each
    video, camera and stream.

    Args:
        conf_thres, nms_thres: Darknet's ``detector test`` thresholds (checked).
        batch_size: images (or video-file frames) per forward pass; live sources run one frame at a time.
        workers: image-reading processes; None: the cores torch's threads leave free (at most 2).
        decoder: ``"stb"`` (Darknet's JPEG decoder, the default when built) or ``"opencv"``.
        keep_images: attach each original image to its :class:`Frame` (needed to draw boxes).
        max_frames: at most this many frames from each video, camera or stream (None: until it ends).
        max_image_pixels: images above this many pixels are refused from their header (None: no limit).
    """
    check_thresholds(conf_thres, nms_thres)
    check_counts(batch_size=batch_size, max_frames=max_frames, workers=workers)
    inputs = list(inputs)
    if inputs:
        detector.build()  # the optimised copy (int8: its calibration) before any frame is timed
    settings = dict(conf_thres=conf_thres, nms_thres=nms_thres)
    images = [i for i in inputs if i.kind == "image"]
    if images:
        yield from _images(detector, images, batch_size=batch_size, workers=workers, decoder=decoder,
                           keep_images=keep_images, max_pixels=max_image_pixels, **settings)
    for item in inputs:
        if item.kind == "video":
            yield from _video_file(detector, item, batch_size, keep_images, max_frames, **settings)
        elif item.live:
            yield from _live(detector, item, keep_images, max_frames, **settings)


def _images(detector: Detector, items: list[MediaInput], *, batch_size: int, workers: int | None,
            decoder: str | None, keep_images: bool, max_pixels: int | None, conf_thres: float,
            nms_thres: float) -> Iterator[Frame]:
    workers = workers if workers is not None else default_workers(len(items), batch_size)
    by_path = {str(i.path): i for i in items}
    dataset = InferenceDataset([i.path for i in items], detector.img_size, detector.preprocess_mode,
                               decoder=decoder, keep_original=keep_images, max_pixels=max_pixels)
    loader = inference_loader(dataset, batch_size=batch_size, workers=workers,
                              pin_memory=detector.device.type == "cuda")
    for batch in loader:
        for _, path, error in batch.failures:
            yield Frame(by_path.get(str(path), MediaInput(Path(path), "image")), error=error)
        if not len(batch):
            continue
        t0 = time.perf_counter()
        dets = [d.to("cpu") for d in detector.infer(batch.images, batch.mappings, conf_thres=conf_thres,
                                                    nms_thres=nms_thres)]
        ms = (time.perf_counter() - t0) * 1000 / len(batch)
        originals = batch.originals or [None] * len(batch)
        for path, mapping, image, det in zip(batch.paths, batch.mappings, originals, dets):
            yield Frame(by_path.get(str(path), MediaInput(Path(path), "image")), None,
                        (mapping.orig_w, mapping.orig_h), image, det, ms)


def _run_frames(detector: Detector, item: MediaInput, frames: list[np.ndarray], first: int, keep_images: bool,
                conf_thres: float, nms_thres: float) -> list[Frame]:
    t0 = time.perf_counter()
    dets = detector.predict(frames, conf_thres=conf_thres, nms_thres=nms_thres, batch_size=len(frames))
    ms = (time.perf_counter() - t0) * 1000 / len(frames)
    return [Frame(item, first + k, (f.shape[1], f.shape[0]), f if keep_images else None, d, ms)
            for k, (f, d) in enumerate(zip(frames, dets))]


def _video_file(detector: Detector, item: MediaInput, batch_size: int, keep_images: bool, max_frames: int | None,
                **settings: float) -> Iterator[Frame]:
    count, chunk = 0, []
    for frame in iter_video_frames(item.path, max_frames):
        chunk.append(frame)
        if len(chunk) == batch_size:
            yield from _run_frames(detector, item, chunk, count, keep_images, **settings)
            count, chunk = count + len(chunk), []
    if chunk:
        yield from _run_frames(detector, item, chunk, count, keep_images, **settings)
        count += len(chunk)
    if count == 0:
        yield Frame(item, error=f"{item.name}: OpenCV cannot read frames from this video")


def _live(detector: Detector, item: MediaInput, keep_images: bool, max_frames: int | None,
          **settings: float) -> Iterator[Frame]:
    try:
        capture = LiveCapture(item, max_frames=max_frames)
    except SourceError as exc:
        yield Frame(item, error=str(exc))
        return
    count = 0
    with capture:
        for frame in capture:
            yield from _run_frames(detector, item, [frame], count, keep_images, **settings)
            count += 1
    log.info("%s: %d frames processed, %d dropped while the network was busy", item.name, count, capture.dropped)
    if count == 0:
        yield Frame(item, error=f"{item.name}: the stream delivered no frame" +
                    (f" ({capture.error})" if capture.error else ""))
