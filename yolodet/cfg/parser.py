"""Darknet ``.cfg`` text -> list of :class:`CfgBlock` (no torch here).

Grammar (Darknet's ``read_cfg``): ``[section]`` headers, then ``key=value`` lines. ``#`` and ``;`` start
comments; whitespace anywhere is insignificant (``layers = -1, 61``). Section aliases are resolved here
(``[conv]`` -> ``convolutional`` ...), so the rest of the code sees one name per layer type.

Every error is a :class:`CfgError` naming ``file:line``, the section and the key, so a user can jump straight to
the offending line.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from yolodet.errors import YolodetError

log = logging.getLogger(__name__)

SECTION_ALIASES: Mapping[str, str] = {
    "conv": "convolutional",
    "max": "maxpool",
    "avg": "avgpool",
    "network": "net",
    "conn": "connected",
    "soft": "softmax",
    "silence": "empty",
    "local_avg": "local_avgpool",
    "lrn": "normalization",
}


class CfgError(YolodetError, ValueError):
    """A cfg problem, located as ``file:line: [section] key: message``."""

    def __init__(self, message: str, *, path: str = "<cfg>", line: int | None = None,
                 section: str | None = None, key: str | None = None) -> None:
        self.path, self.line, self.section, self.key = path, line, section, key
        where = f"{path}:{line}" if line is not None else path
        what = "".join([f" [{section}]" if section else "", f" {key}" if key else ""])
        super().__init__(f"{where}:{what}: {message}" if what else f"{where}: {message}")


@dataclass(frozen=True)
class CfgBlock:
    """One ``[section]`` of a cfg.

    Attributes:
        type: canonical section name (aliases resolved), e.g. ``"convolutional"``.
        options: raw ``key -> value`` strings, whitespace removed.
        path: the file the block came from (for messages).
        line: 1-based line of the ``[section]`` header.
        key_lines: 1-based line of each key.
        index: Darknet layer index (sections after ``[net]`` count from 0; ``[net]`` itself is -1).
    """

    type: str
    options: Mapping[str, str]
    path: str = "<cfg>"
    line: int = 0
    key_lines: Mapping[str, int] = field(default_factory=dict)
    index: int = -1

    # -- errors ---------------------------------------------------------------------------------------------
    def error(self, message: str, key: str | None = None) -> CfgError:
        """A :class:`CfgError` located at ``key``'s line (or the header line)."""
        line = self.key_lines.get(key, self.line) if key else self.line
        section = f"{self.type}" + (f" #{self.index}" if self.index >= 0 else "")
        return CfgError(message, path=self.path, line=line, section=section, key=key)

    # -- typed access ---------------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.options

    def get_str(self, key: str, default: str | None = None) -> str:
        if key in self.options:
            return self.options[key]
        if default is None:
            raise self.error("required key is missing", key)
        return default

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise self.error("required key is missing", key)
            return default
        return self._number(key, self.options[key], int)

    def get_float(self, key: str, default: float | None = None) -> float:
        if key not in self.options:
            if default is None:
                raise self.error("required key is missing", key)
            return default
        return self._number(key, self.options[key], float)

    def get_ints(self, key: str, default: list[int] | None = None) -> list[int]:
        if key not in self.options:
            if default is None:
                raise self.error("required key is missing", key)
            return list(default)
        return [self._number(key, v, int) for v in self._items(key)]

    def get_floats(self, key: str, default: list[float] | None = None) -> list[float]:
        if key not in self.options:
            if default is None:
                raise self.error("required key is missing", key)
            return list(default)
        return [self._number(key, v, float) for v in self._items(key)]

    def _items(self, key: str) -> list[str]:
        items = self.options[key].split(",")
        if items and items[-1] == "":  # Darknet tolerates a trailing comma
            items = items[:-1]
        if not items or any(v == "" for v in items):
            raise self.error(f"expected a comma-separated list, got {self.options[key]!r}", key)
        return items

    def _number(self, key: str, text: str, kind: type) -> int | float:
        """``text`` read as Darknet's ``atoi``/``atof`` read it (see :func:`darknet_number`)."""
        try:
            value, exact = darknet_number(text, kind)
        except ValueError as exc:
            raise self.error(str(exc), key) from None
        if not exact:
            log.warning("%s:%d: [%s] %s: %r is read as %s, as Darknet's %s does", self.path,
                        self.key_lines.get(key, self.line), self.type, key, text, value,
                        "atoi" if kind is int else "atof")
        return value


