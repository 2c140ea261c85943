"""The cfgs shipped with yolodet (package data in ``yolodet/cfgs/``, also reachable as ``cfg/`` in a checkout).

``--cfg yolo-v3-tiny`` (a shipped name, with or without ``.cfg``) and ``--cfg path/to/my.cfg`` both work: a path
that exists wins, then a shipped name.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["COCO_NAMES", "DEFAULT_CFG", "SHIPPED_DIR", "resolve_cfg", "shipped_cfgs"]

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "cfgs"
"""Where the shipped cfgs and ``coco.names`` are installed."""

DEFAULT_CFG = SHIPPED_DIR / "yolo-v3-tiny.cfg"
"""The cfg of ``yolodet detect`` without ``--cfg`` (its official weights are fetched automatically)."""

COCO_NAMES = SHIPPED_DIR / "coco.names"
"""The 80 COCO class names, used for 80-class models without a ``.names`` file of their own."""


def shipped_cfgs() -> list[str]:
    """Names of the shipped cfgs (file stems), sorted."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.cfg"))


def resolve_cfg(cfg: str | os.PathLike) -> Path:
    """A cfg path or a shipped cfg's name -> the file.

    Raises:
        FileNotFoundError: neither a file nor a shipped name; the message lists the shipped names.
    """
    path = Path(cfg)
    if path.is_file():
        return path
    name = path.name if path.suffix == ".cfg" else f"{path.name}.cfg"
    if path.parent == Path(".") and (SHIPPED_DIR / name).is_file():
        return SHIPPED_DIR / name
    raise FileNotFoundError(f"{cfg}: no such cfg file, and not a shipped cfg name (shipped: "
                            f"{', '.join(shipped_cfgs())})")
