"""Tests of the dataset readers (Darknet, COCO, VOC), load_dataset dispatch and to_coco_gt.

Fixtures live in tests/fixtures/data/; every image there is 32x16 (w x h) except coco 000000000002.jpg and
voc img2.jpg, which are 16x16. Expected boxes are computed by hand in the comments.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO

from yolodet.data import (
    DatasetError,
    DatasetSource,
    LabelIssue,
    label_path_candidates,
    load_dataset,
    parse_data_file,
    read_coco,
    read_darknet_data,
    read_voc,
    to_coco_gt,
)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "data"
SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


def _issues(source: DatasetSource, name: str) -> dict[int | None, LabelIssue]:
    """Issues of the file called ``name``, keyed by line."""
    return {i.line: i for i in source.issues if i.file.name == name}


def _check_format(source: DatasetSource) -> None:
    for s in source.samples:
        assert s.boxes.dtype == np.float32 and s.boxes.ndim == 2 and s.boxes.shape[1] == 4
        assert s.labels.dtype == np.int64 and s.labels.shape == (len(s.boxes),)
        assert ((s.boxes >= 0) & (s.boxes <= 1)).all()
        assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 3] > s.boxes[:, 1]).all()
        assert ((s.labels >= 0) & (s.labels < len(source.names))).all()
        assert s.image.is_file()


# ---------------------------------------------------------------- Darknet


def test_parse_data_file() -> None:
    opts = parse_data_file(FIXTURES / "darknet" / "tiny.data")
    assert opts == {"classes": "2", "train": "train.txt", "valid": "valid.txt", "names": "tiny.names",
                    "backup": "backup/", "eval": "coco"}


def test_darknet_train_split_labels_and_issues() -> None:
    src = read_darknet_data(FIXTURES / "darknet" / "tiny.data", split="train")
    _check_format(src)
    assert src.names == ["cat", "dog"] and src.category_ids is None
    by_name = {s.image.name: s for s in src.samples}
    assert sorted(by_name) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]  # missing.jpg skipped
    # stems are not all numeric -> image_id = position in the list (blank line not counted)
    assert [s.image_id for s in src.samples] == [0, 1, 2, 3]

    a = by_name["a.jpg"]
    # line 1: 0 .5 .5 .5 .5 -> [.25 .25 .75 .75]; line 2: 1 .9 .5 .4 .2 -> [.7 .4 1.1 .6] clipped to x2=1
    np.testing.assert_allclose(a.boxes, [[0.25, 0.25, 0.75, 0.75], [0.7, 0.4, 1.0, 0.6]], atol=1e-6)
    assert a.labels.tolist() == [0, 1]
    issues = _issues(src, "a.txt")
    assert issues[2].action == "clipped" and "x2=1.1" in issues[2].what
    assert issues[3].action == "skipped label" and "degenerate" in issues[3].what  # w = 0
    assert "class id 2" in issues[4].what and issues[4].action == "skipped label"
    assert "unparsable" in issues[5].what
    assert "expected `class cx cy w h`" in issues[6].what
    assert 7 not in issues  # blank line
    assert "degenerate" in issues[8].what  # entirely right of the image
    assert str(issues[4]).startswith(f"{FIXTURES / 'darknet' / 'labels' / 'a.txt'}:4: class id 2")

    assert len(by_name["b.jpg"].boxes) == 0  # no label file: an image without objects, as in Darknet
    (b_issue,) = _issues(src, "b.jpg").values()
    assert b_issue.severity == "info" and b_issue.action == "no objects"

    np.testing.assert_allclose(by_name["c.jpg"].boxes, [[0, 0, 1, 1]])  # JPEGImages/ -> labels/
    np.testing.assert_allclose(by_name["d.jpg"].boxes, [[0.375, 0.25, 0.625, 0.75]])  # label beside the image
    (missing,) = _issues(src, "train.txt").values()
    assert missing.line == 6 and missing.action == "skipped image" and "missing.jpg" in missing.what


def test_darknet_valid_split_numeric_ids() -> None:
    src = read_darknet_data(FIXTURES / "darknet" / "tiny.data")  # default split: valid
    (s,) = src.samples
    assert s.image_id == 42 and s.width is None
    np.testing.assert_allclose(s.boxes, [[0, 0, 0.5, 1]])
    assert src.issues == []


def test_darknet_paths_relative_to_cwd(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .data file elsewhere, its paths relative to the working directory (Darknet's own rule)."""
    root = tmp_path / "repo"
    shutil.copytree(FIXTURES / "darknet", root / "data")
    (root / "cfg").mkdir()
    (root / "cfg" / "x.data").write_text("classes=2\nvalid = data/valid.txt\nnames = data/tiny.names\n")
    (root / "data" / "valid.txt").write_text("data/images/000000000042.jpg\n")
    monkeypatch.chdir(root)
    src = read_darknet_data(root / "cfg" / "x.data", "val")
    assert [s.image_id for s in src.samples] == [42] and len(src.samples[0].boxes) == 1


