"""Random command-line values through every subcommand (hypothesis): the ``yolodet`` command answers each with an
exit code of its own (0, 1, 2; argparse's usage error is 2 as well) and never lets an exception or a traceback
out. ``HYPOTHESIS_PROFILE=slow`` runs ten times as many examples."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, randomize
from test_train import make_shapes_dataset
from yolodet.cli.main import main
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import save_darknet_weights

TINY_CFG = FIXTURES / "tiny.cfg"
EXAMPLES = 200 if os.environ.get("HYPOTHESIS_PROFILE") == "slow" else 20

# Values a careless or hostile user types: empty, signs, huge, non-finite, text, paths that are not there.
VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "1", "2", "0.5", "1e309", "nan", "inf", "-inf", "abc", "3.5", "99999999999",
                     "/nonexistent", "/dev/null", ".", "..", "cpu", "cuda:9", "auto", "640", "32", "1,2"]),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=12),
)

OPTIONS = {
    "detect": ["--conf-thres", "--nms-thres", "--img-size", "--batch-size", "--workers", "--device", "--threads",
               "--max-frames", "--precision", "--preprocess", "--decoder", "--names"],
    "val": ["--conf-thres", "--nms-thres", "--img-size", "--batch-size", "--workers", "--device", "--threads",
            "--max-det", "--split", "--preprocess", "--decoder"],
    "train": ["--img-size", "--batch-size", "--subdivisions", "--device", "--threads", "--lr", "--momentum",
              "--decay", "--burn-in", "--freeze", "--jitter", "--seed", "--conf-thres", "--steps", "--scales"],
    "info": ["--img-size"],
    "anchors": ["--num", "--width", "--height", "--split", "--seed"],
    "make-cfg": ["--classes", "--batch", "--subdivisions", "--max-batches", "--width", "--height"],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    weights = root / "tiny.weights"
    save_darknet_weights(randomize(Darknet.from_cfg(TINY_CFG)), weights)
    image = root / "img.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = make_shapes_dataset(root / "data", n=2)
    return {"root": root, "weights": weights, "image": image, "data": data}


def _base(name: str, files: dict[str, Path]) -> list[str]:
    root = files["root"]
    cfg = ["--cfg", str(TINY_CFG)]
    if name == "detect":
        return [name, str(files["image"]), *cfg, "--weights", str(files["weights"]), "--output", str(root / "out"),
                "--quiet"]
    if name == "val":
        return [name, *cfg, "--weights", str(files["weights"]), "--data", str(files["data"]), "--no-progress",
                "--quiet"]
    if name == "train":
        overfit = str(FIXTURES / "overfit.cfg")
        return [name, "--cfg", overfit, "--data", str(files["data"]), "--max-batches", "1", "--eval-interval", "0",
                "--workers", "0", "--output", str(root / "train"), "--no-progress", "--quiet"]
    if name == "info":
        return [name, *cfg]
    if name == "anchors":
        return [name, "--data", str(files["data"])]
    return [name, *cfg, "--output", str(root / "made.cfg"), "--data", str(files["data"])]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_random_option_values_never_escape(name: str, files: dict[str, Path], capsys, caplog) -> None:
    threads = torch.get_num_threads()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from(OPTIONS[name]), VALUES), min_size=1, max_size=3))
    def run(pairs: list[tuple[str, str]]) -> None:
        argv = _base(name, files) + [token for pair in pairs for token in pair]
        caplog.clear()
        try:
            with caplog.at_level(logging.INFO):
                code = main(argv)
        except SystemExit as exc:  # argparse: a value of the wrong type, a bad choice
            code = exc.code
        finally:
            torch.set_num_threads(threads)  # --threads is process-wide
        out, err = capsys.readouterr()
        assert code in (0, 1, 2), (argv, code)
        assert "Traceback" not in out + err + caplog.text, argv
        assert "unexpected" not in caplog.text, (argv, caplog.text)  # the boundary's "this is a bug" line

    run()
