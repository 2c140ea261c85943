"""The root of yolodet's error types.

Every error yolodet raises for bad input (a cfg, a weights file, a dataset, an image, an argument) derives from
:class:`YolodetError` and carries a complete one-line message that names the file, layer, key or value at fault.
The ``yolodet`` command turns these into one-line messages and exit code 2; any other exception is a bug, reported
with a hint to re-run with ``--debug``.
"""

from __future__ import annotations

__all__ = ["SettingError", "YolodetError"]


class YolodetError(Exception):
    """Bad input, explained in the message (never a bug in yolodet)."""


class SettingError(YolodetError, ValueError):
    """A setting or argument out of its range (a count below 1, an unknown name, a size that does not fit)."""
