"""Training input pipeline: a :class:`DatasetSource` -> augmented uint8 batches at the (multi-scale) network size.

The batch sampler decides everything random about *which* images go where: the epoch's order, each batch's
network size, and one seed per sample. The dataset turns ``(index, size, seed)`` into an augmented sample using
only that seed. So a run is reproducible whatever the number of workers, and a resumed run continues exactly
(the sampler can skip the batches an interrupted epoch already did).

Multi-scale (a ``[yolo]`` layer with ``random=1``, AlexeyAB ``detector.c``): every 10 optimiser steps the size
becomes ``round(r * init / 32 + 1) * 32`` with ``r = rand_scale(1.4)`` (or ``rand_scale(random)`` when
``random`` is another number), never above ``init`` when ``r < 1``; width and height scale together.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from yolodet.data.sample import DatasetSource
from yolodet.data.transforms import FILL, AugmentConfig, build_transform
from yolodet.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from yolodet.errors import SettingError

log = logging.getLogger(__name__)

__all__ = ["TrainBatch", "TrainBatchSampler", "TrainDataset", "collate_train", "multiscale_size", "worker_init"]

Key = tuple[int, tuple[int, int], int]
"""What the sampler yields per sample: ``(dataset index, (net_w, net_h), augmentation seed)``."""

SIZE_STEP = 32
SIZE_EVERY = 10  # optimiser steps between size changes, as Darknet


def multiscale_size(base: tuple[int, int], block: int, seed: int, factor: float = 1.4) -> tuple[int, int]:
    """Darknet's random network size for the ``block``-th group of 10 steps (deterministic in its arguments)."""
    rng = np.random.default_rng([seed, 0x5C41E, block])
    r = 1.0 + (factor - 1.0) * rng.random()
    r = r if rng.random() < 0.5 else 1.0 / r
    dims = [max(SIZE_STEP, round(r * d / SIZE_STEP + 1) * SIZE_STEP) for d in base]
    if r < 1 and (dims[0] > base[0] or dims[1] > base[1]):
        dims = list(base)
    return dims[0], dims[1]