def test_darknet_classes_mismatch_is_recorded(tmp_path: pathlib.Path) -> None:
    shutil.copytree(FIXTURES / "darknet", tmp_path / "d")
    (tmp_path / "d" / "tiny.data").write_text("classes=80\nvalid=valid.txt\nnames=tiny.names\n")
    src = read_darknet_data(tmp_path / "d" / "tiny.data")
    assert src.names == ["cat", "dog"]
    assert any("classes=80" in i.what for i in src.issues)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("valid=valid.txt\n", "no `names=`"),
        ("names=tiny.names\n", "no `valid=`"),
        ("names=nope.names\nvalid=valid.txt\n", "names file 'nope.names' not found"),
        ("names=tiny.names\nvalid=nope.txt\n", "image list 'nope.txt' not found"),
        ("names=tiny.names\nthis line is wrong\n", ":2: expected `key = value`"),
    ],
)
def test_darknet_unusable_dataset_raises(tmp_path: pathlib.Path, content: str | None, message: str) -> None:
    shutil.copytree(FIXTURES / "darknet", tmp_path / "d")
    data = tmp_path / "d" / "bad.data"
    if content is not None:
        data.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_darknet_data(data, "valid")


@pytest.mark.parametrize(
    "image, expected",
    [
        ("/d/images/train2017/1.jpg", ["/d/labels/train2017/1.txt", "/d/images/train2017/1.txt"]),
        ("/voc/VOC2007/JPEGImages/0005.JPEG", ["/voc/VOC2007/labels/0005.txt", "/voc/VOC2007/JPEGImages/0005.txt"]),
        ("/x/images/y/images/a.png",
         ["/x/labels/y/images/a.txt", "/x/images/y/labels/a.txt", "/x/images/y/images/a.txt"]),
        ("images/a.bmp", ["labels/a.txt", "images/a.txt"]),
        ("/flat/a.PNG", ["/flat/a.txt"]),
        ("/flat/myimages/a.jpg", ["/flat/myimages/a.txt"]),  # only whole directory names are replaced
    ],
)
def test_label_path_candidates(image: str, expected: list[str]) -> None:
    assert label_path_candidates(image) == [pathlib.Path(e) for e in expected]


# ---------------------------------------------------------------- COCO


def test_coco_reader() -> None:
    src = read_coco(FIXTURES / "coco" / "annotations" / "instances_val.json")  # images dir guessed: ../images
    _check_format(src)
    assert src.names == ["person", "car"] and src.category_ids == [1, 3]  # sorted by id
    assert [s.image_id for s in src.samples] == [1, 2]  # id 7 has no file
    s1, s2 = src.samples
    assert (s1.width, s1.height, s2.width, s2.height) == (32, 16, 16, 16)
    # ann 10: car [8,4,16,8] -> [.25 .25 .75 .75]; ann 11: person [24,0,16,8] -> [.75 0 1.25 .5] clipped
    np.testing.assert_allclose(s1.boxes, [[0.25, 0.25, 0.75, 0.75], [0.75, 0, 1, 0.5]])
    assert s1.labels.tolist() == [1, 0]
    assert len(s2.boxes) == 0  # images without annotations are kept
    whats = [i.what for i in src.issues]
    for needle in ("annotation id 11: x2=1.25", "annotation id 12: iscrowd=1", "unknown category_id 99",
                   "unknown image_id 99", "annotation id 15: degenerate", "annotation id 16: bad bbox",
                   "image id 7: image"):
        assert any(w.startswith(needle) or needle in w for w in whats), needle
    crowd = next(i for i in src.issues if "iscrowd" in i.what)
    assert crowd.severity == "info" and crowd.line is None


