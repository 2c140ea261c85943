"""Rewrite a Darknet cfg for fine-tuning: class count (``classes`` and the head convs' ``filters``), anchors, and
the ``[net]`` training keys, editing the text line by line so comments and layout survive.

AlexeyAB's recipe for custom objects (README "How to train to detect your custom objects"): ``batch=64``,
``max_batches = max(2000 * classes, 6000)`` (at least the number of training images), ``steps`` at 80% and 90%
of ``max_batches``, ``classes=N`` in every ``[yolo]`` and ``filters = (N + 5) * len(mask)`` in the
``[convolutional]`` just before each ``[yolo]``. The other trainable heads follow their own layouts:
``[Gaussian_yolo]`` ``filters = (N + 9) * len(mask)`` (four sigmas more), YOLOv2's ``[region]``
``filters = num * (coords + 1 + N)``.
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


HEAD_TYPES = ("yolo", "gaussian_yolo", "region")
"""The head sections whose class count :func:`set_classes` edits (with the ``[convolutional]`` before each)."""


def _heads(blocks: list[CfgBlock]) -> list[tuple[CfgBlock, CfgBlock]]:
    """(head block, the ``[convolutional]`` right before it) pairs, for every head in :data:`HEAD_TYPES`."""
    pairs = []
    for i, block in enumerate(blocks):
        if block.type in HEAD_TYPES:
            conv = blocks[i - 1]
            if conv.type != "convolutional":
                raise block.error(f"the section before [{block.type}] is [{conv.type}], not the head "
                                  "[convolutional]")
            pairs.append((block, conv))
    if not pairs:
        raise CfgError("the cfg has no [yolo], [Gaussian_yolo] or [region] sections",
                       path=blocks[0].path if blocks else "<cfg>")
    return pairs


def _head_filters(head: CfgBlock, classes: int) -> int:
    """Output channels of the conv feeding ``head`` for ``classes`` classes (Darknet's layout of each head)."""
    num = len(head.get_floats("anchors")) // 2
    if head.type == "region":
        return head.get_int("num", num) * (head.get_int("coords", 4) + 1 + classes)
    per_anchor = classes + (9 if head.type == "gaussian_yolo" else 5)
    return len(head.get_ints("mask", list(range(num)))) * per_anchor


def set_classes(text: str, classes: int, *, anchors: Sequence[Sequence[float]] | None = None,
                path: str = "<cfg>") -> str:
    """The cfg ``text`` with ``classes`` classes (and optionally new ``anchors``, as many as ``num``).

    Raises:
        CfgError: no head sections, a head not preceded by its conv, the wrong anchor count, or pixel anchors
            for a ``[region]`` head.
    """
    if classes < 1:
        raise SettingError(f"classes must be >= 1, got {classes}")
    blocks = parse_cfg_text(text, path)
    editor = _Editor(text)
    for head, conv in _heads(blocks):
        editor.set(head, "classes", str(classes))
        editor.set(conv, "filters", str(_head_filters(head, classes)))
        if anchors is not None:
            if head.type == "region":
                raise head.error("[region] anchors are in grid cells, not pixels: edit them by hand", "anchors")
            num = len(head.get_floats("anchors")) // 2
            if len(anchors) != num:
                raise head.error(f"{len(anchors)} anchors given but the masks index {num} anchors", "anchors")
            editor.set(head, "anchors", format_anchors(anchors))
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
