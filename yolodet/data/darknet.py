"""Darknet datasets: a ``.data`` file, an image list, one ``.txt`` label file per image.

``.data`` grammar (as Darknet's ``read_data_cfg``): ``key = value`` lines; blank lines and lines starting with
``#`` or ``;`` are ignored; unknown keys (``backup``, ``eval``, ``results``, ...) are kept and not interpreted.
Keys used here: ``names`` (required), ``train``/``valid`` (the image list of the split), ``classes`` (checked
against the names file).

Relative paths: Darknet resolves every path against the current working directory. To make a dataset movable,
a relative path is tried against, in order, the directory of the file that mentions it (the ``.data`` file for
``names``/``train``/``valid``; the list file for image paths), then the ``.data`` file's directory, then the
current working directory; the first that exists wins.

Label files are found the Darknet way (:func:`label_path_candidates`). A label line is
``class cx cy w h`` with the box centre and size as fractions of the image size.
"""

from __future__ import annotations

import logging
import os
import pathlib

from yolodet.data.sample import (
    DatasetError,
    DatasetSource,
    LabelIssue,
    Sample,
    checked_box,
    empty_sample_arrays,
    stack_labels,
)

logger = logging.getLogger(__name__)

__all__ = ["label_path_candidates", "labelled_samples", "parse_data_file", "read_darknet_data", "read_darknet_labels",
           "read_names"]

# Darknet .data keys of the split lists; "val" is accepted for "valid" (the name most other tools use).
_SPLIT_KEYS = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}