@pytest.mark.parametrize("content", ["[1, 2]", "{\"images\": []}", "not json"])
def test_coco_not_coco_raises(tmp_path: pathlib.Path, content: str) -> None:
    f = tmp_path / "x.json"
    f.write_text(content)
    with pytest.raises(DatasetError, match="x.json"):
        read_coco(f, tmp_path)


# ---------------------------------------------------------------- VOC


def test_voc_imagesets_layout_with_names() -> None:
    src = read_voc(FIXTURES / "voc" / "ImageSets" / "Main" / "train.txt", names=["cat", "dog"])
    _check_format(src)
    assert [s.image.name for s in src.samples] == ["img1.jpg", "img2.jpg"]
    assert [s.image_id for s in src.samples] == [0, 1]
    img1, img2 = src.samples
    # object 1: cat (1,1,17,9) -> 1-based -> (0,0,16,8)/(32,16) = [0 0 .5 .5]
    # object 4: cat (20,5,40,12) -> (19,4,39,11)/(32,16) = [.59375 .25 1.21875 .6875] clipped to x2 = 1
    np.testing.assert_allclose(img1.boxes, [[0, 0, 0.5, 0.5], [0.59375, 0.25, 1, 0.6875]])
    assert img1.labels.tolist() == [0, 0] and (img1.width, img1.height) == (32, 16)
    issues = _issues(src, "img1.xml")
    assert issues[2].severity == "info" and "difficult=1" in issues[2].what
    assert "'bird' not in names" in issues[3].what and issues[3].action == "skipped label"
    assert issues[4].action == "clipped"
    assert "degenerate" in issues[5].what and "unparsable <bndbox>" in issues[6].what
    # img2.xml has no <size>: read from the 16x16 image; <path> (the annotator's laptop) is ignored
    assert (img2.width, img2.height) == (16, 16)
    np.testing.assert_allclose(img2.boxes, [[0, 0, 0.5, 0.5]])
    assert img2.labels.tolist() == [1]
    listed = _issues(src, "train.txt")
    assert listed[3].action == "skipped image" and "img3.jpg" in listed[3].what  # xml without image
    assert listed[4].action == "skipped image" and "nosuch.xml" in listed[4].what  # id without xml


def test_voc_default_names_and_difficult() -> None:
    src = read_voc(FIXTURES / "voc", keep_difficult=True)  # root: every xml
    assert src.names == ["bird", "cat", "dog"]
    assert src.samples[0].labels.tolist() == [1, 2, 0, 1]
    assert not any("difficult" in i.what for i in src.issues)


def test_voc_labelimg_layout_splits() -> None:
    train = read_voc(FIXTURES / "labelimg" / "train.txt")
    (s,) = train.samples
    assert train.names == ["raccoon"] and s.image.name == "r-1.jpg"
    np.testing.assert_allclose(s.boxes, [[0.25, 0.25, 0.75, 0.75]])  # (9,5,25,13) - 1 over (32,16)
    whole = read_voc(FIXTURES / "labelimg" / "annotations")  # the xml directory itself
    assert [x.image.name for x in whole.samples] == ["r-1.jpg", "r-2.jpg"]
    np.testing.assert_allclose(whole.samples[1].boxes, [[0, 0, 1, 1]])  # (1,1,33,17) - 1 = the whole image
    assert train.issues == [] and whole.issues == []


