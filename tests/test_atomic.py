"""yolodet.atomic and checkpoint saving on a real full (and a read-only) filesystem: a clear OutputError naming the
path, nothing left behind, an existing file untouched.

The filesystems are small tmpfs mounts (``mount -t tmpfs -o size=256k``), which needs root or CAP_SYS_ADMIN; the
tests skip cleanly where mounting is not permitted. Nothing is mocked: the errors come from the kernel.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES
from yolodet.atomic import OutputError, atomic_write_bytes, atomic_writer
from yolodet.errors import YolodetError
from yolodet.modeling.checkpoint import atomic_save, save_checkpoint
from yolodet.modeling.model import Darknet


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 256 KiB tmpfs (empty)."""
    where = tmp_path / "small"
    _mount_tmpfs(where, "size=256k")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False, timeout=30)


def _fill(folder: Path) -> None:
    """Write ``folder/filler`` until the filesystem is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.fixture
def full_fs(small_fs: Path):
    """The 256 KiB tmpfs with one file ``existing.bin`` and a filler that takes the rest of the space."""
    (small_fs / "existing.bin").write_bytes(b"old contents")
    _fill(small_fs)
    return small_fs


def _leftovers(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {"filler", "existing.bin"}


def test_a_full_disk_is_an_output_error_and_leaves_nothing(full_fs: Path) -> None:
    target = full_fs / "out" / "result.json"
    full_fs.joinpath("out").mkdir()
    with pytest.raises(OutputError) as info:
        atomic_write_bytes(target, b"x" * 100_000)
    err = info.value
    assert isinstance(err, YolodetError) and isinstance(err, OSError)
    assert err.errno == errno.ENOSPC and err.filename == str(target)
    assert str(err) == f"cannot write {target}: No space left on device; nothing was written"
    assert not list((full_fs / "out").iterdir())  # no partial file, no temp file
    with pytest.raises(OutputError, match="existing.bin: No space left on device"):  # replace an existing file
        atomic_write_bytes(full_fs / "existing.bin", b"new contents" * 100_000)
    assert (full_fs / "existing.bin").read_bytes() == b"old contents"
    assert _leftovers(full_fs) == {"out"}


def test_a_checkpoint_on_a_disk_that_fills_up_midway(small_fs: Path) -> None:
    """torch's zip writer reports a failed write as ``RuntimeError: [enforce fail at inline_container.cc] ...
    unexpected pos``; atomic_save reports the OSError behind it."""
    atomic_save({"x": torch.arange(4.0)}, small_fs / "small.pt")  # fits
    with pytest.raises(OutputError, match=r"big\.pt: No space left on device; nothing was written"):
        atomic_save({"x": torch.zeros(200_000)}, small_fs / "big.pt")  # 800 KB: fails after a few writes
    assert sorted(p.name for p in small_fs.iterdir()) == ["small.pt"]
    assert torch.equal(torch.load(small_fs / "small.pt", weights_only=True)["x"], torch.arange(4.0))
    model = Darknet.from_cfg(FIXTURES / "tiny.cfg")
    _fill(small_fs)
    with pytest.raises(OutputError, match="last.pt: No space left on device"):
        save_checkpoint(model, small_fs / "last.pt")
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler", "small.pt"]


def test_a_read_only_filesystem(tmp_path: Path) -> None:
    where = tmp_path / "ro"
    _mount_tmpfs(where, "size=64k,ro")
    try:
        with pytest.raises(OutputError, match="x.txt: Read-only file system; nothing was written") as info:
            atomic_write_bytes(where / "x.txt", b"data")
        assert info.value.errno == errno.EROFS
    finally:
        subprocess.run(["umount", str(where)], check=False, timeout=30)


def test_a_parent_that_is_a_file_or_a_target_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("I am a file")
    with pytest.raises(OutputError, match="is not a folder; nothing was written"):
        atomic_write_bytes(tmp_path / "file" / "out.json", b"{}")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match="folder: Is a directory"):
        atomic_write_bytes(tmp_path / "folder", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_other_errors_in_the_body_pass_through_and_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with atomic_writer(tmp_path / "a.bin") as f:
            f.write(b"half")
            raise KeyError("a bug, not an output problem")
    assert not list(tmp_path.iterdir())
    atomic_write_bytes(tmp_path / "a.bin", b"whole")
    assert (tmp_path / "a.bin").read_bytes() == b"whole" and oct((tmp_path / "a.bin").stat().st_mode)[-3:] == "644"
    assert os.listdir(tmp_path) == ["a.bin"]
