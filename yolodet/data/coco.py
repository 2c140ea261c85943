"""COCO ``instances_*.json`` datasets.

Class order: categories sorted by id; ``labels`` index that order and ``DatasetSource.category_ids`` maps an
index back to the json id (for COCO 2017: 0 -> 1 person, ..., 79 -> 90 toothbrush). Training targets leave out
``iscrowd=1`` annotations (recorded with severity ``"info"``); COCO evaluation should use the json itself,
where crowd regions are honoured.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

from yolodet.data.sample import (
    DatasetError,
    DatasetSource,
    LabelIssue,
    Sample,
    checked_box,
    stack_labels,
)

logger = logging.getLogger(__name__)

__all__ = ["default_coco_images_dir", "read_coco"]


def default_coco_images_dir(annotations_json: str | os.PathLike) -> pathlib.Path:
    """Guess the image directory of a COCO json, first existing of:

    ``<root>/images`` (``root/annotations/x.json``, the coco128 layout), ``<root>/<split>`` for
    ``instances_<split>.json`` (``annotations/instances_val2017.json`` -> ``val2017``), ``<json dir>/images``;
    else the json's own directory.
    """
    path = pathlib.Path(annotations_json).resolve()
    root = path.parent.parent
    candidates = [root / "images"]
    if path.stem.startswith("instances_"):
        candidates += [root / path.stem[len("instances_"):], root / "images" / path.stem[len("instances_"):]]
    candidates.append(path.parent / "images")
    return next((c for c in candidates if c.is_dir()), path.parent)


def read_coco(
    annotations_json: str | os.PathLike, images_dir: str | os.PathLike | None = None
) -> DatasetSource:
    """Read a COCO detection json into the internal format.

    Args:
        annotations_json: COCO ``instances`` json (``images`` and ``categories`` lists required,
            ``annotations`` optional).
        images_dir: where ``file_name`` is resolved; default :func:`default_coco_images_dir`.

    Images keep the json order and id; images without annotations are kept (no objects); images whose file
    is missing are skipped. ``bbox`` ``[x, y, w, h]`` in pixels is normalised by the json width/height.

    Raises:
        DatasetError: the file is missing, is not json, or does not look like COCO detection annotations.
    """
    path = pathlib.Path(annotations_json)
    data = _load_json(path)
    images_root = pathlib.Path(images_dir) if images_dir is not None else default_coco_images_dir(path)
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    category_ids = [int(c["id"]) for c in categories]
    names = [str(c.get("name", c["id"])) for c in categories]
    index_of = {cid: i for i, cid in enumerate(category_ids)}
    issues: list[LabelIssue] = []

    images: dict[int, dict[str, Any]] = {}
    for im in data["images"]:
        try:
            images[int(im["id"])] = im
        except (KeyError, TypeError, ValueError):
            issues.append(LabelIssue(path, None, f"image entry without an integer id: {_short(im)}", "skipped image"))

    per_image: dict[int, tuple[list[tuple[float, float, float, float]], list[int]]] = {i: ([], []) for i in images}
    for ann in data.get("annotations", []):
        _add_annotation(ann, path, images, index_of, per_image, issues)

    samples: list[Sample] = []
    for image_id, im in images.items():
        what = f"image id {image_id}"
        file_name = im.get("file_name")
        if not file_name:
            issues.append(LabelIssue(path, None, f"{what}: no file_name", "skipped image"))
            continue
        image = images_root / file_name
        if not image.is_file():
            issues.append(LabelIssue(path, None, f"{what}: image {image} not found", "skipped image"))
            continue
        boxes, labels = stack_labels(*per_image[image_id])
        samples.append(Sample(image=image, boxes=boxes, labels=labels, image_id=image_id,
                              width=_int_or_none(im.get("width")), height=_int_or_none(im.get("height"))))
    logger.info("%s: %d images, %d classes, %d issues", path, len(samples), len(names), len(issues))
    return DatasetSource(names=names, samples=samples, issues=issues, category_ids=category_ids)


def _add_annotation(
    ann: dict[str, Any],
    path: pathlib.Path,
    images: dict[int, dict[str, Any]],
    index_of: dict[int, int],
    per_image: dict[int, tuple[list[tuple[float, float, float, float]], list[int]]],
    issues: list[LabelIssue],
) -> None:
    """Validate one annotation and append its normalised box to ``per_image`` (or record why not)."""
    what = f"annotation id {ann.get('id')}: "
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    if image_id not in images:
        issues.append(LabelIssue(path, None, f"{what}unknown image_id {image_id}", "skipped label"))
        return
    if category_id not in index_of:
        issues.append(LabelIssue(path, None, f"{what}unknown category_id {category_id}", "skipped label"))
        return
    if ann.get("iscrowd", 0):
        issues.append(LabelIssue(path, None, f"{what}iscrowd=1", "skipped label", severity="info"))
        return
    im = images[image_id]
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
        width, height = float(im["width"]), float(im["height"])
    except (KeyError, TypeError, ValueError):
        issues.append(LabelIssue(path, None, f"{what}bad bbox {ann.get('bbox')!r} or image size", "skipped label"))
        return
    if width <= 0 or height <= 0:
        issues.append(LabelIssue(path, None, f"{what}image {image_id} has size {width}x{height}", "skipped label"))
        return
    box = checked_box(x / width, y / height, (x + w) / width, (y + h) / height,
                      file=path, line=None, issues=issues, context=what)
    if box is not None:
        per_image[image_id][0].append(box)
        per_image[image_id][1].append(index_of[category_id])


def _load_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"COCO annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid json: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list) \
            or not isinstance(data.get("annotations", []), list):
        keys = list(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{path} is not COCO detection json: need `images` and `categories` lists (has {keys})")
    try:
        ids = [int(c["id"]) for c in data["categories"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: every category needs an integer `id`") from e
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: duplicate category ids")
    return data


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and int(value) > 0 else None
    except (TypeError, ValueError):
        return None


def _short(obj: Any, limit: int = 80) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