def test_voc_missing_path_raises(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_voc(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no Annotations"):
        read_voc(tmp_path)


# ---------------------------------------------------------------- dispatch and COCO ground truth


@pytest.mark.parametrize(
    "spec, split, reader_file",
    [
        ("darknet/tiny.data", "train", "darknet"),
        ("coco/annotations/instances_val.json", "val", "coco"),
        ("coco", "val", "coco"),
        ("voc", "train", "voc"),
        ("voc/ImageSets/Main/val.txt", "val", "voc"),
        ("labelimg", "valid", "voc"),
    ],
)
def test_load_dataset_dispatch(spec: str, split: str, reader_file: str) -> None:
    src = load_dataset(FIXTURES / spec, split)
    assert src.samples
    if reader_file == "coco":
        assert src.category_ids == [1, 3]
    if spec == "labelimg":
        assert [s.image.name for s in src.samples] == ["r-2.jpg"]  # valid -> val.txt
    if spec == "voc":
        assert len(src.samples) == 2  # ImageSets/Main/train.txt


def test_load_dataset_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match="found none of train.txt"):
        load_dataset(tmp_path, "train")


@pytest.mark.parametrize("spec", ["darknet/tiny.data", "coco", "voc", "labelimg"])
def test_to_coco_gt_loads_in_pycocotools(spec: str) -> None:
    src = load_dataset(FIXTURES / spec, "train")
    gt = to_coco_gt(src)
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))  # must be plain json
    coco.createIndex()
    assert sorted(coco.getImgIds()) == sorted(s.image_id for s in src.samples)
    assert len(coco.getAnnIds()) == src.num_boxes
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == src.names
    for s in src.samples:
        img = coco.imgs[s.image_id]
        assert (img["width"], img["height"]) == (32, 16) or (img["width"], img["height"]) == (16, 16)


def test_to_coco_gt_values() -> None:
    src = read_coco(FIXTURES / "coco" / "annotations" / "instances_val.json")
    gt = to_coco_gt(src)
    assert gt["categories"] == [{"id": 1, "name": "person", "supercategory": ""},
                                {"id": 3, "name": "car", "supercategory": ""}]
    first = gt["annotations"][0]
    assert first["image_id"] == 1 and first["category_id"] == 3 and first["iscrowd"] == 0
    np.testing.assert_allclose(first["bbox"], [8, 4, 16, 8], atol=1e-4)
    assert first["area"] == pytest.approx(128, abs=1e-3)
    darknet = to_coco_gt(read_darknet_data(FIXTURES / "darknet" / "tiny.data", "train"))
    assert [c["id"] for c in darknet["categories"]] == [1, 2]  # no category ids -> 1..N
    assert {(i["width"], i["height"]) for i in darknet["images"]} == {(32, 16)}  # read from the jpg headers


# ---------------------------------------------------------------- the shared datasets


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared datasets not available")
@pytest.mark.parametrize("split", ["train", "val"])
def test_shared_raccoon(split: str) -> None:
    src = load_dataset(SHARED / "data" / "raccoon", split)
    _check_format(src)
    assert src.names == ["raccoon"] and len(src.samples) > 0 and src.num_boxes >= len(src.samples)
    listed = (SHARED / "data" / "raccoon" / f"{split}.txt").read_text().split()
    assert [s.image.name for s in src.samples] == listed


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared datasets not available")
def test_shared_coco128() -> None:
    path = SHARED / "data" / "coco128" / "annotations" / "instances.json"
    src = read_coco(path)
    _check_format(src)
    assert len(src.names) == 80 and src.names[0] == "person" and src.category_ids[-1] == 90
    assert len(src.samples) > 0 and src.num_boxes > 0
    gt = to_coco_gt(src)
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    raw = json.loads(path.read_text())
    non_crowd = sum(1 for a in raw["annotations"] if not a.get("iscrowd", 0))
    assert len(coco.getAnnIds()) == src.num_boxes <= non_crowd
