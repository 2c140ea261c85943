"""Network-input preprocessing, with the mapping back to original pixels.

Data flow: :func:`yolodet.data.images.read_image` -> RGB ``uint8[H, W, 3]`` -> ``preprocess`` ->
``float32[3, net_h, net_w]`` in [0, 1]
plus a :class:`Mapping` that sends boxes predicted in network-input pixels back to the original image.

Modes (``PREPROCESS_MODES``):

* ``darknet-resize`` / ``darknet-letterbox``: bit-exact float32 ports of Darknet's C ``resize_image`` /
  ``letterbox_image`` (align-corners separable bilinear, last-row quirk included), vectorised with numpy.
  AlexeyAB plain-resizes unless ``letter_box=1``; pjreddie letterboxes.
* ``resize`` / ``letterbox``: OpenCV ``INTER_LINEAR`` fast paths (not Darknet-exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from yolodet.inference.boxes import clip_xyxy

PREPROCESS_MODES = ("darknet-resize", "darknet-letterbox", "resize", "letterbox")

_FILL = 0.5  # letterbox gray, as Darknet's fill_image(boxed, .5)
_BAND_ROWS = 32  # output rows per band of darknet_resize; keeps temporaries in the few-hundred-kB range


@dataclass(frozen=True)
class Mapping:
    """How network-input pixel coordinates map back to original-image pixels.

    The image content occupies ``[pad_x, pad_x + new_w] x [pad_y, pad_y + new_h]`` of the network input
    (``new == net`` and ``pad == 0`` for plain resizes); ``x_orig = (x_net - pad_x) * orig_w / new_w``.

    Warning: for the ``darknet-letterbox`` mode ``pad`` is ``(net - new) / 2`` as a float, as in AlexeyAB's
    ``correct_yolo_boxes``, while ``letterbox_image`` pastes the content at the integer ``(net - new) // 2``;
    the half-pixel disagreement is Darknet's and is kept on purpose.
    """

    orig_w: int
    orig_h: int
    net_w: int
    net_h: int
    new_w: float
    new_h: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """Map ``boxes[..., 4]`` xyxy in network-input pixels to xyxy original pixels, clipped to the image.

        Works on any device; floating dtypes are kept, integer inputs become float32. Returns a new tensor.
        """
        if boxes.shape[-1] != 4:
            raise ValueError(f"boxes must have shape [..., 4] (xyxy), got {tuple(boxes.shape)}")
        if not boxes.is_floating_point():
            boxes = boxes.float()
        offset = boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        sx, sy = self.orig_w / self.new_w, self.orig_h / self.new_h
        return clip_xyxy((boxes - offset) * boxes.new_tensor([sx, sy, sx, sy]), self.orig_w, self.orig_h)


def preprocess(
    image: np.ndarray, size: tuple[int, int], mode: str = "darknet-letterbox"
) -> tuple[np.ndarray, Mapping]:
    """Turn an RGB ``uint8[H, W, 3]`` image into a network input ``float32[3, net_h, net_w]`` in [0, 1].

    Args:
        image: RGB ``uint8[H, W, 3]``.
        size: ``(net_w, net_h)``.
        mode: one of ``PREPROCESS_MODES``.

    Returns:
        The C-contiguous ``float32[3, net_h, net_w]`` input and the :class:`Mapping` back to ``image`` pixels.
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; expected one of {PREPROCESS_MODES}")
    _check_image(image)
    net_w, net_h = _check_size(size)
    in_h, in_w = image.shape[:2]

    if mode == "darknet-resize":
        out = darknet_resize(image.transpose(2, 0, 1), net_w, net_h)
        return out, Mapping(in_w, in_h, net_w, net_h, float(net_w), float(net_h), 0.0, 0.0)
    if mode == "darknet-letterbox":
        return _darknet_letterbox(image, net_w, net_h)
    if mode == "resize":
        resized = cv2.resize(image, (net_w, net_h), interpolation=cv2.INTER_LINEAR)
        out = _to_float_chw(resized)
        return out, Mapping(in_w, in_h, net_w, net_h, float(net_w), float(net_h), 0.0, 0.0)
    return _cv2_letterbox(image, net_w, net_h)


