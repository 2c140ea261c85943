"""yolodet.data.images: images larger than ``max_pixels`` (decompression bombs) are refused from their header,
before decoding, by both decoders and everything that reads images (inference loader, training dataset)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolodet.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    image_reader,
    image_size,
    read_image,
    read_image_stb,
    stb_available,
)
from yolodet.data.sample import DatasetSource, Sample
from yolodet.data.train_dataset import TrainDataset
from yolodet.data.transforms import AugmentConfig
from yolodet.inference.loader import InferenceDataset

READERS = [read_image] + ([read_image_stb] if stb_available() else [])


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 8 x 8 PNG whose header is rewritten to claim ``width`` x ``height`` (CRC fixed): a 100-byte file
    that a decoder would try to allocate ``width * height * 3`` bytes for."""
    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def _jpeg_claiming(path: Path, width: int, height: int) -> Path:
    ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("read", READERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("make", [_png_claiming, _jpeg_claiming], ids=["png", "jpeg"])
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path, read, make) -> None:
    bomb = make(tmp_path / "bomb.img", 60000, 50000)
    assert bomb.stat().st_size < 1000
    pixels = 60000 * 50000
    with pytest.raises(ImageReadError) as info:
        read(bomb)
    assert str(info.value) == (f"cannot read image {str(bomb)!r}: 60000 x 50000 = {pixels} pixels is more than the "
                               f"limit of {DEFAULT_MAX_PIXELS} (a decompression bomb?); --max-image-pixels raises it")
    assert image_size(bomb) == (60000, 50000)


@pytest.mark.parametrize("read", READERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_the_limit_is_inclusive_and_can_be_raised_or_removed(tmp_path: Path, read, ext: str) -> None:
    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    path = tmp_path / f"a{ext}"
    cv2.imwrite(str(path), image)
    assert image_size(path) == (300, 200)
    expected = read(path, max_pixels=None)
    np.testing.assert_array_equal(read(path, max_pixels=60_000), expected)
    np.testing.assert_array_equal(read(path), expected)
    with pytest.raises(ImageReadError, match=r"300 x 200 = 60000 pixels is more than the limit of 59999"):
        read(path, max_pixels=59_999)


def test_a_format_without_a_signature_is_not_misread(tmp_path: Path) -> None:
    """Pillow's TGA reader takes any bytes; a file of another name is not read as a TGA header."""
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes([0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 24, 0]) + b"\0" * 64)
    assert image_size(path) is None
    tga = tmp_path / "noise.tga"
    tga.write_bytes(path.read_bytes())
    assert image_size(tga) == (65535, 65535)
    with pytest.raises(ImageReadError, match="65535 x 65535 = 4294836225 pixels is more than the limit"):
        read_image(tga)


def test_readers_and_datasets_pass_the_limit_on(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((40, 50, 3), np.uint8))
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((10, 10, 3), np.uint8))
    for decoder in ["opencv"] + (["stb"] if stb_available() else []):
        with pytest.raises(ImageReadError, match="more than the limit of 1000"):
            image_reader(decoder, max_pixels=1000)(big)
        dataset = InferenceDataset([big, small], (32, 32), "darknet-resize", decoder=decoder, max_pixels=1000)
        assert "50 x 40 = 2000 pixels is more than the limit of 1000" in dataset[0].error
        assert dataset[1].error is None
        assert InferenceDataset([big], (32, 32), "darknet-resize", decoder=decoder)[0].error is None
    boxes = np.array([[0.1, 0.1, 0.5, 0.5]], np.float32)
    source = DatasetSource(["a"], [Sample(big, boxes, np.array([0]), 0), Sample(small, boxes, np.array([0]), 1)],
                           [])
    train = TrainDataset(source, AugmentConfig(), max_pixels=1000)
    assert train.load_image(0) is None and train.load_image(1).shape == (10, 10, 3)
    assert TrainDataset(source, AugmentConfig()).load_image(0).shape == (40, 50, 3)
