"""Pascal VOC xml datasets (VOCdevkit, or labelImg exports such as the raccoon dataset).

Accepted layouts for ``root_or_list``:

- a dataset root with ``Annotations/`` (or ``annotations/``) of xml files and ``JPEGImages/`` (or ``images/``):
  every xml, sorted by file name;
- the xml directory itself (images in a sibling ``JPEGImages/``/``images/``, else beside the xml);
- a split list file, one entry per line: an image file name (``raccoon-1.jpg``, raccoon ``train.txt``) or a
  VOC id (``000005``, ``ImageSets/Main/train.txt``; extra columns as in ``ImageSets/Main/<class>_train.txt``
  are ignored). The dataset root is the list's directory, or three levels up for ``ImageSets/Main/*.txt``.
  The annotation of an entry is ``<xml dir>/<entry stem>.xml``.

The image is the xml ``<filename>`` inside the image directory (the absolute ``<path>`` is ignored: it points
at the annotator's machine); failing that, the list entry, then ``<xml stem>`` with a common image extension.

Coordinates follow Darknet's ``scripts/voc_label.py``: VOC pixel coordinates are 1-based, so 1 is subtracted
from ``xmin``/``ymin``/``xmax``/``ymax`` before normalising by ``<size>`` (the image header is read when
``<size>`` is missing or zero). Objects marked ``difficult=1`` are left out, as ``voc_label.py`` does
(recorded with severity ``"info"``; pass ``keep_difficult=True`` to keep them).
"""

from __future__ import annotations

import logging
import os
import pathlib
import xml.etree.ElementTree as ET

import numpy as np

from yolodet.data.sample import (
    DatasetError,
    DatasetSource,
    LabelIssue,
    Sample,
    checked_box,
    stack_labels,
)

logger = logging.getLogger(__name__)

__all__ = ["read_voc"]

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG", ".BMP")


def read_voc(
    root_or_list: str | os.PathLike,
    names: list[str] | None = None,
    *,
    keep_difficult: bool = False,
) -> DatasetSource:
    """Read a Pascal VOC dataset (see the module docstring for the accepted layouts).

    Args:
        root_or_list: dataset root, xml directory, or split list file.
        names: class names in index order; objects with other names are skipped (recorded). Default: the
            sorted set of object names found in the selected xml files. Pass it explicitly whenever splits
            must agree on class indices and a split might lack a class.
        keep_difficult: keep ``difficult=1`` objects instead of leaving them out.

    ``image_id`` is the 0-based position of the entry (list order, or sorted xml order).

    Raises:
        DatasetError: the path does not exist or no annotation directory can be found.
    """
    spec = pathlib.Path(root_or_list)
    xml_dir, images_dir, entries, list_file = _layout(spec)
    issues: list[LabelIssue] = []
    parsed: list[tuple[int, str, pathlib.Path, ET.Element | None]] = []
    for n, entry in entries:
        stem = pathlib.PurePath(entry).stem if entry.endswith(_IMAGE_EXTS + (".xml",)) else entry
        xml_path = xml_dir / f"{stem}.xml"
        where = list_file if list_file is not None else xml_path
        if not xml_path.is_file():
            issues.append(LabelIssue(where, n, f"annotation {xml_path} not found", "skipped image"))
            continue
        try:
            parsed.append((n, entry, xml_path, ET.parse(xml_path).getroot()))
        except ET.ParseError as e:
            issues.append(LabelIssue(xml_path, None, f"unparsable xml: {e}", "skipped image"))

    if names is None:
        names = sorted({(o.findtext("name") or "").strip() for *_, root in parsed for o in root.iter("object")}
                       - {""})
    index_of = {name: i for i, name in enumerate(names)}

    samples: list[Sample] = []
    for image_id, (n, entry, xml_path, root) in enumerate(parsed):
        image = _find_image(root, entry, xml_path, images_dir)
        if image is None:
            where = list_file if list_file is not None else xml_path
            issues.append(LabelIssue(where, n, f"image of {xml_path.name} "
                                     f"(<filename>{root.findtext('filename')}</filename>) not found in {images_dir}",
                                     "skipped image"))
            continue
        width, height = _size(root, image)
        boxes, labels = _objects(root, xml_path, width, height, index_of, keep_difficult, issues)
        samples.append(Sample(image=image, boxes=boxes, labels=labels, image_id=image_id,
                              width=width, height=height))
    logger.info("%s: %d images, %d classes, %d issues", spec, len(samples), len(names), len(issues))
    return DatasetSource(names=list(names), samples=samples, issues=issues)


