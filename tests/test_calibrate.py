"""yolodet.inference.calibrate: ranges measured on images, bad sources refused with a clear message, and int8
files that round-trip (same calibration, same int8 outputs) and read as plain checkpoints."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import FIXTURES, randomize
from yolodet.inference.calibrate import (Calibration, CalibrationError, calibrate, calibration_images,
                                         read_calibration, save_int8)
from yolodet.inference.detector import Detector
from yolodet.inference.frozen import fold_batchnorm
from yolodet.inference.preprocess import preprocess
from yolodet.inference.quantize import int8_available
from yolodet.modeling.checkpoint import load_model
from yolodet.modeling.model import Darknet

IMAGES = FIXTURES / "data" / "coco" / "images"


def _model() -> Darknet:
    return randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg"), seed=4).eval()


def test_ranges_are_the_mean_of_per_image_extremes() -> None:
    model = _model()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    cal = calibrate(fold_batchnorm(model), images, img_size=(64, 64), preprocess_mode="darknet-resize")
    assert cal.images == 3 and cal.source == "images" and cal.ranges.shape == (len(model.layers) + 1, 2)
    with torch.no_grad():
        outs = [model.layer_outputs(torch.from_numpy(preprocess(im, (64, 64), "darknet-resize")[0])[None])
                for im in images]
    for i in (0, 3, len(model.layers) - 1):  # the unfolded model, layer by layer, as an independent reference
        lo = np.mean([float(o[i].min()) for o in outs])
        hi = np.mean([float(o[i].max()) for o in outs])
        assert cal.layer(i) == pytest.approx((lo, hi), rel=1e-4, abs=1e-5)


RECURRENT_CFG = """[net]
width=32
height=32
channels=3
[convolutional]
filters=4
size=3
stride=2
pad=1
activation=leaky
[conv_lstm]
output=4
size=3
pad=1
"""


def test_calibration_images_are_independent_first_steps() -> None:
    """Recurrent state: each calibration image starts from zero state, and the model is left at zero state."""
    model = randomize(Darknet.from_cfg_text(RECURRENT_CFG), seed=2).eval()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    cal = calibrate(model, images, img_size=(32, 32), preprocess_mode="darknet-resize")
    x = torch.from_numpy(preprocess(images[1], (32, 32), "darknet-resize")[0])[None]
    with torch.no_grad():
        alone = model(x)[0]  # the second image as a first step: the model's state must be zero here
        model.reset_state()
        again = model(x)[0]
    torch.testing.assert_close(alone, again, rtol=0, atol=0)
    lows = []
    for im in images:  # the LSTM's output range of each image as a first step
        model.reset_state()
        with torch.no_grad():
            out = model.layer_outputs(torch.from_numpy(preprocess(im, (32, 32), "darknet-resize")[0])[None])
        lows.append(float(out[1].min()))
    assert cal.layer(1)[0] == pytest.approx(np.mean(lows), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing", "is not a folder of images"),
    (lambda tmp: tmp, "has no images"),
    (lambda tmp: (tmp / "bad.jpg").write_bytes(b"not a jpeg") and tmp, "bad.jpg' cannot be read"),
])
def test_bad_calibration_folder_is_a_clear_error(tmp_path, make, message) -> None:
    with pytest.raises(CalibrationError, match=message):
        calibration_images(make(tmp_path))
    with pytest.raises(CalibrationError, match="empty"):
        calibration_images([])


def test_damaged_ranges_refused() -> None:
    with pytest.raises(CalibrationError, match="low <= high"):
        Calibration(torch.tensor([[1.0, 0.0]], dtype=torch.float64), 1, "x")
    with pytest.raises(CalibrationError, match="ranges for 0 layers"):
        Calibration.from_dict({"ranges": torch.zeros(1, 2), "images": 1, "source": "x"}, num_layers=3)


@pytest.mark.skipif(not int8_available(), reason="this PyTorch has no oneDNN int8 convolution")
def test_int8_file_round_trip(tmp_path) -> None:
    model = _model()
    cal = calibrate(fold_batchnorm(model), IMAGES, img_size=(64, 64), preprocess_mode="darknet-letterbox")
    assert cal.images == len(list(IMAGES.glob("*.jpg")))
    path = tmp_path / "tiny.int8.pt"
    save_int8(model, cal, path)
    back = read_calibration(path, len(model.layers))
    assert back is not None and torch.equal(back.ranges, cal.ranges) and (back.images, back.source) == (
        cal.images, cal.source)
    loaded = load_model(None, path)  # an int8 file is a checkpoint: the fp32 model as well
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    x = torch.rand(2, 3, 64, 64)
    a = Detector(model, img_size=64, precision="int8", calibration=cal, device="cpu")
    b = Detector.from_cfg(None, path, img_size=64, precision="int8", device="cpu")
    assert torch.equal(b.calibration.ranges, cal.ranges)
    for o, r in zip(b._network()(x), a._network()(x)):
        assert torch.equal(o, r)
    shutil.copy(FIXTURES / "tiny.cfg", tmp_path / "tiny.cfg")
    assert read_calibration(tmp_path / "tiny.cfg", len(model.layers)) is None  # not a checkpoint