_INT_PREFIX = re.compile(r"[+-]?\d+")
_FLOAT_PREFIX = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE)


def darknet_number(text: str, kind: type = int) -> tuple[int | float, bool]:
    """Read ``text`` as Darknet's ``atoi`` (``kind=int``) or ``atof`` (``kind=float``) does: the longest numeric
    prefix, so ``40#32`` is 40 and ``0.0`` is 0 for an integer key.

    Returns:
        (value, exact): ``exact`` is False when Darknet's reading differs from the text as written (a suffix was
        ignored, or a fraction dropped), so the caller can warn.

    Raises:
        ValueError: no numeric prefix at all (Darknet would silently read 0), or a non-finite float.

    Warning:
        Darknet reads ``abc`` as 0 without a word; yolodet refuses it, since a cfg that means 0 says 0.
    """
    what = "an integer" if kind is int else "a number"
    if kind is int:
        match = _INT_PREFIX.match(text)
        if match is None:
            raise ValueError(f"expected {what}, got {text!r} (Darknet's atoi would silently read 0)")
        value = int(match.group())
        exact = match.end() == len(text)
        if not exact:
            try:
                exact = float(text) == value  # "2.0", "1e1" ... mean what atoi reads: nothing to warn about
            except ValueError:
                pass
        return value, exact
    match = _FLOAT_PREFIX.match(text)
    if match is None:
        raise ValueError(f"expected {what}, got {text!r} (Darknet's atof would silently read 0)")
    fvalue = float(match.group())
    if fvalue != fvalue or fvalue in (float("inf"), float("-inf")):
        raise ValueError(f"expected {what}, got {text!r} (not finite)")
    return fvalue, match.end() == len(text)


def parse_cfg_text(text: str, path: str = "<cfg>") -> list[CfgBlock]:
    """Parse cfg text into blocks; the first block is ``[net]``.

    Raises:
        CfgError: malformed lines, keys outside a section, a missing or misplaced ``[net]``.
    """
    raw: list[tuple[str, int, dict[str, str], dict[str, int]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = "".join(line.split())  # whitespace is insignificant anywhere
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"malformed section header {line!r}", path=path, line=lineno)
            name = line[1:-1].lower()
            raw.append((SECTION_ALIASES.get(name, name), lineno, {}, {}))
            continue
        if "=" not in line:
            raise CfgError(f"expected 'key=value', got {line!r}", path=path, line=lineno,
                           section=raw[-1][0] if raw else None)
        if not raw:
            raise CfgError("option before the first [section]", path=path, line=lineno)
        key, value = line.split("=", 1)
        section, _, options, key_lines = raw[-1]
        if not key:
            raise CfgError(f"empty key in {line!r}", path=path, line=lineno, section=section)
        if value == "":
            raise CfgError("empty value", path=path, line=lineno, section=section, key=key)
        if key in options:  # Darknet's option_find returns the first occurrence
            log.warning("%s:%d: [%s] %s: duplicate key ignored; the value from line %d is used", path, lineno,
                        section, key, key_lines[key])
            continue
        options[key] = value
        key_lines[key] = lineno
    if not raw:
        raise CfgError("no sections found", path=path)
    if raw[0][0] != "net":
        raise CfgError(f"the first section must be [net], got [{raw[0][0]}]", path=path, line=raw[0][1])
    blocks = []
    for i, (kind, lineno, options, key_lines) in enumerate(raw):
        if i > 0 and kind == "net":
            raise CfgError("[net] may only appear once, as the first section", path=path, line=lineno)
        blocks.append(CfgBlock(kind, options, path, lineno, key_lines, i - 1))
    return blocks


def parse_cfg(path: str | os.PathLike) -> list[CfgBlock]:
    """Read and parse a cfg file (see :func:`parse_cfg_text`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CfgError(f"cannot read cfg: {exc.strerror or exc}", path=str(p)) from None
    return parse_cfg_text(text, str(p))
