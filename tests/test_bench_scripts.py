"""bench/: the hand-run benchmark scripts import and explain themselves (``--help``), so a refactor of the library
cannot silently break them. Their numbers are not tested (they live in the README)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = sorted((ROOT / "bench").glob("[!_]*.py"))  # _name.py: helpers the scripts import


def test_scripts_found() -> None:
    assert {p.name for p in SCRIPTS} >= {"bench_infer.py", "eval_speed.py", "precision_accuracy.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script) -> None:
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and len(out.stdout) > 200
