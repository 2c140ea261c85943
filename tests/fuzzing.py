"""Shared pieces of the fuzzing suite (``tests/test_fuzz_*.py``): example counts per profile and byte mutations.

Profiles, chosen by the ``HYPOTHESIS_PROFILE`` environment variable:

* ``default`` (CI, every ``pytest`` run): a fixed number of examples per test, derandomized (the same examples
  every run, so CI never turns red on a draw it did not make before); the whole suite runs in about a minute.
* ``slow``: ten times the examples, freshly random each run (new inputs are found there, then pinned as tests):
  ``HYPOTHESIS_PROFILE=slow python -m pytest tests/test_fuzz_*.py``.

The property of every fuzz test: the library raises only :class:`yolodet.errors.YolodetError` subclasses on bad
input; any other exception type escaping fails the test (and is a bug to fix in the library).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
if PROFILE not in ("default", "slow"):
    raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: known profiles are default and slow")


def fuzz_settings(examples: int) -> settings:
    """``examples`` in the default profile (derandomized), ten times as many, random, in the slow one."""
    slow = PROFILE == "slow"
    return settings(max_examples=examples * 10 if slow else examples, derandomize=not slow, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck), print_blob=True)


@st.composite
def mutated_bytes(draw, data: bytes, *, header: int = 64) -> bytes:
    """``data`` with 1-4 random edits: flipped/overwritten bytes (often in the first ``header`` bytes, where
    formats keep their sizes), a truncation, an insertion or a deletion of a run, junk appended."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "flip", "overwrite", "truncate", "insert", "delete", "append"]))
        if not out:
            out += draw(st.binary(min_size=1, max_size=16))
            continue
        near = draw(st.booleans())
        pos = draw(st.integers(0, min(header, len(out)) - 1 if near else len(out) - 1))
        if kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            run = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                        b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f"]) | st.binary(min_size=1,
                                                                                             max_size=8))
            out[pos:pos + len(run)] = run
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 64))]
        else:
            out += draw(st.binary(min_size=1, max_size=64))
    return bytes(out)
