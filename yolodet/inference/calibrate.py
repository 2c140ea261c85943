"""Activation ranges for int8 inference (:mod:`yolodet.inference.quantize`): run the fp32 model over calibration
images and keep, for every layer, the range of its output.

A :class:`Calibration` holds one ``(low, high)`` per layer output plus the network input: the mean over the
calibration images of each image's minimum and maximum (the average of per-image extremes, as PyTorch's
``MovingAverageMinMaxObserver`` keeps it: one image with a rare outlier does not stretch a layer's range for all,
and values outside the range are clamped). The ranges are stored, not the quantised model: one calibration file
serves CPUs with and without VNNI, whose int8 weight scales differ (they are computed when the model is built).

Calibration sources: a folder of images (``.jpg``, ``.png`` ...; at least 1, a few dozen from the deployment's own
domain is best), a list of RGB uint8 images, or ``None``: the bundled sample image (``yolodet/assets/zebras.jpg``)
and its mirror image -- enough to run, not to calibrate well (see :data:`DEFAULT_NOTE`).

An int8 file (``yolodet quantize``, :func:`save_int8`) is a yolodet checkpoint (:mod:`yolodet.modeling.checkpoint`:
the cfg text and the fp32 state dict, written atomically, read with ``torch.load(weights_only=True)``, no code
unpickled) with one more entry, ``"int8": {"ranges": float64 [L + 1, 2], "images": int, "source": str}``. Every
tool that takes ``--weights`` reads it as the fp32 model it also is; ``--precision int8`` (or ``--half`` where that
is int8) uses its calibration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from yolodet.data.images import read_image
from yolodet.errors import YolodetError
from yolodet.inference.preprocess import preprocess
from yolodet.inference.sources import IMAGE_EXTS, SAMPLE_IMAGE
from yolodet.modeling.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from yolodet.modeling.model import Darknet

__all__ = ["DEFAULT_NOTE", "Calibration", "CalibrationError", "calibrate", "calibration_images", "read_calibration",
           "save_int8"]

DEFAULT_NOTE = ("int8 calibrated on the bundled sample image only; for accuracy on your data calibrate once on a "
                "folder of your images: yolodet quantize --cfg CFG --weights W --calibrate DIR -o model.int8.pt")
MAX_IMAGES = 512  # more adds time, not accuracy (the ranges are averages)


class CalibrationError(YolodetError, ValueError):
    """A calibration source that cannot be used (the message names it and says why)."""


@dataclass(frozen=True)
class Calibration:
    """Per-layer activation ranges of one model.

    Attributes:
        ranges: float64 [L + 1, 2]: row 0 the network input, row ``i + 1`` the output of layer ``i``; columns
            (low, high), low <= high.
        images: how many calibration images they come from.
        source: where the images came from (a folder, ``"images"`` for arrays, or ``"bundled sample"``).
    """

    ranges: torch.Tensor
    images: int
    source: str

    def __post_init__(self) -> None:
        r = self.ranges
        if r.ndim != 2 or r.shape[1] != 2 or not bool(torch.isfinite(r).all()) or bool((r[:, 0] > r[:, 1]).any()):
            raise CalibrationError(f"calibration ranges must be finite [L + 1, 2] (low <= high), got {tuple(r.shape)}")

    def layer(self, index: int) -> tuple[float, float]:
        """(low, high) of layer ``index``'s output; ``-1``: the network input."""
        low, high = self.ranges[index + 1].tolist()
        return low, high

    def to_dict(self) -> dict:
        """Plain tensors and values (``torch.load(weights_only=True)`` reads them back)."""
        return {"ranges": self.ranges, "images": self.images, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict, num_layers: int) -> "Calibration":
        try:
            cal = cls(torch.as_tensor(d["ranges"], dtype=torch.float64), int(d["images"]), str(d["source"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"not an int8 calibration ({type(exc).__name__}: {exc})") from None
        if cal.ranges.shape[0] != num_layers + 1:
            raise CalibrationError(f"the calibration has ranges for {cal.ranges.shape[0] - 1} layers, the model "
                                   f"has {num_layers}")
        return cal


def calibration_images(source: str | os.PathLike | Sequence[np.ndarray] | None) -> tuple[list[np.ndarray], str]:
    """A calibration source (see the module docstring) -> (RGB uint8 images, description).

    Raises:
        CalibrationError: not a folder, no images in it, an unreadable image (named), an empty list.
    """
    if source is None:
        image = read_image(SAMPLE_IMAGE)
        return [image, np.ascontiguousarray(image[:, ::-1])], "bundled sample"
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise CalibrationError(f"calibration source {str(folder)!r} is not a folder of images")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())[:MAX_IMAGES]
        if not files:
            raise CalibrationError(f"calibration folder {str(folder)!r} has no images "
                                   f"({', '.join(sorted(IMAGE_EXTS))})")
        images = []
        for f in files:
            try:
                images.append(read_image(f))
            except (YolodetError, OSError, ValueError) as exc:
                raise CalibrationError(f"calibration image {str(f)!r} cannot be read: {exc}") from None
        return images, str(folder)
    images = list(source)
    if not images:
        raise CalibrationError("the calibration image list is empty")
    for k, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise CalibrationError(f"calibration image {k} must be an RGB uint8 [H, W, 3] array")
    return images, "images"


@torch.inference_mode()
def calibrate(model: Darknet, source: str | os.PathLike | Sequence[np.ndarray] | None, *,
              img_size: tuple[int, int], preprocess_mode: str) -> Calibration:
    """Run ``model`` (fp32, eval, on its device) over ``source``'s images preprocessed as the detector will, and
    return every layer's output range (:class:`Calibration`). ``img_size``: (w, h).

    Each image is a first step from zero recurrent state, and ``model``'s state is zero again afterwards: the
    calibration images are not a sequence, and the detector's first frame must not see their state."""
    images, where = calibration_images(source)
    device = next(model.parameters(), torch.empty(0)).device
    model = model.eval()
    lows = torch.zeros(len(images), len(model.layers) + 1, dtype=torch.float64)
    highs = torch.zeros_like(lows)
    for k, image in enumerate(images):
        blob, _ = preprocess(image, img_size, preprocess_mode)
        x = torch.from_numpy(blob)[None].to(device)
        model.reset_state()
        outs = [x, *model.layer_outputs(x).values()]
        for j, out in enumerate(outs):
            lo, hi = torch.aminmax(out.float())
            lows[k, j], highs[k, j] = float(lo), float(hi)
    model.reset_state()
    return Calibration(torch.stack([lows.mean(0), highs.mean(0)], 1), len(images), where)



def save_int8(model: Darknet, calibration: Calibration, path: str | os.PathLike) -> None:
    """Write ``model`` and its ``calibration`` as an int8 file (see the module docstring), atomically."""
    if len(calibration.ranges) != len(model.layers) + 1:
        raise CalibrationError(f"the calibration has ranges for {len(calibration.ranges) - 1} layers, the model "
                               f"has {len(model.layers)}")
    save_checkpoint(model, path, int8=calibration.to_dict())


def read_calibration(path: str | os.PathLike, num_layers: int) -> Calibration | None:
    """The calibration stored in an int8 file; None for ``.weights`` files and checkpoints without one.

    Raises:
        CheckpointError: an unreadable checkpoint; CalibrationError: a damaged ``int8`` entry.
    """
    if not is_checkpoint(path):
        return None
    entry = load_checkpoint(path).get("int8")
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise CalibrationError(f"{path}: the 'int8' entry is a {type(entry).__name__}, not a dict")
    try:
        return Calibration.from_dict(entry, num_layers)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from None
