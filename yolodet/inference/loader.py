"""Inference input pipeline: read and preprocess images in ``DataLoader`` workers; unreadable images are reported.

Used by evaluation (:mod:`yolodet.evaluation`) and detection (``tools/detect.py``)::

    dataset = InferenceDataset(paths, (416, 416), "darknet-letterbox")
    for batch in inference_loader(dataset, batch_size=8, workers=2):
        dets = detector.infer(batch.images, batch.mappings)     # batch.images: float32[B, 3, h, w]
        for path, error in batch.failures: ...                 # images that could not be read

An image that cannot be read (missing, empty, corrupt) never raises out of the loader: its item carries the
error text and :func:`collate_inference` moves it to ``InferenceBatch.failures``. A batch may therefore hold
fewer images than ``batch_size``, or none at all (``len(batch) == 0``).

Images are read by :mod:`yolodet.data.images` (``decoder=``: stb_image, Darknet's own, or OpenCV).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from yolodet.data.images import DEFAULT_MAX_PIXELS, ImageReadError, default_decoder, image_reader
from yolodet.inference.preprocess import Mapping, preprocess
from yolodet.inference.settings import check_counts

log = logging.getLogger(__name__)

__all__ = ["InferenceBatch", "InferenceDataset", "InferenceItem", "collate_inference", "default_workers",
           "inference_loader"]

@dataclass
class InferenceItem:
    """One image as produced by :class:`InferenceDataset`.

    Attributes:
        index: position in the dataset's path list.
        path: the image file.
        image: network input ``float32[3, net_h, net_w]`` in [0, 1]; None when the image could not be read.
        mapping: network-input pixels -> original pixels; None when unreadable.
        original: the RGB ``uint8[H, W, 3]`` image when the dataset keeps originals (for drawing), else None.
        error: why the image could not be read; None when it was.
    """

    index: int
    path: Path
    image: np.ndarray | None
    mapping: Mapping | None
    original: np.ndarray | None = None
    error: str | None = None


@dataclass
class InferenceBatch:
    """Readable images stacked for the network, and the failures of the same slice of the dataset.

    Attributes:
        images: ``float32[B, 3, net_h, net_w]`` (``B`` may be 0).
        mappings, indices, paths: one per stacked image, in dataset order.
        originals: RGB ``uint8[H, W, 3]`` per stacked image when kept, else an empty list.
        failures: ``(index, path, error)`` of every unreadable image in this slice.
    """

    images: torch.Tensor
    mappings: list[Mapping]
    indices: list[int]
    paths: list[Path]
    originals: list[np.ndarray] = field(default_factory=list)
    failures: list[tuple[int, Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> "InferenceBatch":
        """Called by ``DataLoader(pin_memory=True)`` for custom batch types."""
        self.images = self.images.pin_memory()
        return self


class InferenceDataset(Dataset):
    """Image files -> preprocessed network inputs (see :func:`yolodet.preprocess.preprocess`).

    Args:
        paths: image files, in the order results should come back.
        size: network input ``(net_w, net_h)``.
        mode: one of :data:`yolodet.preprocess.PREPROCESS_MODES`.
        decoder: one of ``IMAGE_DECODERS``; None: :func:`default_decoder`.
        keep_original: also return the decoded RGB image (``tools/detect.py`` draws on it).
        max_pixels: an image with more pixels is reported as unreadable (from its header, before decoding);
            None: no limit.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], size: tuple[int, int], mode: str, *,
                 decoder: str | None = None, keep_original: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.paths = [Path(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        self.mode = mode
        self.decoder = decoder or default_decoder()
        # a partial of a module-level function: picklable for worker processes
        self._read = image_reader(self.decoder, max_pixels=max_pixels)
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> InferenceItem:
        path = self.paths[index]
        try:
            image = self._read(path)
            array, mapping = preprocess(image, self.size, self.mode)
        except (ImageReadError, ValueError, OSError) as exc:  # ValueError: e.g. a zero-sized decoded image
            return InferenceItem(index, path, None, None, error=str(exc))
        return InferenceItem(index, path, array, mapping, image if self.keep_original else None)


def collate_inference(items: Sequence[InferenceItem]) -> InferenceBatch:
    """Stack the readable items of a batch; unreadable ones go to ``failures``."""
    ok = [it for it in items if it.image is not None]
    failures = [(it.index, it.path, it.error or "unreadable") for it in items if it.image is None]
    if ok:
        images = torch.from_numpy(np.stack([it.image for it in ok]))
    else:
        images = torch.zeros((0, 3, 0, 0), dtype=torch.float32)
    originals = [it.original for it in ok if it.original is not None]
    return InferenceBatch(images, [it.mapping for it in ok], [it.index for it in ok], [it.path for it in ok],
                          originals, failures)


def default_workers(images: int, batch_size: int) -> int:
    """Loader processes for ``images`` images: the cores torch's threads leave idle, at most 2, and none for a
    single batch. Workers are spawned (forked ones can deadlock after OpenCV/torch threads ran) and each first
    imports torch: ~3 s before the first batch. On a 2-core machine with 2 torch threads a worker only competes
    with the network: coco128 evaluation took 4.9 s with none and 8.7 s with two."""
    if images <= batch_size:
        return 0
    return min(2, max(0, (os.cpu_count() or 1) - torch.get_num_threads()))


def inference_loader(dataset: InferenceDataset, *, batch_size: int = 8, workers: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """An in-order ``DataLoader`` of :class:`InferenceBatch` over ``dataset``.

    ``workers`` > 0 decodes and resizes in that many processes (the Darknet resize is numpy, so it parallelises
    across processes, not threads). Workers are *spawned*, not forked: a worker forked from a process in which
    OpenCV or torch already ran multi-threaded can deadlock on a lock held by a thread that no longer exists (seen
    in training; the training loader does the same).
    """
    check_counts(batch_size=batch_size, workers=workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_inference, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if workers else None,
                      multiprocessing_context="spawn" if workers else None)
