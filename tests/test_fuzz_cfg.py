"""Fuzzing cfgs: mutated real cfgs (tests/fixtures and ../shared's Darknet cfgs) through ``Darknet.from_cfg`` and
``build_for_info`` (what ``info`` runs). Only :class:`CfgError` (a YolodetError) may escape, both must agree, and a
cfg that builds must also run: its forward pass (on the ``meta`` device: shapes only, instant even for yolov4)
produces exactly the output shapes the build promised, layer by layer. See tests/fuzzing.py for the profiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import FIXTURES, REFERENCE_CFGS
from fuzzing import fuzz_settings
from yolodet.cfg import CfgError
from yolodet.errors import YolodetError
from yolodet.modeling.blocks.conv import MAX_WEIGHTS
from yolodet.modeling.info import build_for_info, layer_table, total_flops
from yolodet.modeling.model import MAX_OUTPUT_ELEMENTS, Darknet
from yolodet.modeling.registry import BLOCKS

OWN = {p.name: p.read_text() for p in sorted(FIXTURES.glob("*.cfg"))}
SHARED = {p.name: p.read_text() for p in REFERENCE_CFGS}

VALUES = ["0", "-1", "1", "2", "3", "5", "13", "32", "64", "1000", "65536", "1000000000", "-1000000000", "2147483647",
          "2147483648", "99999999999999999999", "1e9", "1e-9", "1e400", "nan", "inf", "-inf", "", " ", "abc", "0x10",
          "3.7", "-0", "1,2", "-1,-1,-1,-1", "-1,0", "0,1,2,3,4,5,6,7,8", "linear", "leaky", "none"]
KEYS = sorted({key for name in BLOCKS.names() for key in BLOCKS.get(name).keys} | {"width", "height", "channels"})
SECTIONS = BLOCKS.names() + ["net", "not_a_layer", "conv", "max", "local"]
_KEY_LINE = re.compile(r"^\s*[A-Za-z_]\w*\s*=")

values = st.one_of(st.integers(-3, 40).map(str), st.sampled_from(VALUES), st.integers(-5, 5000).map(str),
                   st.integers(-2**40, 2**40).map(str), st.floats().map(repr), st.text(max_size=6))
"""Mostly numbers Darknet cfgs hold (small ints first: they build more often, so the forward runs), then the
ones that broke things before, then anything."""


def _section_at(lines: list[str], i: int) -> str | None:
    for line in reversed(lines[:i]):
        if line.strip().startswith("[") and line.strip().endswith("]"):
            return line.strip()[1:-1].strip()
    return None


@st.composite
def mutated_cfg(draw, texts: dict[str, str]) -> tuple[str, str]:
    """(name, text): a cfg of ``texts`` with 1-3 edits: a value replaced (most often), a line deleted or
    duplicated, a section type changed, a known key inserted, the text truncated or junk inserted."""
    name = draw(st.sampled_from(sorted(texts)))
    lines = texts[name].splitlines()
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):  # mostly one edit: a later error hides nothing
        kind = draw(st.sampled_from(["value"] * 6 + ["key"] * 2 + ["delete", "duplicate", "section", "truncate",
                                                                 "junk"]))
        keyed = [i for i, line in enumerate(lines) if _KEY_LINE.match(line)]
        if kind == "value" and keyed:
            i = draw(st.sampled_from(keyed))
            lines[i] = f"{lines[i].split('=', 1)[0].strip()}={draw(values)}"
        elif kind in ("delete", "duplicate") and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i:i + 1] = [] if kind == "delete" else [lines[i], lines[i]]
        elif kind == "section":
            headers = [i for i, line in enumerate(lines) if line.strip().startswith("[")]
            if headers:
                lines[draw(st.sampled_from(headers))] = f"[{draw(st.sampled_from(SECTIONS))}]"
        elif kind == "key":  # mostly a key this section knows (it passes validation and reaches the builder)
            i = draw(st.integers(0, len(lines)))
            section = _section_at(lines, i)
            known = sorted(BLOCKS.get(section).keys) if section in BLOCKS else []
            key = draw(st.sampled_from(known) if known and draw(st.integers(0, 3)) else st.sampled_from(KEYS))
            lines.insert(i, f"{key}={draw(values)}")
        elif kind == "truncate":
            text = "\n".join(lines)
            lines = text[:draw(st.integers(0, len(text)))].splitlines()
        elif kind == "junk":
            lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=20)))
    return name, "\n".join(lines) + "\n"


NUMBERS = st.one_of(st.integers(-2, 16), st.sampled_from([0, 1, 2, 3, 13, 32, 33, 64, 65, 100, 1000, 65536]),
                    st.sampled_from([10**6, 10**9, 2**31, 2**63, 10**20]), st.integers(-2**64, 2**64)).map(str) | \
    st.sampled_from(["0.5", "1e9", "nan", "-inf"])
"""What a builder gets for one key: small numbers (they build, so the forward runs) and huge ones (size limits)."""


@st.composite
def edited_layer(draw, texts: dict[str, str]) -> tuple[str, str]:
    """(name, text): one layer of a cfg of ``texts`` with one of *its own* keys set to a number of
    :data:`NUMBERS` (the key's other lines removed): every builder's arithmetic, past key validation."""
    name = draw(st.sampled_from(sorted(texts)))
    lines = texts[name].splitlines()
    headers = {i: line.strip()[1:-1].strip() for i, line in enumerate(lines) if line.strip().startswith("[")}
    kind = draw(st.sampled_from(sorted({t for t in headers.values() if t in BLOCKS})))  # rare types get a share
    start = draw(st.sampled_from([i for i, t in headers.items() if t == kind]))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("[")), len(lines))
    keys = sorted(BLOCKS.get(lines[start].strip()[1:-1].strip()).keys)
    if not keys:
        return name, texts[name]
    key = draw(st.sampled_from(keys))
    body = [line for line in lines[start + 1:end] if line.split("=", 1)[0].strip() != key]
    return name, "\n".join(lines[:start + 1] + [f"{key}={draw(NUMBERS)}"] + body + lines[end:]) + "\n"


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation creates (meta tensors: shapes only)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _runs_as_built(model: Darknet) -> None:
    """Forward a [1, C, H, W] ``meta`` input through ``model`` (built on ``meta``) layer by layer: every output shape is the ``out_shape`` the build promised, and
    no tensor made on the way (padding, concatenations ...) is far past the build-time limit."""
    net = model.net
    x = torch.empty(1, net.channels, net.height, net.width, device="meta")
    saved: list[torch.Tensor] = []
    model.eval()  # BN statistics are a training matter (a batch of 1 at 1 x 1 is fine at inference)
    with torch.no_grad(), _LargestTensor() as sizes:
        for i, layer in enumerate(model.layers):
            x = layer(x, [saved[s] for s in layer.sources])
            assert tuple(x.shape[1:]) == tuple(layer.out_shape), f"layer {i}: {tuple(x.shape)} vs {layer.out_shape}"
            saved.append(x)
    assert sizes.largest <= 2 * MAX_OUTPUT_ELEMENTS, f"a forward tensor of {sizes.largest} elements"


def _check(tmp: Path, name: str, text: str, *, run_on_cpu: bool) -> None:
    path = tmp / name
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    outcomes = []
    for k, build in enumerate((lambda: Darknet.from_cfg(path) if run_on_cpu else _on_meta(path),
                               lambda: build_for_info(path))):
        try:
            model = build()
        except YolodetError as exc:
            assert isinstance(exc, CfgError), repr(exc)  # a cfg can only be a bad cfg
            outcomes.append(str(exc))
        else:
            outcomes.append(None)
            rows = layer_table(model)
            # What the build-time limits promise: no layer costs more than the largest weights times the largest
            # output (a 1e9 maxpool window cost 1e22 and hung detect)
            assert max(r.flops for r in rows) <= 2 * MAX_WEIGHTS * MAX_OUTPUT_ELEMENTS, "a layer past the limits"
            if k == 1 or not run_on_cpu:  # on meta: shapes only, however large
                _runs_as_built(model)
            elif total_flops(rows) < 2e8:  # real arithmetic where it is cheap
                with torch.no_grad():
                    model.eval()(torch.rand(1, model.net.channels, model.net.height, model.net.width))
    assert outcomes[0] == outcomes[1], "Darknet.from_cfg and build_for_info disagree"


def _on_meta(path: Path) -> Darknet:
    with torch.device("meta"):
        return Darknet.from_cfg(path)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_cfg")


@fuzz_settings(60)
@given(case=mutated_cfg(OWN))
def test_mutated_fixture_cfgs_build_and_run_or_raise_cfgerror(tmp: Path, case: tuple[str, str]) -> None:
    _check(tmp, *case, run_on_cpu=True)


@pytest.mark.skipif(not SHARED, reason="../shared/data/darknet-cfg is absent")
@fuzz_settings(60)
@given(case=mutated_cfg(SHARED))
def test_mutated_darknet_cfgs_build_and_run_or_raise_cfgerror(tmp: Path, case: tuple[str, str]) -> None:
    _check(tmp, *case, run_on_cpu=False)


@fuzz_settings(150)
@given(case=edited_layer(OWN))
def test_any_number_in_any_layer_key_builds_and_runs_or_raises_cfgerror(tmp: Path, case: tuple[str, str]) -> None:
    _check(tmp, *case, run_on_cpu=True)
