"""Rewrite a Darknet cfg for fine-tuning: class count (``classes`` and the head convs' ``filters``), anchors, and
the ``[net]`` training keys, editing the text line by line so comments and layout survive.

AlexeyAB's recipe for custom objects (README "How to train to detect your custom objects"): ``batch=64``,
``max_batches = max(2000 * classes, 6000)`` (at least the number of training images), ``steps`` at 80% and 90%
of ``max_batches``, ``classes=N`` in every ``[yolo]`` and ``filters = (N + 5) * len(mask)`` in the
``[convolutional]`` just before each ``[yolo]``.
"""

from __future__ import annotations

from typing import Sequence

from yolodet.cfg import CfgBlock, CfgError, parse_cfg_text
from yolodet.errors import SettingError

__all__ = ["finetune_cfg", "format_anchors", "set_classes"]


def format_anchors(anchors: Sequence[Sequence[float]]) -> str:
    """``[[10.2, 14], [23, 27.4]]`` -> ``"10,14, 23,27"`` (rounded to pixels, as Darknet prints them)."""
    return ", ".join(f"{max(1, round(w))},{max(1, round(h))}" for w, h in anchors)


class _Editor:
    """Collects ``key=value`` replacements/insertions on a cfg's lines and applies them bottom-up."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.edits: dict[tuple[int, str], tuple[CfgBlock, str]] = {}

    def set(self, block: CfgBlock, key: str, value: str) -> None:
        self.edits[(block.line, key)] = (block, value)

    def text(self) -> str:
        inserts: dict[int, list[str]] = {}
        for (header, key), (block, value) in self.edits.items():
            if key in block.key_lines:
                self.lines[block.key_lines[key] - 1] = f"{key}={value}"
            else:
                inserts.setdefault(header, []).append(f"{key}={value}")
        for header in sorted(inserts, reverse=True):
            self.lines[header:header] = inserts[header]
        return "\n".join(self.lines) + "\n"


def _heads(blocks: list[CfgBlock]) -> list[tuple[CfgBlock, CfgBlock]]:
    """(``[yolo]`` block, the ``[convolutional]`` right before it) pairs."""
    pairs = []
    for i, block in enumerate(blocks):
        if block.type == "yolo":
            conv = blocks[i - 1]
            if conv.type != "convolutional":
                raise block.error(f"the section before [yolo] is [{conv.type}], not the head [convolutional]")
            pairs.append((block, conv))
    if not pairs:
        raise CfgError("the cfg has no [yolo] sections", path=blocks[0].path if blocks else "<cfg>")
    return pairs


def set_classes(text: str, classes: int, *, anchors: Sequence[Sequence[float]] | None = None,
                path: str = "<cfg>") -> str:
    """The cfg ``text`` with ``classes`` classes (and optionally new ``anchors``, as many as ``num``).

    Raises:
        CfgError: no ``[yolo]`` sections, a ``[yolo]`` not preceded by its conv, or the wrong anchor count.
    """
    if classes < 1:
        raise SettingError(f"classes must be >= 1, got {classes}")
    blocks = parse_cfg_text(text, path)
    editor = _Editor(text)
    for yolo, conv in _heads(blocks):
        num = len(yolo.get_floats("anchors")) // 2
        mask = yolo.get_ints("mask", list(range(num)))
        editor.set(yolo, "classes", str(classes))
        editor.set(conv, "filters", str(len(mask) * (classes + 5)))
        if anchors is not None:
            if len(anchors) != num:
                raise yolo.error(f"{len(anchors)} anchors given but the masks index {num} anchors", "anchors")
            editor.set(yolo, "anchors", format_anchors(anchors))
    return editor.text()


def finetune_cfg(text: str, classes: int, *, anchors: Sequence[Sequence[float]] | None = None,
                 batch: int = 64, subdivisions: int | None = None, max_batches: int | None = None,
                 width: int | None = None, height: int | None = None, path: str = "<cfg>") -> str:
    """A training cfg for ``classes`` classes from a (COCO) cfg, following AlexeyAB's recipe (module docstring).

    Args:
        batch, subdivisions: ``[net]`` batch and mini-batches per batch (kept from the cfg when None, unless the
            cfg is in its "testing" form ``batch=1``).
        max_batches: default ``max(2000 * classes, 6000)``; ``steps`` are set to 80% and 90% of it.
        width, height: new network size (multiples of 32).
    """
    text = set_classes(text, classes, anchors=anchors, path=path)
    blocks = parse_cfg_text(text, path)
    net = blocks[0]
    editor = _Editor(text)
    editor.set(net, "batch", str(batch))
    if subdivisions is not None:
        editor.set(net, "subdivisions", str(subdivisions))
    elif net.get_int("subdivisions", 1) > batch:
        editor.set(net, "subdivisions", str(batch))
    total = max_batches if max_batches is not None else max(2000 * classes, 6000)
    editor.set(net, "max_batches", str(total))
    editor.set(net, "policy", "steps")
    editor.set(net, "steps", f"{int(total * 0.8)},{int(total * 0.9)}")
    editor.set(net, "scales", ".1,.1")
    for key, value in (("width", width), ("height", height)):
        if value is not None:
            if value % 32:
                raise SettingError(f"{key} must be a multiple of 32, got {value}")
            editor.set(net, key, str(value))
    return editor.text()
