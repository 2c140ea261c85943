"""What this CPU offers yolodet's own C kernels: its feature flags, and the loader of the AVX2 extensions
(``yolodet._int8_avx2``: the int8 fast mode's kernels; ``yolodet._fp32_avx2``: the fp32 Winograd transforms)."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType

__all__ = ["avx2_extension", "cpu_flags"]


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags in /proc/cpuinfo (``avx2``, ``avx512_vnni`` ...); empty where it cannot be
    read (then no kernel that needs one is chosen)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
                          []))


@functools.lru_cache(maxsize=None)
def avx2_extension(name: str) -> ModuleType | None:
    """The extension ``yolodet.<name>`` (built for AVX2 + FMA), or None where it was not built (it is optional) or
    this CPU lacks AVX2 or FMA."""
    if not {"avx2", "fma"} <= cpu_flags():
        return None
    try:
        return importlib.import_module(f"yolodet.{name}")
    except ImportError:
        return None
