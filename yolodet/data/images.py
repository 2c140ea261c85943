"""Reading image files as RGB ``uint8[H, W, 3]``: the first step of every data flow (inference, evaluation,
training). An unreadable file raises :class:`ImageReadError` naming the file; callers report and skip it.

Decoders (``IMAGE_DECODERS``):

* ``stb``: stb_image (the compiled ``yolodet._stb_image``), what Darknet's C builds use without OpenCV (the
  default ``OPENCV=0`` of both Makefiles). Needed to reproduce Darknet's COCO numbers to the 4th decimal:
  libjpeg-turbo's IDCT and colour conversion round differently on ~1-2% of pixels (by 1-3 levels), and on a
  small set such as coco128 that is enough to swap near-tied scores of rare classes (letterbox AP 0.1442
  instead of Darknet's 0.1397 for yolov3-tiny). stb also ignores EXIF orientation, as Darknet does.
* ``opencv``: :func:`yolodet.preprocess.read_image` (``cv2.imread``; applies EXIF orientation).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import cv2
import numpy as np

from yolodet.errors import SettingError, YolodetError

log = logging.getLogger(__name__)

__all__ = ["IMAGE_DECODERS", "ImageReadError", "default_decoder", "image_reader", "read_image", "read_image_stb",
           "stb_available"]


class ImageReadError(YolodetError, ValueError):
    """An image file is missing, empty or cannot be decoded."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB ``uint8[H, W, 3]`` (``cv2.imread`` with ``IMREAD_COLOR``, then BGR -> RGB).

    Raises:
        ImageReadError: the file is missing, not a regular file, empty, or OpenCV cannot decode it.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ImageReadError(f"cannot read image {name!r}: no such file")
    if not os.path.isfile(name):
        raise ImageReadError(f"cannot read image {name!r}: not a regular file")
    if os.path.getsize(name) == 0:
        raise ImageReadError(f"cannot read image {name!r}: file is empty (0 bytes)")
    try:
        bgr = cv2.imread(name, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. decoder failures surfaced as exceptions by some builds
        raise ImageReadError(f"cannot read image {name!r}: OpenCV error: {exc}") from exc
    if bgr is None or bgr.size == 0:
        raise ImageReadError(f"cannot read image {name!r}: OpenCV could not decode it "
                             "(corrupt or unsupported format)")
    return np.ascontiguousarray(bgr[:, :, ::-1])



IMAGE_DECODERS = ("stb", "opencv")


@functools.cache
def stb_available() -> bool:
    """True when the ``yolodet._stb_image`` extension is built (``pip install -e .`` compiles it)."""
    try:
        import yolodet._stb_image  # noqa: F401
    except ImportError:
        return False
    return True


def default_decoder() -> str:
    """``"stb"`` (Darknet's decoder) when the extension is built, else ``"opencv"`` with a warning."""
    if stb_available():
        return "stb"
    log.warning("yolodet._stb_image is not built (reinstall with `pip install -e .`): decoding with OpenCV, "
                "which can move small-set COCO AP by a few thousandths against Darknet's numbers")
    return "opencv"


def read_image_stb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB ``uint8[H, W, 3]`` with stb_image, exactly as Darknet's ``load_image_stb``
    (3 channels requested: gray is replicated, alpha dropped; EXIF orientation ignored).

    Raises:
        ImageReadError: the file is missing, not a regular file, empty, or stb cannot decode it.
        ImportError: the extension is not built.
    """
    from yolodet._stb_image import decode

    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {name!r}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"cannot read image {name!r}: not a regular file") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read image {name!r}: {exc.strerror or exc}") from None
    if not data:
        raise ImageReadError(f"cannot read image {name!r}: file is empty (0 bytes)")
    try:
        pixels, height, width = decode(data)
    except ValueError as exc:
        raise ImageReadError(f"cannot read image {name!r}: {exc}") from None
    return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3).copy()  # writable, like cv2's


def image_reader(decoder: str) -> Callable[[str | os.PathLike], np.ndarray]:
    """The reader function of a decoder name (see ``IMAGE_DECODERS``)."""
    if decoder == "stb":
        if not stb_available():
            raise ImportError("the stb decoder needs the compiled yolodet._stb_image: run `pip install -e .`")
        return read_image_stb
    if decoder == "opencv":
        return read_image
    raise SettingError(f"unknown image decoder {decoder!r}; known: {', '.join(IMAGE_DECODERS)}")


