"""One entry point for every dataset format, and conversion to COCO ground truth for evaluation.

:func:`load_dataset` picks the reader from ``spec``:

1. ``*.data`` -> Darknet (:func:`~yolodet.data.darknet.read_darknet_data`), list of ``split``
   (``train``/``valid``; ``val`` is an alias of ``valid``).
2. ``*.json`` -> COCO (:func:`~yolodet.data.coco.read_coco`); the json *is* the split, so ``split`` is unused;
   images in ``images_dir`` or the default of :func:`~yolodet.data.coco.default_coco_images_dir`.
3. ``*.txt`` -> a Pascal VOC split list (:func:`~yolodet.data.voc.read_voc`).
3b. ``*.yaml``/``*.yml`` -> an Ultralytics dataset YAML (:func:`~yolodet.data.yolo_yaml.read_yolo_yaml`).
4. a directory, first match of:
   a. ``<dir>/<split>.txt`` or ``<dir>/ImageSets/Main/<split>.txt`` (``val``/``valid`` tried for either) -> VOC
      split list (the raccoon layout: ``train.txt``/``val.txt`` beside ``annotations/`` and ``images/``);
   b. ``<dir>/annotations/instances_<split>*.json``, or the only json in ``<dir>/annotations/`` -> COCO;
   c. ``Annotations/``/``annotations/`` with xml files, or xml files in ``<dir>`` -> VOC, every xml (``split``
      is unused: a warning is logged).

:func:`to_coco_gt` turns any :class:`DatasetSource` into a COCO ground-truth dict so that pycocotools can
evaluate detections on Darknet and VOC datasets too.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

from yolodet.data.coco import read_coco
from yolodet.data.darknet import read_darknet_data
from yolodet.data.sample import DatasetError, DatasetSource
from yolodet.data.voc import read_voc
from yolodet.data.yolo_yaml import read_yolo_yaml

logger = logging.getLogger(__name__)

__all__ = ["load_dataset", "to_coco_gt"]

_SPLIT_ALIASES = {"valid": ("valid", "val"), "val": ("val", "valid")}


def load_dataset(
    spec: str | os.PathLike,
    split: str,
    *,
    names: list[str] | None = None,
    images_dir: str | os.PathLike | None = None,
) -> DatasetSource:
    """Read the ``split`` of the dataset at ``spec``, choosing the reader by the rules of the module docstring.

    Args:
        spec: ``.data`` file, COCO json, dataset YAML, VOC split list, or dataset directory.
        split: ``"train"``, ``"valid"``/``"val"``, ``"test"``.
        names: class names for VOC datasets (default: the sorted names found); ignored by the other formats,
            whose names come with the dataset.
        images_dir: image directory for COCO json (default: guessed from the json's location).

    Raises:
        DatasetError: nothing at ``spec``, or no rule matches (the message lists what was looked for).
    """
    path = pathlib.Path(spec).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix == ".data":
            return read_darknet_data(path, split)
        if suffix == ".json":
            return read_coco(path, images_dir)
        if suffix == ".txt":
            return read_voc(path, names)
        if suffix in (".yaml", ".yml"):
            return read_yolo_yaml(path, split)
        raise DatasetError(f"dataset {path}: expected a .data, .json, .yaml or .txt file, or a directory")

    splits = _SPLIT_ALIASES.get(split, (split,))
    for s in splits:
        for candidate in (path / f"{s}.txt", path / "ImageSets" / "Main" / f"{s}.txt"):
            if candidate.is_file():
                return read_voc(candidate, names)
    ann_dir = path / "annotations"
    jsons = sorted(ann_dir.glob("*.json")) if ann_dir.is_dir() else []
    for s in splits:
        matches = [j for j in jsons if j.stem.startswith(f"instances_{s}")]
        if len(matches) == 1:
            return read_coco(matches[0], images_dir)
    if len(jsons) == 1:
        return read_coco(jsons[0], images_dir)
    if any((path / d).is_dir() for d in ("Annotations", "annotations")) or any(path.glob("*.xml")):
        logger.warning("%s has no %s split list: reading every xml annotation", path, "/".join(splits))
        return read_voc(path, names)
    raise DatasetError(
        f"dataset directory {path}: found none of {', '.join(f'{s}.txt' for s in splits)}, "
        f"ImageSets/Main/<split>.txt, annotations/instances_<split>*.json (or a single annotations/*.json), "
        f"Annotations/ with xml files"
    )


def to_coco_gt(source: DatasetSource) -> dict[str, Any]:
    """COCO ground truth for ``source``, ready for ``pycocotools.coco.COCO`` (set ``.dataset``, ``createIndex()``).

    Images carry ``id = sample.image_id``, ``file_name`` (base name), ``width``/``height`` (from the sample, or
    the image header via Pillow when unknown). Each box becomes an annotation with ``bbox = [x, y, w, h]`` in
    pixels, ``area = w * h``, ``iscrowd = 0`` and ``category_id = source.category_ids[label]`` (or
    ``label + 1`` when the source has no category ids); ids run from 1.

    Raises:
        ValueError: two samples share an ``image_id``.
    """
    category_ids = source.category_ids or list(range(1, len(source.names) + 1))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[int] = set()
    for sample in source.samples:
        if sample.image_id in seen:
            raise ValueError(f"duplicate image_id {sample.image_id} ({sample.image})")
        seen.add(sample.image_id)
        width, height = _image_size(sample.image, sample.width, sample.height)
        images.append({"id": int(sample.image_id), "file_name": sample.image.name, "width": width, "height": height})
        scale = (width, height, width, height)
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist()):
            x1, y1, x2, y2 = (v * s for v, s in zip(box, scale))
            w, h = x2 - x1, y2 - y1
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(sample.image_id),
                "category_id": int(category_ids[label]), "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0,
            })
    categories = [{"id": int(cid), "name": name, "supercategory": ""} for cid, name in zip(category_ids, source.names)]
    return {"info": {"description": "yolodet ground truth"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": categories}


def _image_size(image: pathlib.Path, width: int | None, height: int | None) -> tuple[int, int]:
    if width and height:
        return int(width), int(height)
    from PIL import Image  # reads the header only; cv2.imread would decode every pixel

    with Image.open(image) as im:
        return im.size
