"""The ``yolodet`` command: every subcommand listed and documented, the error boundary (one line, exit 2, the
traceback only with --debug), the shared options (device, output folder, shipped cfg names) and the tools/ shims
running the same code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT
from yolodet.cli import main as cli_main
from yolodet.cli.main import SUBCOMMANDS, main

TINY_CFG = FIXTURES / "tiny.cfg"


def _yolodet(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yolodet", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_lists_every_subcommand() -> None:
    res = _yolodet("--help")
    assert res.returncode == 0, res.stderr
    for name in ("detect", "val", "train", "info", "anchors", "make-cfg"):
        assert name in SUBCOMMANDS
        line = next((l for l in res.stdout.splitlines() if l.strip().startswith(name + " ")), None)
        assert line is not None and len(line.split()) > 2, f"{name} has no one-line description:\n{res.stdout}"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_documents_its_options_and_exit_codes(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "Exit codes" in out and "--debug" in out


def test_unexpected_error_is_one_line_with_a_debug_hint(monkeypatch, caplog) -> None:
    module = cli_main._module("info")

    def broken(args):
        raise RuntimeError("something internal broke")

    monkeypatch.setattr(module, "run", broken)
    assert main(["info", "--cfg", str(TINY_CFG)]) == 2
    assert "unexpected RuntimeError in yolodet info: something internal broke" in caplog.text
    assert "--debug" in caplog.text and "Traceback" not in caplog.text
    with pytest.raises(RuntimeError, match="something internal broke"):
        main(["info", "--cfg", str(TINY_CFG), "--debug"])


@pytest.mark.parametrize("argv, message", [
    (["detect", "--device", "foo"], "device 'foo' is not one of: auto, cpu, cuda, cuda:N, N"),
    (["detect", "--device", "cuda:7"], "device 'cuda:7': this machine has"),
    (["detect", "--conf-thres", "1.5"], "conf_thres must be in [0, 1), got 1.5"),
    (["detect", "--img-size", "416", "416", "416"], "give one integer S (S x S) or two, W H"),
    (["detect", "--img-size", "33"], "must be a positive multiple of the largest head stride"),
    (["detect", "--cfg", "no-such-cfg"], "not a shipped cfg name (shipped: "),
    (["info", "--cfg", "no-such-cfg"], "not a shipped cfg name"),
    (["val", "--data", "nope.data"], "--data nope.data: no such file"),
    (["train", "--cfg", str(TINY_CFG)], "needs a cfg and a dataset"),
])
def test_bad_values_exit_2_with_one_line(argv: list[str], message: str, caplog, tmp_path: Path) -> None:
    if argv[0] == "detect":
        argv = [*argv, "--cfg", str(TINY_CFG), "--weights", str(_tiny_weights(tmp_path)), "--output",
                str(tmp_path / "out")] if "--cfg" not in argv else argv
    assert main(argv) == 2
    assert message in caplog.text and "Traceback" not in caplog.text


def test_output_that_is_a_file_is_refused(tmp_path: Path, caplog) -> None:
    taken = tmp_path / "taken"
    taken.write_text("the user's file")
    argv = ["detect", "--cfg", str(TINY_CFG), "--weights", str(_tiny_weights(tmp_path)), "--output", str(taken)]
    assert main(argv) == 2
    assert f"--output {taken}: {taken} exists and is not a folder" in caplog.text
    assert taken.read_text() == "the user's file"


def test_shipped_cfg_names_work_from_anywhere(tmp_path: Path) -> None:
    res = _yolodet("info", "--cfg", "yolo-v3-tiny", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "5.571" in res.stdout  # Darknet's BFLOPS total of yolov3-tiny


def test_tools_shims_run_the_subcommands() -> None:
    for tool, sub in (("detect", "detect"), ("eval_coco", "val"), ("train", "train"), ("model_info", "info"),
                      ("calc_anchors", "anchors"), ("make_cfg", "make-cfg")):
        shim = subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), "--help"], capture_output=True,
                              text=True, timeout=120)
        assert shim.returncode == 0, shim.stderr
        assert "Exit codes" in shim.stdout, tool
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "model_info.py"), "--cfg", str(TINY_CFG)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout == _yolodet("info", "--cfg", str(TINY_CFG)).stdout


def _tiny_weights(tmp_path: Path) -> Path:
    """Random weights for the fixture cfg, written by yolodet's saver."""
    from conftest import randomize
    from yolodet.modeling.model import Darknet
    from yolodet.modeling.weights import save_darknet_weights

    path = tmp_path / "tiny.weights"
    if not path.exists():
        save_darknet_weights(randomize(Darknet.from_cfg(TINY_CFG)), path)
    return path


def test_val_protocol_sets_darknet_thresholds(tmp_path: Path, capsys) -> None:
    data = FIXTURES / "data" / "darknet" / "tiny.data"
    argv = ["val", "--cfg", str(TINY_CFG), "--weights", str(_tiny_weights(tmp_path)), "--data", str(data),
            "--workers", "0", "--device", "cpu", "--no-progress", "--protocol", "alexeyab-valid"]
    assert main(argv) == 0
    assert "conf 0.001, NMS 0.6," in capsys.readouterr().out


_BODY = "[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n" \
        "[maxpool]\nsize=2\nstride=2\n"
HEAD_CFGS = {  # two classes, as the fixture dataset
    "region": _BODY + "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n"
                      "[region]\nanchors=1,1,3,2\nclasses=2\ncoords=4\nnum=2\nsoftmax=1\n",
    "gaussian_yolo": _BODY + "[convolutional]\nfilters=22\nsize=1\nactivation=linear\n"
                             "[Gaussian_yolo]\nmask=0,1\nanchors=10,14,23,27\nclasses=2\nnum=2\n",
    "detection": _BODY + "[connected]\noutput=48\nactivation=linear\n"
                         "[detection]\nclasses=2\ncoords=4\nside=2\nnum=2\nsqrt=1\n",
}


@pytest.mark.parametrize("kind", sorted(HEAD_CFGS))
def test_detect_and_val_run_region_gaussian_and_detection_heads(kind: str, tmp_path: Path, capsys) -> None:
    from conftest import randomize
    from yolodet.modeling.model import Darknet
    from yolodet.modeling.weights import save_darknet_weights

    cfg, weights = tmp_path / f"{kind}.cfg", tmp_path / f"{kind}.weights"
    cfg.write_text(HEAD_CFGS[kind])
    model = Darknet.from_cfg(cfg)
    assert [h.kind for h in model.heads] == [kind]
    save_darknet_weights(randomize(model), weights)
    data = FIXTURES / "data" / "darknet"
    common = ["--cfg", str(cfg), "--weights", str(weights), "--device", "cpu", "--no-progress"]
    assert main(["detect", *common, "--conf-thres", "0.01", "--output", str(tmp_path / "out"), "--no-images",
                 str(data / "images")]) == 0
    written = list((tmp_path / "out").rglob("*.json"))
    assert written and "box_xyxy" in written[0].read_text()
    assert main(["val", *common, "--data", str(data / "tiny.data"), "--workers", "0"]) == 0
    assert "AP" in capsys.readouterr().out
