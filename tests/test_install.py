"""A normal (non-editable) ``pip install .`` works outside the checkout: the ``yolodet`` console script, the shipped
cfgs, ``coco.names`` and the sample image are package data, and ``yolodet detect`` runs the bundled sample from
/tmp. The venv reuses this machine's torch (``--system-site-packages``, ``--no-deps``) so the test installs only
yolodet itself; the README's first command does the full install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import OFFICIAL_TINY, ROOT, need_shared


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with yolodet installed from a wheel build of this checkout; returns its bin folder."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                          "--no-build-isolation", str(ROOT)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "no such option: --python" in res.stderr:  # pragma: no cover - pip < 22.3
        pytest.skip("this pip cannot install into another environment")
    assert res.returncode == 0, res.stderr
    return env_dir / "bin"


def _run(bin_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XDG_CACHE_HOME"] = str(cwd / "cache")  # the user cache of this fresh "user"
    return subprocess.run([str(bin_dir / "yolodet"), *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    res = subprocess.run([str(installed / "python"), "-c", "import yolodet.cfg.shipped as s, yolodet; "
                          "print(yolodet.__file__); print(s.DEFAULT_CFG.is_file(), s.COCO_NAMES.is_file())"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    location, data = res.stdout.splitlines()
    assert str(installed.parent) in location and str(ROOT) not in location
    assert data == "True True"


def test_help_lists_the_subcommands(installed: Path, tmp_path: Path) -> None:
    res = _run(installed, "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert all(name in res.stdout for name in ("detect", "val", "train", "info", "anchors", "make-cfg"))


def test_detect_runs_the_bundled_sample_from_tmp(installed: Path, tmp_path: Path) -> None:
    weights = need_shared(OFFICIAL_TINY)
    res = _run(installed, "detect", "--weights", str(weights), "--output", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "out" / "detections.json").read_text())
    [image] = doc["images"]
    assert Path(image["file"]).name == "zebras.jpg" and image["detections"]
    assert {d["name"] for d in image["detections"]} == {"zebra"}
    assert (tmp_path / "out" / "zebras.jpg").is_file()
    info = _run(installed, "info", "--cfg", "yolo-v4-tiny", cwd=tmp_path)
    assert info.returncode == 0 and "yolo" in info.stdout


def test_default_weights_go_to_the_user_cache_outside_a_checkout(installed: Path, tmp_path: Path) -> None:
    res = subprocess.run([str(installed / "python"), "-c", "from yolodet.cli.fetch import default_weights_path; "
                          "print(default_weights_path('yolo-v3-tiny.cfg'))"], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "c")}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "c" / "yolodet" / "yolo-v3-tiny.weights")
