"""OpenMP wait-policy defaults for the command-line tools (call before ``import torch``).

PyTorch's CPU kernels run on libgomp threads. What those threads do between two kernels matters:

- spinning forever (``OMP_WAIT_POLICY=ACTIVE``) steals the cores from everything else -- DataLoader workers,
  another process -- and made the forward pass up to 5x slower on a loaded 2-core machine;
- sleeping at once (``PASSIVE``) pays a wake-up on every one of a network's ~25-100 back-to-back kernels:
  yolo-v3-tiny at 416 took 29.6 ms instead of 27.4 ms on an idle 2-core AVX-512 EPYC;
- spinning briefly and then sleeping (``PASSIVE`` with ``GOMP_SPINCOUNT=10000``, tens of microseconds) keeps the
  speed of the second (27.3 ms) and the manners of the first: idle threads are asleep well before the next image.

Explicit settings in the environment win. Without effect once libgomp is loaded (it reads them at load time).
"""

from __future__ import annotations

import os
import sys

__all__ = ["OPENMP_DEFAULTS", "set_openmp_defaults"]

OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


def set_openmp_defaults() -> bool:
    """Put :data:`OPENMP_DEFAULTS` into ``os.environ`` where unset; False (and nothing changed) when torch was
    already imported, as the settings would then come too late."""
    if "torch" in sys.modules:
        return False
    for key, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return True
