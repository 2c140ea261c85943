"""yolodet.openmp: the tools' OpenMP defaults are set before torch loads, never override the user's, and are
refused (with nothing changed) once torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

from yolodet.cli.openmp import OPENMP_DEFAULTS, set_openmp_defaults

PROBE = ("import os; from yolodet.cli.openmp import set_openmp_defaults; ok = set_openmp_defaults(); "
         "print(ok, os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])")


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_DEFAULTS}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_defaults_set_before_torch() -> None:
    assert _probe() == "True PASSIVE 10000"


def test_user_settings_win() -> None:
    assert _probe(OMP_WAIT_POLICY="ACTIVE", GOMP_SPINCOUNT="5") == "True ACTIVE 5"


def test_refused_after_torch(monkeypatch) -> None:
    import torch  # the settings would come too late now

    assert torch.__name__ in sys.modules
    for key in OPENMP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    assert set_openmp_defaults() is False
    assert not any(key in os.environ for key in OPENMP_DEFAULTS)
