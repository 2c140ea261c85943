"""The settings every entry point shares, defined once: the network input size and the thresholds.

The CLI's options, :class:`~yolodet.inference.detector.Detector`, :func:`yolodet.evaluation.evaluate` and the
trainer all check their values here, so a bad value gets the same message from each.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Sequence

from yolodet.errors import SettingError

if TYPE_CHECKING:  # pragma: no cover
    from yolodet.modeling.model import Darknet

__all__ = ["CONF_THRES", "EVAL_CONF_THRES", "MAX_IMG_SIZE", "NMS_THRES", "SettingsError", "check_counts",
           "check_thresholds", "check_workers", "max_workers", "parse_size"]

MAX_IMG_SIZE = 8192
"""Largest network input side accepted (a 8192 x 8192 input already needs ~800 MB per image in the first layer)."""

CONF_THRES = 0.25
"""Darknet's ``detector test`` threshold: objectness above it, then every class whose ``obj * cls`` is above it."""
EVAL_CONF_THRES = 0.005
"""The candidate threshold of COCO evaluation (pjreddie's ``detector valid``, AlexeyAB's ``detector map``)."""
NMS_THRES = 0.45
"""Per-class NMS IoU threshold of Darknet's ``detector test`` and ``valid``."""


class SettingsError(SettingError):
    """An input size or threshold out of its range."""


def parse_size(size: int | Sequence[int] | None, model: "Darknet") -> tuple[int, int]:
    """The network input (width, height): ``None`` -> the cfg's; ``416`` or ``[416]`` -> (416, 416);
    ``(w, h)`` as is. Anything else (three values, non-integers) is an error, and so is a size that is not a
    positive multiple of the largest head stride.

    Raises:
        SettingsError: the message names the value and the stride.
    """
    if size is None:
        w, h = model.net.width, model.net.height
    else:
        values = [size] if isinstance(size, int) else list(size)
        if len(values) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise SettingsError(f"image size {size!r}: give one integer S (S x S) or two, W H")
        w, h = (values[0], values[0]) if len(values) == 1 else (values[0], values[1])
    if max(w, h) > MAX_IMG_SIZE:
        raise SettingsError(f"image size {w}x{h}: at most {MAX_IMG_SIZE} per side")
    stride = max((head.stride for head in model.heads), default=1)
    if w < 1 or h < 1 or (model.heads and (w % stride or h % stride)):
        raise SettingsError(f"image size {w}x{h} must be a positive multiple of the largest head stride ({stride})")
    return w, h


def check_thresholds(conf_thres: float | None = None, nms_thres: float | None = None) -> None:
    """``conf_thres`` must lie in [0, 1) and ``nms_thres`` in (0, 1] (None: not checked).

    Raises:
        SettingsError: naming the threshold and its value.
    """
    if conf_thres is not None and not (math.isfinite(conf_thres) and 0 <= conf_thres < 1):
        raise SettingsError(f"conf_thres must be in [0, 1), got {conf_thres}")
    if nms_thres is not None and not (math.isfinite(nms_thres) and 0 < nms_thres <= 1):
        raise SettingsError(f"nms_thres must be in (0, 1], got {nms_thres}")


def max_workers() -> int:
    """The most loader processes (or threads) accepted: four per CPU core."""
    return 4 * (os.cpu_count() or 1)


def check_counts(*, batch_size: int | None = None, max_frames: int | None = None,
                 workers: int | None = None) -> None:
    """``batch_size`` and ``max_frames`` must be >= 1 and ``workers`` within :func:`check_workers`' range (None:
    not checked); one check for the library and the CLI, so a bad value fails before a model is loaded.

    Raises:
        SettingsError: naming the setting and its value.
    """
    for name, value in (("batch_size", batch_size), ("max_frames", max_frames)):
        if value is not None and value < 1:
            raise SettingsError(f"{name} must be >= 1, got {value}")
    check_workers(workers)


def check_workers(workers: int | None, what: str = "workers") -> None:
    """``workers`` (loader processes, or CPU threads) must be >= 0 and at most :func:`max_workers`: a typo such as
    ``--workers 99999`` must not start 99999 processes.

    Raises:
        SettingsError: naming the value and the limit.
    """
    if workers is not None and not 0 <= workers <= max_workers():
        raise SettingsError(f"{what} must be in [0, {max_workers()}] (four per CPU core), got {workers}")
