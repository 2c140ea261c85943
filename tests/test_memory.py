"""yolodet.inference.memory: after keep_freed_memory a 20 MB block comes from the heap instead of a fresh mmap
(glibc's own accounting, mallinfo2's ``hblkhd``, says which), and YOLODET_MALLOC=default leaves malloc alone. Each
case runs in a fresh process: the settings are per process and glibc's thresholds move with every free."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc only")

_PROBE = """
import ctypes
from yolodet.inference.memory import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
print(keep_freed_memory())
before = libc.mallinfo2().hblkhd
block = libc.malloc(20 << 20)
print(libc.mallinfo2().hblkhd - before >= 20 << 20)  # served by mmap
libc.free(block)
"""


def _probe(**env: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_large_blocks_come_from_the_heap() -> None:
    assert _probe() == ["True", "False"]


def test_opt_out_leaves_glibc_defaults() -> None:
    assert _probe(YOLODET_MALLOC="default") == ["False", "True"]
