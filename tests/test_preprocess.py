"""Tests for yolodet.preprocess: Darknet-exact resize/letterbox, Mapping round trips, read_image errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from yolodet.inference.preprocess import (
    PREPROCESS_MODES,
    Mapping,
    darknet_letterbox_shape,
    darknet_resize,
    preprocess,
)
from yolodet.data.images import ImageReadError, read_image

F = np.float32


# --- Independent reference: a literal, per-pixel port of Darknet's C (image.c), float32 scalars ----------

def _ref_load(image: np.ndarray) -> np.ndarray:
    """RGB uint8[H, W, 3] -> float32[C, H, W] as `im.data[i] = data[j] / 255.;` (double divide, float store)."""
    h, w, c = image.shape
    data = np.zeros((c, h, w), dtype=np.float32)
    for k in range(c):
        for y in range(h):
            for x in range(w):
                data[k, y, x] = F(int(image[y, x, k]) / 255.0)
    return data


def _ref_resize_image(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's `resize_image(im, w, h)` on float32[C, H, W]. `(w - 1) == 0` guarded (C: inf/nan, UB cast)."""
    c_, im_h, im_w = im.shape
    resized = np.zeros((c_, h, w), dtype=np.float32)
    part = np.zeros((c_, im_h, w), dtype=np.float32)
    w_scale = F(im_w - 1) / F(w - 1) if w > 1 else F(0)
    h_scale = F(im_h - 1) / F(h - 1) if h > 1 else F(0)
    for k in range(c_):
        for r in range(im_h):
            for c in range(w):
                if c == w - 1 or im_w == 1:
                    val = im[k, r, im_w - 1]
                else:
                    sx = F(c) * w_scale
                    ix = int(sx)
                    dx = sx - F(ix)
                    val = (F(1) - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
                part[k, r, c] = val
    for k in range(c_):
        for r in range(h):
            sy = F(r) * h_scale
            iy = int(sy)
            dy = sy - F(iy)
            for c in range(w):
                resized[k, r, c] = (F(1) - dy) * part[k, iy, c]
            if r == h - 1 or im_h == 1:
                continue
            for c in range(w):
                resized[k, r, c] += dy * part[k, iy + 1, c]
    return resized


def _ref_letterbox_image(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's `letterbox_image(im, w, h)`: resize keeping aspect, embed at the integer offset on 0.5."""
    _, im_h, im_w = im.shape
    if F(w) / F(im_w) < F(h) / F(im_h):
        new_w, new_h = w, (im_h * w) // im_w
    else:
        new_h, new_w = h, (im_w * h) // im_h
    resized = _ref_resize_image(im, new_w, new_h)
    boxed = np.full((im.shape[0], h, w), F(0.5), dtype=np.float32)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    for k in range(im.shape[0]):
        for y in range(new_h):
            for x in range(new_w):
                boxed[k, dy + y, dx + x] = resized[k, y, x]
    return boxed


def _random_image(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# (in_w, in_h, out_w, out_h): upscales, downscales, identity, 1-pixel sides, the quirky 14 -> 12 / 8 -> 24 rows,
# and a tall case whose output spans several row bands of the vectorised implementation.
RESIZE_CASES = [
    (7, 5, 11, 13), (13, 9, 4, 6), (5, 7, 5, 7), (1, 1, 3, 4), (1, 6, 4, 1), (6, 1, 1, 4), (8, 8, 1, 1),
    (40, 30, 27, 19), (9, 14, 5, 12), (3, 8, 7, 24), (20, 100, 9, 70), (2, 2, 2, 2), (64, 48, 41, 41),
]


@pytest.mark.parametrize("in_w,in_h,out_w,out_h", RESIZE_CASES)
def test_darknet_resize_matches_reference(in_w: int, in_h: int, out_w: int, out_h: int) -> None:
    image = _random_image(in_w, in_h, seed=in_w * 1000 + in_h)
    expected = _ref_resize_image(_ref_load(image), out_w, out_h)
    got, mapping = preprocess(image, (out_w, out_h), mode="darknet-resize")
    assert got.dtype == np.float32 and got.shape == (3, out_h, out_w) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    assert (mapping.new_w, mapping.new_h, mapping.pad_x, mapping.pad_y) == (out_w, out_h, 0.0, 0.0)
    # The float32 entry point agrees with the uint8 one.
    np.testing.assert_array_equal(darknet_resize(_ref_load(image), out_w, out_h), expected)


@pytest.mark.parametrize("in_w,in_h,net_w,net_h", [
    (7, 5, 11, 13), (13, 9, 10, 11), (5, 13, 12, 8), (9, 9, 6, 6), (1, 1, 5, 4), (30, 4, 9, 9), (64, 48, 41, 41),
])
def test_darknet_letterbox_matches_reference(in_w: int, in_h: int, net_w: int, net_h: int) -> None:
    image = _random_image(in_w, in_h, seed=7 * in_w + in_h)
    expected = _ref_letterbox_image(_ref_load(image), net_w, net_h)
    got, mapping = preprocess(image, (net_w, net_h), mode="darknet-letterbox")
    assert got.dtype == np.float32 and got.shape == (3, net_h, net_w) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    assert (mapping.new_w, mapping.new_h) == darknet_letterbox_shape(in_w, in_h, net_w, net_h)
    assert (mapping.pad_x, mapping.pad_y) == ((net_w - mapping.new_w) / 2, (net_h - mapping.new_h) / 2)


def test_darknet_letterbox_keeps_one_row_for_extreme_aspect() -> None:
    """Darknet would compute new_h = 2 * 9 // 30 = 0 (gray input, infinite boxes); we keep one row."""
    out, mapping = preprocess(_random_image(30, 2, seed=5), (9, 9), mode="darknet-letterbox")
    assert (mapping.new_w, mapping.new_h, mapping.pad_y) == (9, 1, 4.0)
    assert not np.all(out[:, 4] == 0.5) and np.all(out[:, :4] == 0.5) and np.all(out[:, 5:] == 0.5)


def test_pixel_conversion_matches_darknet_double_divide() -> None:
    """Darknet stores `data / 255.` (double) into a float; an identity resize exposes our conversion."""
    image = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    got, _ = preprocess(image, (16, 16), mode="darknet-resize")
    expected = (image.transpose(2, 0, 1).astype(np.float64) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(got, expected)


def test_last_row_quirk_is_reproduced() -> None:
    """14 -> 12 rows: float32 `11 * (13 / 11)` < 13, so Darknet's last row is `(1 - dy) * row[12]`, almost 0."""
    image = np.zeros((14, 5, 3), dtype=np.uint8)
    image[-1] = 255  # only the last input row is bright
    got, _ = preprocess(image, (5, 12), mode="darknet-resize")

    # A naive align-corners bilinear (float64) samples exactly row 13 for the last output row.
    src = image.astype(np.float64) / 255.0
    ys = np.arange(12) * (13 / 11)
    y0 = np.floor(ys).astype(int)
    y1 = np.minimum(y0 + 1, 13)
    dy = (ys - y0)[:, None, None]
    naive = ((1 - dy) * src[y0] + dy * src[y1]).transpose(2, 0, 1)

    np.testing.assert_allclose(got[:, :-1], naive[:, :-1], atol=1e-6)  # all rows but the last agree
    assert np.all(naive[:, -1] == 1.0)
    assert np.all(got[:, -1] == 0.0)  # Darknet: (1 - dy) * row[12] = 0; the dy * row[13] term is skipped


def test_letterbox_fill_and_placement() -> None:
    image = _random_image(640, 480, seed=0)
    for mode in ("darknet-letterbox", "letterbox"):
        out, mapping = preprocess(image, (416, 416), mode=mode)
        assert (mapping.new_w, mapping.new_h, mapping.pad_x, mapping.pad_y) == (416, 312, 0.0, 52.0)
        assert np.all(out[:, :52] == 0.5) and np.all(out[:, 364:] == 0.5)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_darknet_letterbox_float_pad_vs_integer_paste() -> None:
    """Darknet pastes at (net - new) // 2 but maps boxes back with the float (net - new) / 2."""
    image = _random_image(13, 9, seed=3)
    out, mapping = preprocess(image, (10, 11), mode="darknet-letterbox")
    assert (mapping.new_w, mapping.new_h) == (10, 6)  # 10/13 < 11/9 -> new_h = 9 * 10 // 13
    assert mapping.pad_y == 2.5
    assert np.all(out[:, :2] == 0.5) and np.all(out[:, 8:] == 0.5)  # content in rows 2..7
    assert not np.all(out[:, 2] == 0.5)


def test_cv2_modes_match_opencv() -> None:
    image = _random_image(50, 30, seed=1)
    out, _ = preprocess(image, (20, 24), mode="resize")
    expected = cv2.resize(image, (20, 24), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(out, expected)
    out, mapping = preprocess(image, (20, 24), mode="letterbox")
    assert (mapping.new_w, mapping.new_h, mapping.pad_x, mapping.pad_y) == (20, 12, 0.0, 6.0)
    expected = cv2.resize(image, (20, 12), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(out[:, 6:18], expected)


# --- Mapping ----------------------------------------------------------------------------------------------

def _forward_by_hand(boxes: torch.Tensor, m: Mapping) -> torch.Tensor:
    """Original-pixel xyxy -> network-pixel xyxy, the inverse of x_orig = (x_net - pad) * orig / new."""
    x = boxes[:, 0::2] * (m.new_w / m.orig_w) + m.pad_x
    y = boxes[:, 1::2] * (m.new_h / m.orig_h) + m.pad_y
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


@pytest.mark.parametrize("mode", PREPROCESS_MODES)
@pytest.mark.parametrize("in_w,in_h,net_w,net_h", [(640, 480, 416, 416), (300, 500, 320, 256), (13, 9, 10, 11)])
def test_mapping_round_trip(mode: str, in_w: int, in_h: int, net_w: int, net_h: int) -> None:
    image = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    _, mapping = preprocess(image, (net_w, net_h), mode=mode)
    assert (mapping.orig_w, mapping.orig_h, mapping.net_w, mapping.net_h) == (in_w, in_h, net_w, net_h)
    rel = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.31, 0.32]], dtype=torch.float64)
    boxes = rel * torch.tensor([in_w, in_h, in_w, in_h], dtype=torch.float64)
    back = mapping.to_original(_forward_by_hand(boxes, mapping))
    assert back.dtype == torch.float64
    torch.testing.assert_close(back, boxes, rtol=0, atol=1e-9)


def test_mapping_known_values_and_clipping() -> None:
    m = Mapping(orig_w=640, orig_h=480, net_w=416, net_h=416, new_w=416.0, new_h=312.0, pad_x=0.0, pad_y=52.0)
    net = torch.tensor([[0.0, 52.0, 416.0, 364.0], [-10.0, 0.0, 500.0, 416.0], [208.0, 208.0, 208.0, 208.0]])
    back = m.to_original(net)
    expected = torch.tensor([[0.0, 0.0, 640.0, 480.0], [0.0, 0.0, 640.0, 480.0], [320.0, 240.0, 320.0, 240.0]])
    torch.testing.assert_close(back, expected)
    assert back.dtype == torch.float32 and back.data_ptr() != net.data_ptr()
    assert m.to_original(torch.tensor([[0, 52, 416, 364]])).dtype == torch.float32  # integer input -> float
    assert m.to_original(torch.zeros(0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match="xyxy"):
        m.to_original(torch.zeros(3, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mapping_on_cuda() -> None:
    m = Mapping(640, 480, 416, 416, 416.0, 312.0, 0.0, 52.0)
    back = m.to_original(torch.tensor([[0.0, 52.0, 416.0, 364.0]], device="cuda", dtype=torch.float16))
    assert back.device.type == "cuda" and back.dtype == torch.float16
    torch.testing.assert_close(back.float().cpu(), torch.tensor([[0.0, 0.0, 640.0, 480.0]]))


# --- Argument checks and read_image -------------------------------------------------------------------------

def test_preprocess_rejects_bad_arguments() -> None:
    image = _random_image(8, 6, seed=2)
    with pytest.raises(ValueError, match="darknet-letterbox"):
        preprocess(image, (8, 8), mode="bicubic")
    with pytest.raises(ValueError, match="uint8"):
        preprocess(image.astype(np.float32), (8, 8))
    with pytest.raises(ValueError, match="positive"):
        preprocess(image, (0, 8))


def test_read_image_round_trip_rgb(tmp_path) -> None:
    rgb = _random_image(9, 7, seed=4)
    path = tmp_path / "img.png"
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (7, 9, 3) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, rgb)


def test_read_image_errors(tmp_path) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageReadError, match="missing.jpg.*no such file"):
        read_image(missing)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image \x00\xff\xd8" * 10)
    with pytest.raises(ImageReadError, match="garbage.jpg.*decode"):
        read_image(garbage)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)
    assert issubclass(ImageReadError, ValueError)
