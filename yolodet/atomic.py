"""Writing files so that an interruption never leaves a half-written one: a temp file beside the target, then
``os.replace`` (atomic on POSIX and Windows within one filesystem).

A write that fails (a full disk, a quota, a read-only filesystem, a folder that is a file ...) raises
:class:`OutputError` naming the path and the reason; the temp file is removed, so nothing is left behind and an
existing file at the path is untouched.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from yolodet.errors import YolodetError

__all__ = ["OutputError", "atomic_write_bytes", "atomic_writer", "output_error"]


class OutputError(YolodetError, OSError):
    """An output file could not be written (message: the path, the reason, and that nothing was written).

    Attributes:
        errno: the ``errno`` of the failed call (``errno.ENOSPC`` for a full disk), or None.
        filename: the path that was being written.
    """

    def __str__(self) -> str:  # OSError's own would print "[Errno 28] None: 'path'" once errno is set
        return str(self.args[0]) if self.args else ""


def output_error(path: str | os.PathLike, reason: str, code: int | None = None) -> OutputError:
    """The :class:`OutputError` for ``path`` (``reason``: e.g. ``os.strerror(errno.ENOSPC)``)."""
    err = OutputError(f"cannot write {os.fspath(path)}: {reason}; nothing was written")
    err.errno, err.filename = code, os.fspath(path)
    return err


def _reason(exc: OSError) -> str:
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_writer(p) as f: f.write(...)``: ``p`` appears complete or not at all; on an exception the
    temp file is removed and an existing ``p`` is left untouched.

    Raises:
        OutputError: an ``OSError`` while creating the folder or the temp file, writing, flushing or renaming
            (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``, ``ENOTDIR`` ...).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno_codes.EISDIR, os.strerror(errno_codes.EISDIR))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if isinstance(exc, FileExistsError):  # mkdir: a parent folder is a file
            raise output_error(path, f"{exc.filename or path.parent} is not a folder", errno_codes.ENOTDIR) from exc
        raise output_error(path, _reason(exc), exc.errno) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary user files
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OutputError):
            raise
        raise output_error(path, _reason(exc), exc.errno) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:class:`OutputError` when it cannot be written)."""
    with atomic_writer(path) as f:
        f.write(data)