def _layout(
    spec: pathlib.Path,
) -> tuple[pathlib.Path, pathlib.Path, list[tuple[int | None, str]], pathlib.Path | None]:
    """-> (xml dir, images dir, [(list line or None, entry)], list file or None)."""
    if not spec.exists():
        raise DatasetError(f"VOC dataset path {spec} does not exist")
    if spec.is_file():
        root = spec.parent
        if spec.parent.name == "Main" and spec.parent.parent.name == "ImageSets":
            root = spec.parent.parent.parent
        xml_dir = _first_dir(root, ("Annotations", "annotations"))
        if xml_dir is None:
            raise DatasetError(f"{spec}: no Annotations/ or annotations/ directory in {root}")
        lines = spec.read_text(encoding="utf-8", errors="replace").splitlines()
        entries = [(n, s.split()[0]) for n, s in enumerate(lines, start=1) if s.strip()]
        return xml_dir, _first_dir(root, ("JPEGImages", "images")) or xml_dir, entries, spec
    xml_dir = _first_dir(spec, ("Annotations", "annotations"))
    if xml_dir is not None:
        images_dir = _first_dir(spec, ("JPEGImages", "images")) or xml_dir
    elif any(spec.glob("*.xml")):
        xml_dir = spec
        images_dir = _first_dir(spec.parent, ("JPEGImages", "images")) or spec
    else:
        raise DatasetError(f"{spec}: no Annotations/, annotations/ or *.xml files found")
    entries = [(None, p.stem) for p in sorted(xml_dir.glob("*.xml"))]
    return xml_dir, images_dir, entries, None


def _first_dir(root: pathlib.Path, names: tuple[str, ...]) -> pathlib.Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _find_image(root: ET.Element, entry: str, xml_path: pathlib.Path, images_dir: pathlib.Path) -> pathlib.Path | None:
    candidates = []
    filename = (root.findtext("filename") or "").strip()
    if filename:
        candidates.append(images_dir / pathlib.PurePath(filename).name)
    if entry.endswith(_IMAGE_EXTS):
        candidates.append(images_dir / pathlib.PurePath(entry).name)
    candidates += [images_dir / f"{xml_path.stem}{ext}" for ext in _IMAGE_EXTS]
    return next((c for c in candidates if c.is_file()), None)


def _size(root: ET.Element, image: pathlib.Path) -> tuple[int, int]:
    """(width, height) from ``<size>``, or from the image header when absent/zero."""
    try:
        width, height = int(float(root.findtext("size/width") or 0)), int(float(root.findtext("size/height") or 0))
    except ValueError:
        width = height = 0
    if width > 0 and height > 0:
        return width, height
    from PIL import Image  # header only: no pixel decoding

    with Image.open(image) as im:
        return im.size


def _objects(
    root: ET.Element,
    xml_path: pathlib.Path,
    width: int,
    height: int,
    index_of: dict[str, int],
    keep_difficult: bool,
    issues: list[LabelIssue],
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and labels of the ``<object>`` elements; issue ``line`` = 1-based object index."""
    boxes, labels = [], []
    for k, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if name not in index_of:
            issues.append(LabelIssue(xml_path, k, f"object {k}: class {name!r} not in names", "skipped label"))
            continue
        if not keep_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            issues.append(LabelIssue(xml_path, k, f"object {k} ({name}): difficult=1", "skipped label",
                                     severity="info"))
            continue
        try:
            x1, y1, x2, y2 = (float(obj.findtext(f"bndbox/{t}")) - 1.0 for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            issues.append(LabelIssue(xml_path, k, f"object {k} ({name}): missing or unparsable <bndbox>",
                                     "skipped label"))
            continue
        box = checked_box(x1 / width, y1 / height, x2 / width, y2 / height,
                          file=xml_path, line=k, issues=issues, context=f"object {k} ({name}): ")
        if box is not None:
            boxes.append(box)
            labels.append(index_of[name])
    return stack_labels(boxes, labels)