def parse_data_file(path: str | os.PathLike) -> dict[str, str]:
    """Read a Darknet ``.data`` file into ``{key: value}`` (later duplicates win, as in Darknet).

    Raises:
        DatasetError: the file is missing or a non-comment line has no ``=``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"Darknet .data file {path} does not exist")
    options: dict[str, str] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"{path}:{n}: expected `key = value`, got {raw!r}")
        options[key.strip()] = value.strip()
    return options


def read_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per non-blank line (surrounding whitespace stripped).

    Raises:
        DatasetError: the file is missing or holds no names.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"names file {path} does not exist")
    names = [s.strip() for s in path.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()]
    if not names:
        raise DatasetError(f"names file {path} holds no class names")
    return names


def label_path_candidates(image: str | os.PathLike) -> list[pathlib.Path]:
    """Where Darknet looks for the label file of ``image``, most specific first.

    1. an ``/images/`` directory component replaced by ``/labels/`` (pjreddie's rule and the COCO layout
    AlexeyAB keeps; each occurrence is tried, the first one first), 2. ``/JPEGImages/`` replaced by ``/labels/``
    (VOC), 3. beside the image (the layout AlexeyAB documents for custom data). In each, the image extension
    (any case) is replaced by ``.txt``. Duplicates are removed; the caller uses the first that exists.
    """
    path = pathlib.Path(image)
    # A leading "/" lets a relative "images/x.jpg" match "/images/" too; it is removed again below.
    posix = path.as_posix() if path.is_absolute() else "/" + path.as_posix()
    variants = []
    for old in ("/images/", "/JPEGImages/"):
        # Every occurrence, first one first: Darknet replaces the first one in the path as written in the list,
        # and resolving a relative entry may have put another `/images/` in front of it.
        start = posix.find(old)
        while start >= 0:
            variants.append(posix[:start] + "/labels/" + posix[start + len(old):])
            start = posix.find(old, start + 1)
    variants.append(posix)
    out: list[pathlib.Path] = []
    for v in variants:
        p = pathlib.Path(v if path.is_absolute() else v[1:]).with_suffix(".txt")
        if p not in out:
            out.append(p)
    return out


def read_darknet_labels(
    path: pathlib.Path, num_classes: int, issues: list[LabelIssue]
) -> tuple[list[tuple[float, float, float, float]], list[int]]:
    """Parse one Darknet label file into normalised ``xyxy`` boxes and class indices.

    Bad lines (not 5 fields, not numbers, class outside ``[0, num_classes)``) and degenerate boxes are skipped,
    out-of-image boxes clipped; each case appends a :class:`LabelIssue` naming ``path`` and the 1-based line.
    """
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 5:
            issues.append(LabelIssue(path, n, f"expected `class cx cy w h`, got {raw.strip()!r}", "skipped label"))
            continue
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(f) for f in fields[1:])
        except ValueError:
            issues.append(LabelIssue(path, n, f"unparsable label line {raw.strip()!r}", "skipped label"))
            continue
        if not 0 <= cls < num_classes:
            issues.append(LabelIssue(path, n, f"class id {cls} not in [0, {num_classes})", "skipped label"))
            continue
        box = checked_box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, file=path, line=n, issues=issues)
        if box is not None:
            boxes.append(box)
            labels.append(cls)
    return boxes, labels


def read_darknet_data(path: str | os.PathLike, split: str = "valid") -> DatasetSource:
    """Read the ``split`` (``"train"``, ``"valid"``/``"val"``) of a Darknet ``.data`` dataset.

    Images listed but missing are skipped (recorded). An image without a label file is kept with no objects,
    as Darknet does (recorded with severity ``"info"``). ``image_id`` is the integer file stem when every image
    in the list has a unique all-digit stem (COCO 2017 names, matching ``eval=coco`` results), else the 0-based
    position of the image in the list.

    Raises:
        DatasetError: missing ``.data``, names or list file, or the split's key is absent.
    """
    data_path = pathlib.Path(path)
    options = parse_data_file(data_path)
    key = _SPLIT_KEYS.get(split, split)
    if key not in options:
        raise DatasetError(f"{data_path}: no `{key}=` entry for split {split!r} (keys: {', '.join(options)})")
    if "names" not in options:
        raise DatasetError(f"{data_path}: no `names=` entry")
    data_dir = data_path.resolve().parent
    names_path = _resolve(options["names"], [data_dir])
    if names_path is None:
        raise DatasetError(f"{data_path}: names file {options['names']!r} not found (relative to {data_dir} or cwd)")
    names = read_names(names_path)
    issues: list[LabelIssue] = []
    if "classes" in options and options["classes"] != str(len(names)):
        issues.append(LabelIssue(
            data_path, None, f"classes={options['classes']} but {names_path} has {len(names)} names",
            "ignored (the names file defines the classes)",
        ))
    list_path = _resolve(options[key], [data_dir])
    if list_path is None or not list_path.is_file():
        raise DatasetError(f"{data_path}: image list {options[key]!r} not found (relative to {data_dir} or cwd)")

    entries = [(n, s.strip()) for n, s in
               enumerate(list_path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1) if s.strip()]
    list_dir = list_path.resolve().parent
    images = []
    for n, entry in entries:
        image = _resolve(entry, [list_dir, data_dir])
        if image is None or not image.is_file():
            issues.append(LabelIssue(list_path, n, f"image {entry} not found", "skipped image"))
            image = None
        images.append((image, entry))
    samples = labelled_samples(images, len(names), issues)
    logger.info("%s [%s]: %d images, %d classes, %d issues", data_path, key, len(samples), len(names), len(issues))
    return DatasetSource(names=names, samples=samples, issues=issues)


def labelled_samples(images: list[tuple[pathlib.Path | None, str]], num_classes: int,
                     issues: list[LabelIssue]) -> list[Sample]:
    """Samples for a list of (image, the name it was listed as); image None: listed but not found (already
    reported). Each image gets its YOLO txt label file found the Darknet way; an image without one has no
    objects (recorded as ``info``).

    ``image_id`` is the integer file stem when every listed image has a unique all-digit stem (COCO 2017 names),
    else the 0-based position in the list.
    """
    stems = [pathlib.PurePath(listed).stem for _, listed in images]
    numeric_ids = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
    samples: list[Sample] = []
    for index, ((image, _), stem) in enumerate(zip(images, stems)):
        if image is None:
            continue
        label_file = next((p for p in label_path_candidates(image) if p.is_file()), None)
        if label_file is None:
            issues.append(LabelIssue(
                image, None, f"no label file (looked for {', '.join(map(str, label_path_candidates(image)))})",
                "no objects", severity="info",
            ))
            boxes, labels = empty_sample_arrays()
        else:
            boxes, labels = stack_labels(*read_darknet_labels(label_file, num_classes, issues))
        samples.append(Sample(image=image, boxes=boxes, labels=labels,
                              image_id=int(stem) if numeric_ids else index))
    return samples


def _resolve(value: str, bases: list[pathlib.Path]) -> pathlib.Path | None:
    """First existing path among ``value`` itself (if absolute), ``base / value`` for each base, then cwd."""
    p = pathlib.Path(value).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in [*bases, pathlib.Path.cwd()]:
        candidate = base / p
        if candidate.exists():
            return candidate
    return None
