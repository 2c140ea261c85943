"""Ultralytics-style dataset YAML (yolodet.data.yolo_yaml): the same samples as the Darknet reader on the same
files, names as a list or a mapping, list files and folders, and clear errors; ``yolodet val`` reads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from yolodet.data import DatasetError, load_dataset, read_darknet_data, read_yolo_yaml

DARKNET = FIXTURES / "data" / "darknet"


def _layout(root: Path) -> Path:
    """A YOLO layout: images/{train,val} and labels/{train,val} from the Darknet fixture's labelled images."""
    for split, stems in (("train", ["a", "000000000042"]), ("val", ["000000000042"])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem in stems:
            shutil.copy(DARKNET / "images" / f"{stem}.jpg", root / "images" / split)
            shutil.copy(DARKNET / "labels" / f"{stem}.txt", root / "labels" / split)
    return root


def test_folder_splits_and_mapping_names(tmp_path: Path) -> None:
    root = _layout(tmp_path / "ds")
    spec = tmp_path / "ds.yaml"
    spec.write_text("path: ds\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: car\n")
    train = load_dataset(spec, "train")
    assert train.names == ["person", "car"] and len(train.samples) == 2
    val = read_yolo_yaml(spec, "valid")
    assert [s.image.name for s in val.samples] == ["000000000042.jpg"] and val.samples[0].image_id == 42
    darknet = {s.image.name: s for split in ("train", "valid")
               for s in read_darknet_data(DARKNET / "tiny.data", split).samples}
    for sample in train.samples:  # the same label files give the same boxes as the Darknet reader
        np.testing.assert_array_equal(sample.boxes, darknet[sample.image.name].boxes)
        np.testing.assert_array_equal(sample.labels, darknet[sample.image.name].labels)
    assert (root / "labels").is_dir()


def test_list_files_and_list_names(tmp_path: Path) -> None:
    _layout(tmp_path)
    (tmp_path / "val.txt").write_text("./images/val/000000000042.jpg\nimages/train/a.jpg\nimages/missing.jpg\n")
    spec = tmp_path / "data.yml"
    spec.write_text("train: [images/train]\nval: val.txt\nnc: 2\nnames: [person, car]\n")
    val = load_dataset(spec, "val")
    assert [s.image.name for s in val.samples] == ["000000000042.jpg", "a.jpg"]
    assert any("images/missing.jpg not found" in str(i) for i in val.issues)


@pytest.mark.parametrize("text, message", [
    ("train: x\nval: x\n", "no `names:`"),
    ("train: images/train\nnames: [a, b]\n", "no `val:` entry"),
    ("val: nowhere\nnames: [a]\n", "split entry 'nowhere' is neither"),
    ("val: images/val\nnc: 3\nnames: [a, b]\n", "nc=3 but names has 2"),
    ("val: images/val\nnames: {0: a, 2: b}\n", "class ids must be 0..1"),
    ("- just\n- a list\n", "a dataset YAML is a mapping"),
    ("val: [unclosed\n", "cannot read dataset YAML"),
])
def test_bad_yaml_is_a_dataset_error(tmp_path: Path, text: str, message: str) -> None:
    _layout(tmp_path)
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(DatasetError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_dataset(spec, "val")


def test_val_reads_a_yaml_dataset(tmp_path: Path, capsys) -> None:
    from conftest import randomize
    from yolodet.cli.main import main
    from yolodet.modeling.model import Darknet
    from yolodet.modeling.weights import save_darknet_weights

    _layout(tmp_path / "ds")
    spec = tmp_path / "ds.yaml"
    spec.write_text("path: ds\ntrain: images/train\nval: images/val\nnames: [person, car]\n")
    cfg = tmp_path / "two.cfg"
    cfg.write_text((FIXTURES / "tiny.cfg").read_text().replace("classes=2", "classes=2"))
    weights = tmp_path / "two.weights"
    save_darknet_weights(randomize(Darknet.from_cfg(cfg)), weights)
    assert main(["val", "--cfg", str(cfg), "--weights", str(weights), "--data", str(spec), "--workers", "0",
                 "--device", "cpu", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("AP=")
