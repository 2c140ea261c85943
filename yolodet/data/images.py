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
import io
import logging
import os
from typing import BinaryIO, Callable

import cv2
import numpy as np
from PIL import Image

from yolodet.errors import SettingError, YolodetError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_DECODERS", "ImageReadError", "default_decoder", "image_reader",
           "image_size", "read_image", "read_image_stb", "stb_available"]

DEFAULT_MAX_PIXELS = 1 << 27
"""Largest image (width x height) read by default: 134 M pixels (16384 x 8192; a 108 MP phone photo fits), 400 MB
decoded. A larger one is refused from its header, before decoding: a small file that claims a huge size (a
decompression bomb) must not take the machine's memory. ``--max-image-pixels`` raises the limit."""


class ImageReadError(YolodetError, ValueError):
    """An image file is missing, empty or cannot be decoded."""


def image_size(source: str | os.PathLike | BinaryIO, name: str = "") -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header (read with Pillow's format plugins, nothing decoded), or
    None when no plugin recognises it (the decoder then decides).

    ``name`` (default: ``source`` when it is a path): formats without a signature (TGA ...) are tried only when
    the name has their extension, so a file of a format Pillow does not know is not misread as one of them.
    """
    Image.init()
    own = not hasattr(source, "read")
    name = name or (os.fspath(source) if own else "")
    by_extension = Image.registered_extensions().get(os.path.splitext(name)[1].lower())
    fp = open(source, "rb") if own else source  # noqa: SIM115
    try:
        prefix = fp.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            try:
                if accept is None and fmt != by_extension:
                    continue
                if accept is not None:
                    match = accept(prefix)
                    if not match or isinstance(match, str):  # a str: Pillow's "possibly this format" warning
                        continue
                fp.seek(0)
                width, height = factory(fp, "").size
                return int(width), int(height)
            except Exception:  # noqa: BLE001  a damaged header fails in many ways; the decoder reports it
                continue
        return None
    finally:
        if own:
            fp.close()


def _check_pixels(name: str, size: tuple[int, int] | None, max_pixels: int | None) -> None:
    if size is None or max_pixels is None:
        return
    width, height = size
    if width * height > max_pixels:
        raise ImageReadError(f"cannot read image {name!r}: {width} x {height} = {width * height} pixels is more "
                             f"than the limit of {max_pixels} (a decompression bomb?); --max-image-pixels raises it")


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB ``uint8[H, W, 3]`` (``cv2.imread`` with ``IMREAD_COLOR``, then BGR -> RGB).

    Args:
        max_pixels: refuse an image with more pixels (checked from the header, before decoding); None: no limit.

    Raises:
        ImageReadError: the file is missing, not a regular file, empty, larger than ``max_pixels``, or OpenCV
            cannot decode it.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ImageReadError(f"cannot read image {name!r}: no such file")
    if not os.path.isfile(name):
        raise ImageReadError(f"cannot read image {name!r}: not a regular file")
    try:
        if os.path.getsize(name) == 0:
            raise ImageReadError(f"cannot read image {name!r}: file is empty (0 bytes)")
        _check_pixels(name, image_size(name) if max_pixels is not None else None, max_pixels)
    except OSError as exc:
        raise ImageReadError(f"cannot read image {name!r}: {exc.strerror or exc}") from None
    try:
        bgr = cv2.imread(name, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. decoder failures surfaced as exceptions by some builds
        raise ImageReadError(f"cannot read image {name!r}: OpenCV error: {exc}") from exc
    if bgr is None or bgr.size == 0:
        raise ImageReadError(f"cannot read image {name!r}: OpenCV could not decode it "
                             "(corrupt or unsupported format)")
    _check_pixels(name, (bgr.shape[1], bgr.shape[0]), max_pixels)  # a format Pillow does not know
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


def read_image_stb(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB ``uint8[H, W, 3]`` with stb_image, exactly as Darknet's ``load_image_stb``
    (3 channels requested: gray is replicated, alpha dropped; EXIF orientation ignored).

    Args:
        max_pixels: refuse an image with more pixels (checked from the header, before decoding); None: no limit.

    Raises:
        ImageReadError: the file is missing, not a regular file, empty, larger than ``max_pixels``, or stb cannot
            decode it.
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
    if max_pixels is not None:
        _check_pixels(name, image_size(io.BytesIO(data), name), max_pixels)
    try:
        pixels, height, width = decode(data)
    except ValueError as exc:
        raise ImageReadError(f"cannot read image {name!r}: {exc}") from None
    _check_pixels(name, (width, height), max_pixels)  # a format Pillow does not know
    return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3).copy()  # writable, like cv2's


def image_reader(decoder: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
                 ) -> Callable[[str | os.PathLike], np.ndarray]:
    """The reader function of a decoder name (see ``IMAGE_DECODERS``), refusing images over ``max_pixels``
    (picklable: it can be sent to ``DataLoader`` worker processes)."""
    if decoder == "stb":
        if not stb_available():
            raise ImportError("the stb decoder needs the compiled yolodet._stb_image: run `pip install -e .`")
        return functools.partial(read_image_stb, max_pixels=max_pixels)
    if decoder == "opencv":
        return functools.partial(read_image, max_pixels=max_pixels)
    raise SettingError(f"unknown image decoder {decoder!r}; known: {', '.join(IMAGE_DECODERS)}")


