"""The one internal dataset format every reader produces, and the label checks they share.

A reader turns a dataset on disk (Darknet lists, COCO json, Pascal VOC xml) into a :class:`DatasetSource`:
class names, one :class:`Sample` per usable image, and a :class:`LabelIssue` for every label that was clipped
or skipped. Bad labels never raise; only a dataset that cannot be read at all raises :class:`DatasetError`.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from yolodet.errors import YolodetError

__all__ = [
    "DatasetError", "DatasetSource", "LabelIssue", "Sample", "checked_box", "empty_sample_arrays", "stack_labels",
]

# Coordinates within this distance outside [0, 1] are float noise from label converters: clipped silently.
_CLIP_TOLERANCE = 1e-6


class DatasetError(YolodetError, ValueError):
    """The dataset as a whole is unusable (missing ``.data``/names/annotation file, json that is not COCO)."""


@dataclass(frozen=True)
class Sample:
    """One image and its boxes.

    Attributes:
        image: path of the image file (it existed when the dataset was read).
        boxes: ``float32[N, 4]`` boxes ``(x1, y1, x2, y2)`` normalised to ``[0, 1]`` by the image width/height,
            clipped to the image, each with positive area.
        labels: ``int64[N]`` 0-based class indices into :attr:`DatasetSource.names`.
        image_id: the COCO image id when known, else a stable running index (see each reader).
        width, height: original pixel size when known without decoding the image (COCO json, VOC ``<size>``).
    """

    image: pathlib.Path
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class LabelIssue:
    """A label (or image) that a reader clipped or skipped.

    Attributes:
        file: the file the problem was found in (label txt, xml, json, image list, ``.data``).
        line: 1-based line number for text files; 1-based ``<object>`` index for VOC xml; ``None`` for COCO json
            (``what`` then names the annotation or image id).
        what: what was wrong, e.g. ``"x2=1.2 outside [0, 1]"``.
        action: what the reader did: ``"clipped"``, ``"skipped label"``, ``"skipped image"``,
            ``"no objects"`` (image kept without boxes), ``"ignored"``.
        severity: ``"info"`` for expected situations (e.g. an image without a label file, as Darknet treats
            it), ``"warning"`` for data errors.
    """

    file: pathlib.Path
    line: int | None
    what: str
    action: str
    severity: Literal["info", "warning"] = "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        return f"{where}: {self.what} -> {self.action}"


@dataclass
class DatasetSource:
    """A dataset read into the internal format.

    Attributes:
        names: class names; ``Sample.labels`` index into this list.
        samples: usable images, in the dataset's own order.
        issues: every clipped/skipped label or image, in reading order.
        category_ids: for COCO sources, the json category id of each class index (``len == len(names)``) so
            results can be mapped back; ``None`` otherwise (then ids ``1..N`` are used, see ``to_coco_gt``).
    """

    names: list[str]
    samples: list[Sample]
    issues: list[LabelIssue]
    category_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.category_ids is not None and len(self.category_ids) != len(self.names):
            raise ValueError(
                f"category_ids has {len(self.category_ids)} entries but names has {len(self.names)}"
            )

    @property
    def num_boxes(self) -> int:
        """Total number of boxes over all samples."""
        return sum(len(s.labels) for s in self.samples)


def empty_sample_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(float32[0, 4], int64[0])``: boxes and labels of an image without objects."""
    return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.int64)


def checked_box(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    *,
    file: pathlib.Path,
    line: int | None,
    issues: list[LabelIssue],
    context: str = "",
) -> tuple[float, float, float, float] | None:
    """Validate a normalised ``xyxy`` box: clip it to ``[0, 1]`` and drop it when degenerate.

    Appends a :class:`LabelIssue` to ``issues`` when the box is clipped (a coordinate more than 1e-6 outside
    ``[0, 1]``) or skipped (non-finite coordinate, or zero/negative width or height after clipping).

    Args:
        x1, y1, x2, y2: box corners as fractions of the image width/height.
        file, line: where the label came from (copied into the issue).
        issues: list the issues are appended to.
        context: prefix for the issue text, e.g. ``"annotation id 7: "``.

    Returns:
        The clipped box, or ``None`` when the box must be skipped.
    """
    coords = {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
    bad = [k for k, v in coords.items() if not math.isfinite(v)]
    if bad:
        issues.append(LabelIssue(file, line, f"{context}non-finite coordinate {', '.join(bad)}", "skipped label"))
        return None
    outside = [f"{k}={v:.6g}" for k, v in coords.items() if v < -_CLIP_TOLERANCE or v > 1 + _CLIP_TOLERANCE]
    cx1, cy1, cx2, cy2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
    if cx2 <= cx1 or cy2 <= cy1:
        issues.append(LabelIssue(
            file, line,
            f"{context}degenerate box x1={x1:.6g} y1={y1:.6g} x2={x2:.6g} y2={y2:.6g} (no area inside the image)",
            "skipped label",
        ))
        return None
    if outside:
        issues.append(LabelIssue(file, line, f"{context}{' '.join(outside)} outside [0, 1]", "clipped"))
    return cx1, cy1, cx2, cy2


def stack_labels(
    boxes: list[tuple[float, float, float, float]], labels: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Lists of boxes/labels -> ``(float32[N, 4], int64[N])`` arrays (the empty case keeps the shapes)."""
    if not boxes:
        return empty_sample_arrays()
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)
