"""Fuzzing files: mutated and truncated Darknet ``.weights`` and yolodet checkpoints through ``load_model``, and
mutated image bytes through both image readers. Only YolodetError subclasses may escape; what loads is sound (a
model whose every tensor is finite, an RGB uint8 image within the pixel limit). See tests/fuzzing.py for the
profiles."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import FIXTURES, randomize
from fuzzing import fuzz_settings, mutated_bytes
from yolodet.data.images import ImageReadError, read_image, read_image_stb, stb_available
from yolodet.errors import YolodetError
from yolodet.modeling.checkpoint import FORMAT, load_model, save_checkpoint
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights

CFG = FIXTURES / "tiny.cfg"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of a complete .weights file, a checkpoint and small images of several formats."""
    tmp = tmp_path_factory.mktemp("fuzz_sources")
    model = randomize(Darknet.from_cfg(CFG), seed=5)
    save_darknet_weights(model, tmp / "tiny.weights")
    save_checkpoint(model, tmp / "tiny.pt", epoch=1)
    out = {"weights": (tmp / "tiny.weights").read_bytes(), "checkpoint": (tmp / "tiny.pt").read_bytes()}
    image = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".gif", ".tif", ".webp", ".ppm"):
        ok, buf = cv2.imencode(ext, image) if ext != ".gif" else (True, _gif(image))
        if ok:
            out[ext] = bytes(buf)
    out[".jpg-real"] = next((FIXTURES / "data" / "coco" / "images").glob("*.jpg")).read_bytes()
    return out


def _gif(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="GIF")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_files")


def _load(cfg: Path | None, path: Path, allow_partial: bool) -> None:
    try:
        model = load_model(cfg, path, allow_partial=allow_partial)
    except YolodetError:
        return
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), f"{name} is not finite but the file loaded"


@fuzz_settings(80)
@given(data=st.data(), allow_partial=st.booleans())
def test_mutated_weights_load_or_raise_yolodet_errors(files, tmp: Path, data, allow_partial: bool) -> None:
    blob = data.draw(mutated_bytes(files["weights"], header=20), label="weights")
    path = tmp / "fuzz.weights"
    path.write_bytes(blob)
    _load(CFG, path, allow_partial)


@fuzz_settings(80)
@given(data=st.data(), with_cfg=st.booleans())
def test_mutated_checkpoints_load_or_raise_yolodet_errors(files, tmp: Path, data, with_cfg: bool) -> None:
    blob = data.draw(mutated_bytes(files["checkpoint"], header=512), label="checkpoint")
    path = tmp / "fuzz.pt"
    path.write_bytes(blob)
    _load(CFG if with_cfg else None, path, False)


# Checkpoint *contents* that torch.load reads fine but that are not what yolodet wrote.
_JUNK = st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3),
                  st.just(torch.zeros(2)), st.just(torch.tensor([float("nan")])), st.dictionaries(
                      st.text(max_size=5), st.just(torch.ones(1)), max_size=2))


@fuzz_settings(60)
@given(data=st.data(), with_cfg=st.booleans())
def test_checkpoints_with_wrong_contents_raise_yolodet_errors(tmp: Path, data, with_cfg: bool) -> None:
    model = Darknet.from_cfg(CFG)
    ckpt = {"format": FORMAT, "version": 1, "cfg_text": model.cfg_text, "cfg_path": str(CFG),
            "model": dict(model.state_dict())}
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["drop", "replace", "tensor", "cfg_text"]))
        if kind == "drop":
            ckpt.pop(data.draw(st.sampled_from(sorted(ckpt))), None)
        elif kind == "replace":
            ckpt[data.draw(st.sampled_from(["format", "version", "cfg_text", "model"]))] = data.draw(_JUNK)
        elif kind == "tensor" and isinstance(ckpt.get("model"), dict) and ckpt["model"]:
            name = data.draw(st.sampled_from(sorted(ckpt["model"])))
            ckpt["model"][name] = data.draw(_JUNK | st.sampled_from([
                torch.zeros(3, 3), torch.zeros(0), torch.full((16,), float("inf")), torch.zeros(16, dtype=torch.int64),
                torch.zeros(16, dtype=torch.float16), torch.zeros(16, dtype=torch.complex64)]))
        elif kind == "cfg_text" and isinstance(ckpt.get("cfg_text"), str):
            text = ckpt["cfg_text"]
            cut = data.draw(st.integers(0, len(text)))
            ckpt["cfg_text"] = text[:cut] + data.draw(st.text(max_size=10)) + text[cut:]
    path = tmp / "contents.pt"
    torch.save(ckpt, path)
    _load(CFG if with_cfg else None, path, False)


READERS = [read_image] + ([read_image_stb] if stb_available() else [])


@fuzz_settings(100)
@given(data=st.data(), read=st.sampled_from(READERS))
def test_mutated_images_decode_or_raise_image_errors(files, tmp: Path, data, read) -> None:
    kind = data.draw(st.sampled_from(sorted(k for k in files if k.startswith("."))), label="format")
    blob = data.draw(mutated_bytes(files[kind], header=64), label="image")
    path = tmp / f"fuzz{kind.split('-')[0]}"
    path.write_bytes(blob)
    try:
        image = read(path, max_pixels=1 << 22)
    except ImageReadError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= 1 << 22 and image.flags.writeable