def darknet_resize(chw: np.ndarray, out_w: int, out_h: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """Darknet's ``resize_image``, bit-exact in float32: ``[C, H, W]`` -> ``float32[C, out_h, out_w]``.

    ``chw`` is float32 in [0, 1], or uint8 (converted as Darknet's loaders do, ``/ 255``). Align-corners
    bilinear with float32 ``scale = (in - 1) / (out - 1)``: an x pass into ``[C, H, out_w]`` whose last column
    copies the last input column, then a y pass where the last output row keeps only the ``(1 - dy) * row[iy]``
    term (a Darknet quirk: float32 rounding of ``r * h_scale`` can darken that row). ``out`` (optional, any
    ``float32[C, out_h, out_w]`` view, e.g. a letterbox canvas window) receives the result.

    Warning: Darknet divides by ``out - 1``; for ``out == 1`` we use scale 0 (take the last column / first row)
    instead of C's inf/nan. Some forks return a copy when the size already matches; this resize is then an
    exact identity anyway, so both agree.
    """
    chw = np.asarray(chw)
    if chw.ndim != 3 or chw.size == 0 or chw.dtype not in (np.float32, np.uint8):
        raise ValueError(f"darknet_resize expects a non-empty float32 or uint8 [C, H, W], "
                         f"got {chw.dtype}{list(chw.shape)}")
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"darknet_resize output size must be positive, got ({out_w}, {out_h})")
    channels, in_h, in_w = chw.shape
    if out is None:
        out = np.empty((channels, out_h, out_w), dtype=np.float32)
    elif out.shape != (channels, out_h, out_w) or out.dtype != np.float32:
        raise ValueError(f"out must be float32{[channels, out_h, out_w]}, got {out.dtype}{list(out.shape)}")
    ix0, ix1, wx0, wx1 = _darknet_taps(in_w, out_w, last_full=True)
    iy0, iy1, wy0, wy1 = _darknet_taps(in_h, out_h, last_full=False)
    # Bands of output rows keep every temporary small: whole-image temporaries are several MB each and,
    # depending on the allocator's state, fresh pages made this 3-4x slower. Recomputing the x pass of
    # the one or two input rows shared by neighbouring bands gives identical values.
    for r0 in range(0, out_h, _BAND_ROWS):
        r1 = min(r0 + _BAND_ROWS, out_h)
        lo, hi = int(iy0[r0]), int(iy1[r1 - 1]) + 1  # both index arrays are non-decreasing
        rows = chw[:, lo:hi]
        if rows.dtype == np.uint8:
            rows = np.divide(rows, np.float32(255.0), dtype=np.float32)  # == Darknet's `data / 255.` as float
        # Each product and the sum are float32, as the C expression `(1-dx)*a + dx*b` on floats (no FMA).
        part = np.take(rows, ix0, axis=2)
        part *= wx0
        tap = np.take(rows, ix1, axis=2)
        tap *= wx1
        part += tap
        band = np.take(part, iy0[r0:r1] - lo, axis=1, out=out[:, r0:r1], mode="clip")
        band *= wy0[r0:r1, None]
        tap = np.take(part, iy1[r0:r1] - lo, axis=1)
        tap *= wy1[r0:r1, None]
        band += tap
    return out