class TrainBatchSampler(Sampler[list[Key]]):
    """Shuffled mini-batches of :data:`Key` for one epoch at a time (call :meth:`set_epoch` first).

    Args:
        num_samples: dataset length.
        batch_size: images per mini-batch (one forward pass).
        size: base network size ``(w, h)``.
        seed: run seed; order, sizes and augmentation follow from ``(seed, epoch, batch)``.
        multiscale: 0 = fixed size; else the ``random`` factor (1 means Darknet's 1.4).
        accumulate: mini-batches per optimiser step (sizes change every 10 *steps*).
    """

    def __init__(self, num_samples: int, batch_size: int, *, size: tuple[int, int], seed: int = 0,
                 multiscale: float = 0.0, accumulate: int = 1) -> None:
        if num_samples < 1 or batch_size < 1 or accumulate < 1:
            raise SettingError(f"need num_samples, batch_size, accumulate >= 1; got {num_samples}, {batch_size}, "
                             f"{accumulate}")
        self.num_samples, self.batch_size, self.size, self.seed = num_samples, batch_size, size, seed
        self.factor = 1.4 if multiscale == 1 else float(multiscale)
        self.accumulate = accumulate
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the last one may use fewer mini-batches)."""
        return math.ceil(self.batches_per_epoch / self.accumulate)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` mini-batches (an interrupted epoch being resumed)."""
        self.epoch, self.start = epoch, start

    def size_for(self, epoch: int, batch: int) -> tuple[int, int]:
        """Network size of mini-batch ``batch`` of ``epoch``."""
        if not self.factor:
            return self.size
        step = epoch * self.steps_per_epoch + batch // self.accumulate
        return multiscale_size(self.size, step // SIZE_EVERY, self.seed, self.factor)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)

    def __iter__(self) -> Iterator[list[Key]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        for k in range(self.start, self.batches_per_epoch):
            chunk = order[k * self.batch_size:(k + 1) * self.batch_size]
            seeds = np.random.default_rng([self.seed, self.epoch, k, 1]).integers(0, 2**62, len(chunk))
            size = self.size_for(self.epoch, k)
            yield [(int(i), size, int(s)) for i, s in zip(chunk, seeds)]


@dataclass
class TrainItem:
    image: torch.Tensor  # uint8 [3, h, w]
    targets: torch.Tensor  # float32 [N, 5]: class, x1, y1, x2, y2 (fractions of the network input)
    index: int


class TrainDataset(Dataset):
    """``dataset[(index, (w, h), seed)]`` -> :class:`TrainItem`, or None when the image cannot be read (logged
    once per image; the batch simply holds one image less).

    Args:
        source: the samples (boxes normalised xyxy).
        aug: augmentation settings (see :class:`AugmentConfig`).
        cache: keep decoded images in memory (per worker process; use persistent workers).
        max_pixels: an image with more pixels is skipped as unreadable (from its header, before decoding);
            None: no limit.
    """

    def __init__(self, source: DatasetSource, aug: AugmentConfig, *, cache: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.source, self.aug, self.cache = source, aug, cache
        self.max_pixels = max_pixels
        self._images: dict[int, np.ndarray] = {}
        self._bad: set[int] = set()
        self._pipelines: dict[tuple[int, int], object] = {}

    def __len__(self) -> int:
        return len(self.source.samples)

    def load_image(self, index: int) -> np.ndarray | None:
        """RGB uint8 [H, W, 3] of sample ``index``; None (logged once) when unreadable."""
        if index in self._images:
            return self._images[index]
        if index in self._bad:
            return None
        try:
            image = read_image(self.source.samples[index].image, max_pixels=self.max_pixels)
        except ImageReadError as exc:
            self._bad.add(index)
            log.warning("skipping unreadable training image: %s", exc)
            return None
        if self.cache:
            self._images[index] = image
        return image

    def __getitem__(self, key: Key) -> TrainItem | None:
        index, size, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues GPU seeding
            if self.aug.mosaic:
                others = torch.randint(0, len(self), (3,)).tolist()
                parts = [self._augmented(i, size) for i in [index, *others]]
                if parts[0] is None:
                    return None
                image, boxes, labels = _mosaic(parts, size)
            else:
                part = self._augmented(index, size)
                if part is None:
                    return None
                image, boxes, labels = part
        scale = boxes.new_tensor([size[0], size[1], size[0], size[1]])
        targets = torch.cat((labels[:, None].float(), boxes / scale), 1)
        return TrainItem(image.as_subclass(torch.Tensor), targets, index)

    def _augmented(self, index: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        image = self.load_image(index)
        if image is None:
            return None
        sample = self.source.samples[index]
        h, w = image.shape[:2]
        boxes = torch.from_numpy(sample.boxes) * torch.tensor([w, h, w, h], dtype=torch.float32)
        data = {"image": tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
                "labels": torch.from_numpy(sample.labels)}
        if size not in self._pipelines:
            self._pipelines[size] = build_transform(size, self.aug)
        out = self._pipelines[size](data)
        return out["image"], out["boxes"].as_subclass(torch.Tensor), out["labels"]


def _mosaic(parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None],
            size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four augmented images at network size -> one: a random centre splits the canvas into quadrants, each
    filled with a random window of one image (AlexeyAB's ``mosaic=1``, simplified placement)."""
    w, h = size
    cx, cy = round(w * (0.2 + 0.6 * torch.rand(()).item())), round(h * (0.2 + 0.6 * torch.rand(()).item()))
    canvas = torch.full((3, h, w), FILL, dtype=torch.uint8)
    all_boxes, all_labels = [], []
    quadrants = ((0, 0, cx, cy), (cx, 0, w, cy), (0, cy, cx, h), (cx, cy, w, h))
    for part, (x0, y0, x1, y1) in zip(parts, quadrants):
        if part is None or x1 <= x0 or y1 <= y0:
            continue
        image, boxes, labels = part
        qw, qh = x1 - x0, y1 - y0
        left, top = int(torch.randint(0, w - qw + 1, ()).item()), int(torch.randint(0, h - qh + 1, ()).item())
        canvas[:, y0:y1, x0:x1] = image[:, top:top + qh, left:left + qw]
        bb = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
        bb = F.pad(F.crop(bb, top, left, qh, qw), [x0, y0, w - x1, h - y1])
        keep = ((bb[:, 2] - bb[:, 0]) >= 1) & ((bb[:, 3] - bb[:, 1]) >= 1)
        all_boxes.append(bb.as_subclass(torch.Tensor)[keep])
        all_labels.append(labels[keep])
    if not all_boxes:
        return canvas, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    return canvas, torch.cat(all_boxes), torch.cat(all_labels)


@dataclass
class TrainBatch:
    """Attributes: images uint8 [B, 3, h, w]; targets [M, 6] ``(image index, class, x1, y1, x2, y2)`` as
    fractions of the input; indices: dataset index of each image."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> "TrainBatch":
        """Called by ``DataLoader(pin_memory=True)`` for custom batch types."""
        self.images, self.targets = self.images.pin_memory(), self.targets.pin_memory()
        return self


def collate_train(items: Sequence[TrainItem | None]) -> TrainBatch:
    """Stack the readable items (all the same size: one batch has one network size)."""
    items = [it for it in items if it is not None]
    if not items:
        return TrainBatch(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 6), [])
    targets = [torch.cat((torch.full((len(it.targets), 1), float(i)), it.targets), 1) for i, it in enumerate(items)]
    return TrainBatch(torch.stack([it.image for it in items]), torch.cat(targets), [it.index for it in items])


def worker_init(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: Ctrl-C belongs to the main process (it saves a checkpoint, then exits),
    and one OpenCV thread per worker (the main process computes on the other cores).

    Warning: start workers with ``multiprocessing_context="spawn"``: a worker *forked* from a process in which
    OpenCV already ran multi-threaded (``cv2.dnn``, a large ``cv2.resize``) deadlocks in its first OpenCV call.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
