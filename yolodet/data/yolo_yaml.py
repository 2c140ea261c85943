"""Ultralytics-style dataset YAML: ``path``, ``train``, ``val`` (``test``), ``names``; YOLO txt labels.

```yaml
path: ../datasets/coco128     # root; relative to the YAML file's folder (default: that folder)
train: images/train2017       # a folder of images, an image-list .txt, or a list of either
val: images/train2017
names: {0: person, 1: bicycle}  # or a list; `nc` is checked against it when present
```

Labels are found as Ultralytics and Darknet find them: the last ``/images/`` of an image path replaced by
``/labels/``, the extension by ``.txt`` (then the other Darknet places, see
:func:`~yolodet.data.darknet.label_path_candidates`). An image without a label file has no objects.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

from yolodet.data.darknet import labelled_samples
from yolodet.data.sample import DatasetError, DatasetSource, LabelIssue

logger = logging.getLogger(__name__)

__all__ = ["read_yolo_yaml"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_SPLIT_KEYS = {"train": ("train",), "valid": ("val", "valid"), "val": ("val", "valid"), "test": ("test",)}


def read_yolo_yaml(path: str | os.PathLike, split: str = "val") -> DatasetSource:
    """Read the ``split`` (``train``, ``val``/``valid``, ``test``) of a dataset YAML.

    Raises:
        DatasetError: unreadable YAML, missing ``names`` or split key, a split entry that does not exist, or
            ``nc`` disagreeing with ``names``.
    """
    import yaml

    yaml_path = pathlib.Path(path)
    try:
        spec = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{yaml_path}: cannot read dataset YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise DatasetError(f"{yaml_path}: a dataset YAML is a mapping with path/train/val/names keys")
    names = _names(spec, yaml_path)
    key = next((k for k in _SPLIT_KEYS.get(split, (split,)) if spec.get(k)), None)
    if key is None:
        raise DatasetError(f"{yaml_path}: no `{_SPLIT_KEYS.get(split, (split,))[0]}:` entry for split {split!r}")
    root = pathlib.Path(spec.get("path") or ".")
    if not root.is_absolute():
        root = yaml_path.resolve().parent / root
    entries = spec[key] if isinstance(spec[key], list) else [spec[key]]
    issues: list[LabelIssue] = []
    images: list[tuple[pathlib.Path | None, str]] = []
    for entry in entries:
        images += _expand(yaml_path, root, str(entry), issues)
    samples = labelled_samples(images, len(names), issues)
    logger.info("%s [%s]: %d images, %d classes, %d issues", yaml_path, key, len(samples), len(names), len(issues))
    return DatasetSource(names=names, samples=samples, issues=issues)


def _names(spec: dict[str, Any], yaml_path: pathlib.Path) -> list[str]:
    raw = spec.get("names")
    if isinstance(raw, dict):
        try:
            ids = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise DatasetError(f"{yaml_path}: names: keys must be class ids 0..N-1") from None
        if ids != list(range(len(ids))):
            raise DatasetError(f"{yaml_path}: names: class ids must be 0..{len(ids) - 1}, got {ids}")
        names = [str(raw[k] if k in raw else raw[str(k)]) for k in ids]
    elif isinstance(raw, list) and raw:
        names = [str(n) for n in raw]
    else:
        raise DatasetError(f"{yaml_path}: no `names:` list or mapping")
    if "nc" in spec and spec["nc"] != len(names):
        raise DatasetError(f"{yaml_path}: nc={spec['nc']} but names has {len(names)} entries")
    return names


def _expand(yaml_path: pathlib.Path, root: pathlib.Path, entry: str,
            issues: list[LabelIssue]) -> list[tuple[pathlib.Path | None, str]]:
    """One split entry (a folder of images or an image-list .txt, relative to ``root``) -> (image, listed).
    In a list, ``./x`` is relative to the list's folder (as Ultralytics reads it), other relative paths to
    ``root``."""
    target = pathlib.Path(entry)
    target = target if target.is_absolute() else root / target
    if target.is_dir():
        return [(p, p.name) for p in sorted(target.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if target.is_file() and target.suffix.lower() == ".txt":
        found = []
        for n, line in enumerate(target.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            listed = line.strip()
            image = pathlib.Path(listed)
            if not image.is_absolute():  # Ultralytics: "./x" is relative to the list's folder
                image = target.parent / listed[2:] if listed.startswith("./") else root / image
            if not image.is_file():
                issues.append(LabelIssue(target, n, f"image {line.strip()} not found", "skipped image"))
                found.append((None, line.strip()))
            else:
                found.append((image, line.strip()))
        return found
    raise DatasetError(f"{yaml_path}: split entry {entry!r} is neither a folder of images nor an image list "
                       f"(looked at {target})")