def _darknet_taps(
    n_in: int, n_out: int, *, last_full: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and float32 weights ``(i0, i1, w0, w1)`` of one Darknet resize pass, each ``[n_out]``.

    ``out[j] = w0[j] * in[i0[j]] + w1[j] * in[i1[j]]`` reproduces the C loop exactly: skipped second terms
    get ``w1 = 0`` (adding ``+0.0`` is exact), a copied pixel gets ``w0 = 1``. ``last_full`` selects the
    x-pass rule (last output copies the last input) versus the y-pass rule (last output keeps ``(1-d)*in[i]``).
    """
    f32 = np.float32
    scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0.0)
    s = np.arange(n_out, dtype=np.float32) * scale  # float32 `r * scale`
    i0 = s.astype(np.int64)  # C `(int)` truncation; s >= 0
    d = s - i0.astype(np.float32)
    w0 = f32(1.0) - d
    w1 = d.copy()
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    if last_full:  # `if (c == w-1 || im.w == 1) val = im[w-1]`
        copy = np.zeros(n_out, dtype=bool)
        copy[-1] = True
        if n_in == 1:
            copy[:] = True
        i0 = np.where(copy, n_in - 1, i0)
        i1 = np.where(copy, n_in - 1, i1)
        w0 = np.where(copy, f32(1.0), w0).astype(np.float32)
        w1 = np.where(copy, f32(0.0), w1).astype(np.float32)
    else:  # `if (r == h-1 || im.h == 1) continue;` -- skip only the second term
        w1[-1] = 0.0
        if n_in == 1:
            w1[:] = 0.0
    return i0, i1, w0, w1


def darknet_letterbox_shape(in_w: int, in_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """Content size ``(new_w, new_h)`` of Darknet's ``letterbox_image`` / ``correct_yolo_boxes`` (integer math).

    Warning: for extreme aspect ratios (e.g. 30x2 into 9x9) Darknet's integer division gives 0, an all-gray
    input and infinite boxes; we keep at least 1 pixel instead.
    """
    if np.float32(net_w) / np.float32(in_w) < np.float32(net_h) / np.float32(in_h):  # float compare, as C
        return net_w, max(1, (in_h * net_w) // in_w)
    return max(1, (in_w * net_h) // in_h), net_h


def _darknet_letterbox(image: np.ndarray, net_w: int, net_h: int) -> tuple[np.ndarray, Mapping]:
    in_h, in_w = image.shape[:2]
    new_w, new_h = darknet_letterbox_shape(in_w, in_h, net_w, net_h)
    out = np.full((3, net_h, net_w), _FILL, dtype=np.float32)
    dx, dy = (net_w - new_w) // 2, (net_h - new_h) // 2  # C integer division, as embed_image
    darknet_resize(image.transpose(2, 0, 1), new_w, new_h, out=out[:, dy:dy + new_h, dx:dx + new_w])
    mapping = Mapping(in_w, in_h, net_w, net_h, float(new_w), float(new_h),
                      (net_w - new_w) / 2.0, (net_h - new_h) / 2.0)
    return out, mapping


def _cv2_letterbox(image: np.ndarray, net_w: int, net_h: int) -> tuple[np.ndarray, Mapping]:
    in_h, in_w = image.shape[:2]
    scale = min(net_w / in_w, net_h / in_h)
    new_w = min(net_w, max(1, round(scale * in_w)))
    new_h = min(net_h, max(1, round(scale * in_h)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.full((3, net_h, net_w), _FILL, dtype=np.float32)
    dx, dy = (net_w - new_w) // 2, (net_h - new_h) // 2
    out[:, dy:dy + new_h, dx:dx + new_w] = _to_float_chw(resized)
    # Here the mapping uses the offset where the content really is (no Darknet half-pixel to reproduce).
    return out, Mapping(in_w, in_h, net_w, net_h, float(new_w), float(new_h), float(dx), float(dy))


def _to_float_chw(image: np.ndarray) -> np.ndarray:
    """RGB ``uint8[H, W, 3]`` -> C-contiguous ``float32[3, H, W]`` in [0, 1].

    Darknet's loaders compute ``data[i] / 255.`` in double and store a float; a float32 division gives the
    same 256 values (checked in the tests) and is several times faster than a lookup table.
    """
    chw = np.empty((3, *image.shape[:2]), dtype=np.float32)
    np.divide(image.transpose(2, 0, 1), np.float32(255.0), out=chw, dtype=np.float32)
    return chw


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB uint8[H, W, 3], got {image.dtype}{list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {list(image.shape)}")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        net_w, net_h = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"size must be (net_w, net_h) integers, got {size!r}") from exc
    if net_w <= 0 or net_h <= 0 or (net_w, net_h) != tuple(size):
        raise ValueError(f"size must be positive integers (net_w, net_h), got {size!r}")
    return net_w, net_h
