"""cfg grammar and cfg errors: every problem is a ``CfgError`` located at ``file:line`` with section and key.

The fuzz test mutates real cfgs (``tests/fixtures/tiny.cfg`` always, yolov3-tiny and yolov4-tiny from ``../shared``
when it is there: the reference cfgs cheap enough to build ~150 times) the way people break them by hand, and checks
that building either works or fails with a ``CfgError`` located at a line; an exhaustive sweep does the same for
every single mistake in tiny.cfg.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, REFERENCE_CFGS
from yolodet.modeling.blocks.structural import Route, Shortcut
from yolodet.cfg import CfgError, parse_cfg, parse_cfg_text
from yolodet.modeling.model import Darknet
from yolodet.modeling.registry import BLOCKS

# A small valid cfg whose line numbers the targeted tests below rely on (1-based, shown on the right).
BASE = """\
[net]
width=32
height=32
channels=3
[convolutional]
filters=16
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[route]
layers=-1
[shortcut]
from=-2
[convolutional]
filters=21
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""
#  1 [net]            6 filters=16     11 [maxpool] #1   16 [shortcut] #3   22 [yolo] #5
#  2 width            7 size=3         12 size=2          17 from=-2         23 mask
#  3 height           8 stride=1       13 stride=2        18 [conv] #4       24 anchors
#  4 channels         9 pad=1          14 [route] #2      19 filters=21      25 classes
#  5 [conv] #0       10 activation     15 layers=-1       20 size=1          26 num


def _line(text: str, prefix: str, nth: int = 0) -> int:
    """1-based number of the ``nth`` line that starts with ``prefix`` (after stripping)."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(prefix)]
    return hits[nth]


def _set_line(text: str, lineno: int, new: str | None) -> str:
    """``text`` with line ``lineno`` replaced by ``new`` (``None`` deletes it)."""
    lines = text.splitlines()
    lines[lineno - 1:lineno] = [] if new is None else [new]
    return "\n".join(lines) + "\n"


def _insert_line(text: str, before: int, new: str) -> str:
    lines = text.splitlines()
    lines.insert(before - 1, new)
    return "\n".join(lines) + "\n"


def _build_error(text: str, path: str = "t.cfg") -> CfgError:
    with pytest.raises(CfgError) as info:
        Darknet.from_cfg_text(text, path)
    return info.value


def _assert_at(err: CfgError, line: int, section: str | None = None, key: str | None = None,
               path: str = "t.cfg") -> None:
    """The error is located at ``path:line`` and its message says so, with section and key."""
    msg = str(err)
    assert err.line == line, msg
    assert msg.startswith(f"{path}:{line}:"), msg
    if section is not None:
        assert err.section == section, msg
        assert f"[{section}]" in msg, msg
    if key is not None:
        assert err.key == key, msg
        assert f"] {key}:" in msg, msg


def test_base_fixture_builds() -> None:
    model = Darknet.from_cfg_text(BASE, "t.cfg")
    assert [type(m).__name__ for m in model.layers] == ["ConvBlock", "MaxPool", "Route", "Shortcut", "ConvBlock",
                                                        "YoloHead"]
    assert [b.line for b in parse_cfg_text(BASE)] == [1, 5, 11, 14, 16, 18, 22]


# -- grammar ----------------------------------------------------------------------------------------------------
def test_aliases_resolve_to_canonical_names() -> None:
    text = """[network]
width=4
height=4
channels=2
[conv]
filters=4
size=1
[max]
size=2
stride=2
[avg]
[conn]
output=3
[soft]
"""
    blocks = parse_cfg_text(text)
    assert [b.type for b in blocks] == ["net", "convolutional", "maxpool", "avgpool", "connected", "softmax"]
    model = Darknet.from_cfg_text(text)
    assert [m.out_shape for m in model.layers] == [(4, 4, 4), (4, 2, 2), (4, 1, 1), (3, 1, 1), (3, 1, 1)]


def test_comments_and_whitespace_are_insignificant() -> None:
    text = """# leading comment
; another one
[net]
  width = 32   
\theight\t=\t32
channels=3
   # indented comment
[ convolutional ]
filters = 8
size=3
pad = 1
; comment inside a section
activation = leaky

[convolutional]
filters=8
size=1
[route]
layers = -1, 0
"""
    blocks = parse_cfg_text(text)
    assert blocks[0].options == {"width": "32", "height": "32", "channels": "3"}
    assert blocks[1].options == {"filters": "8", "size": "3", "pad": "1", "activation": "leaky"}
    assert blocks[1].line == 8 and blocks[1].key_lines["activation"] == 13
    assert blocks[3].options["layers"] == "-1,0"
    model = Darknet.from_cfg_text(text)
    assert model.layers[2].sources == (1, 0)
    assert model.layers[2].out_shape == (16, 32, 32)


def test_relative_and_absolute_indices_agree() -> None:
    rel = Darknet.from_cfg_text(BASE.replace("layers=-1", "layers=-2").replace("from=-2", "from=-3"))
    ab = Darknet.from_cfg_text(BASE.replace("layers=-1", "layers=0").replace("from=-2", "from=0"))
    for model in (rel, ab):
        assert isinstance(model.layers[2], Route) and model.layers[2].sources == (0,)
        assert isinstance(model.layers[3], Shortcut) and model.layers[3].sources == (0,)
    assert Darknet.from_cfg_text(BASE).layers[3].sources == (1,)  # from=-2 at layer 3


def test_duplicate_key_first_wins(caplog: pytest.LogCaptureFixture) -> None:
    text = _insert_line(BASE, 7, "filters=8")  # second filters= inside layer 0, at line 7
    with caplog.at_level(logging.WARNING, logger="yolodet.cfg"):
        blocks = parse_cfg_text(text, "t.cfg")
    assert blocks[1].options["filters"] == "16" and blocks[1].key_lines["filters"] == 6
    assert "t.cfg:7:" in caplog.text and "line 6" in caplog.text
    assert Darknet.from_cfg_text(text).layers[0].out_shape[0] == 16


def test_net_training_keys_are_tolerated() -> None:
    text = _insert_line(BASE, 2, "some_future_training_key=whatever")
    text = _insert_line(text, 2, "steps=400000,450000")
    model = Darknet.from_cfg_text(text)
    assert model.net.options["some_future_training_key"] == "whatever"
    assert (model.net.width, model.net.height, model.net.channels) == (32, 32, 3)
    assert model.net.steps == (400000, 450000) and model.net.scales == (1.0, 1.0)


def test_net_is_parsed_once_with_darknet_numbers(caplog) -> None:
    """``letter_box=0.0`` is off (atoi reads 0) for every consumer; a typed value that is not a number is an
    error at its line, even for a training key."""
    model = Darknet.from_cfg_text(_insert_line(BASE, 2, "letter_box=0.0"))
    assert model.net.letter_box is False
    with caplog.at_level(logging.WARNING):
        model = Darknet.from_cfg_text(_insert_line(BASE, 2, "letter_box=1#on"))
    assert model.net.letter_box is True and "'1#on' is read as 1" in caplog.text
    err = _build_error(_insert_line(BASE, 2, "momentum=not-a-number"))
    _assert_at(err, 2, "net", "momentum")


def test_net_defaults_and_sizes() -> None:
    model = Darknet.from_cfg_text("[net]\n[convolutional]\nfilters=2\nsize=1\n")
    assert (model.net.width, model.net.height, model.net.channels) == (416, 416, 3)
    _assert_at(_build_error(_set_line(BASE, 2, "width=0")), 2, "net", "width")


def test_parse_cfg_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "a.cfg"
    path.write_text(BASE)
    assert [b.path for b in parse_cfg(path)] == [str(path)] * 7
    missing = tmp_path / "missing.cfg"
    with pytest.raises(CfgError, match=re.escape(str(missing))):
        parse_cfg(missing)
    with pytest.raises(CfgError, match=re.escape(str(missing))):
        Darknet.from_cfg(missing)
    path.write_text(BASE.replace("filters=16", "filters=abc"))
    with pytest.raises(CfgError, match=re.escape(f"{path}:6: [convolutional #0] filters:")):
        Darknet.from_cfg(path)


# -- every error names file:line, section and key --------------------------------------------------------------
def test_error_message_format() -> None:
    err = _build_error(_set_line(BASE, 6, "filters=abc"))
    assert str(err) == ("t.cfg:6: [convolutional #0] filters: expected an integer, got 'abc' (Darknet's atoi "
                        "would silently read 0)")
    _assert_at(err, 6, "convolutional #0", "filters")


@pytest.mark.parametrize("value, message", [
    ("abc", "expected an integer, got 'abc'"),
    ("-3", "must be >= 1, got -3"),
    ("0", "must be >= 1, got 0"),
    ("1000000000", "more than the limit"),
    ("nan", "expected an integer"),
    ("#16", "expected an integer"),
])
def test_bad_filters_value(value: str, message: str) -> None:
    err = _build_error(_set_line(BASE, 6, f"filters={value}"))
    _assert_at(err, 6, "convolutional #0", "filters")
    assert message in str(err)


@pytest.mark.parametrize("value, read", [("40#32", 40), ("1.5", 1), ("1e9", 1), ("16.0", 16)])
def test_integers_are_read_as_darknet_atoi(value: str, read: int, caplog) -> None:
    """Darknet reads the longest integer prefix (``filters=40#32`` is 40); yolodet does the same and warns at the
    line when that differs from the text (not for ``16.0``, which means what atoi reads)."""
    with caplog.at_level(logging.WARNING):
        model = Darknet.from_cfg_text(_set_line(BASE, 6, f"filters={value}"))
    assert model.layers[0].out_shape[0] == read
    assert (f"<cfg>:6: [convolutional] filters: {value!r} is read as {read}" in caplog.text) == (value != "16.0")


def test_empty_value() -> None:
    err = _build_error(_set_line(BASE, 12, "size="))
    _assert_at(err, 12, "maxpool", "size")
    assert "empty value" in str(err)


@pytest.mark.parametrize("lineno, new, section, key", [
    (2, "width=abc", "net", "width"),
    (7, "size=1000000000", "convolutional #0", "size"),
    (8, "stride=0", "convolutional #0", "stride"),
    (9, "pad=x", "convolutional #0", "pad"),
    (10, "activation=leakyy", "convolutional #0", "activation"),
    (13, "stride=-3", "maxpool #1", "stride"),
    (23, "mask=0,1,7", "yolo #5", "mask"),
    (24, "anchors=10,14,x", "yolo #5", "anchors"),  # an odd count is read as Darknet reads it (first num pairs)
    (24, "anchors=10,,14", "yolo #5", "anchors"),
    (26, "num=1000000000", "yolo #5", "num"),
])
def test_bad_values_are_located(lineno: int, new: str, section: str, key: str) -> None:
    _assert_at(_build_error(_set_line(BASE, lineno, new)), lineno, section, key)


def test_missing_equals_sign() -> None:
    err = _build_error(_set_line(BASE, 7, "size3"))
    _assert_at(err, 7)
    assert "expected 'key=value'" in str(err) and "'size3'" in str(err)


def test_unknown_section_lists_known_types() -> None:
    err = _build_error(_insert_line(BASE, 11, "[frobnicate]"))
    _assert_at(err, 11, "frobnicate #1")
    for name in BLOCKS.names():
        assert name in str(err)


def test_unknown_key_lists_known_keys() -> None:
    err = _build_error(_insert_line(BASE, 8, "filterz=16"))
    _assert_at(err, 8, "convolutional #0", "filterz")
    for key in ("filters", "size", "stride", "pad", "padding", "batch_normalize", "activation"):
        assert key in str(err)


def test_unknown_key_of_keyless_layer() -> None:
    text = BASE.replace("[route]", "[avgpool]\nsize=2\n[route]").replace("layers=-1", "layers=-2")
    err = _build_error(text)
    _assert_at(err, 15, "avgpool #2", "size")
    assert "(none)" in str(err)


@pytest.mark.parametrize("value", ["999", "-999", "2", "-1,999", "3"])
def test_route_index_out_of_range(value: str) -> None:
    # the route is layer 2: "2" is its own index, "3" a later layer
    err = _build_error(_set_line(BASE, 15, f"layers={value}"))
    _assert_at(err, 15, "route #2", "layers")
    assert "outside the earlier layers 0..1" in str(err)


@pytest.mark.parametrize("value", ["999", "-999", "3", "-4"])
def test_shortcut_index_out_of_range(value: str) -> None:
    err = _build_error(_set_line(BASE, 17, f"from={value}"))
    _assert_at(err, 17, "shortcut #3", "from")


@pytest.mark.parametrize("lineno, new", [(25, "classes=3"), (23, "mask=0,1"), (23, "mask=0,1,2,0")])
def test_yolo_filters_mismatch_is_reported_at_classes(lineno: int, new: str) -> None:
    err = _build_error(_set_line(BASE, lineno, new))
    _assert_at(err, 25, "yolo #5", "classes")
    assert "has 21 filters" in str(err) and "len(mask)" in str(err)


def test_deleted_section_header() -> None:
    # the [route] header (line 14): its layers= falls into the maxpool before it
    _assert_at(_build_error(_set_line(BASE, 14, None)), 14, "maxpool #1", "layers")
    # the [net] header: options before any section
    err = _build_error(_set_line(BASE, 1, None))
    _assert_at(err, 1)
    assert "before the first [section]" in str(err)
    # the [yolo] header (line 22): mask= falls into the last conv
    _assert_at(_build_error(_set_line(BASE, 22, None)), 22, "convolutional #4", "mask")


def test_net_must_come_first_and_once() -> None:
    _assert_at(_build_error("# c\n[convolutional]\nfilters=1\n[net]\n"), 2)
    _assert_at(_build_error(BASE + "[net]\nwidth=3\n"), 27)
    _assert_at(_build_error(BASE + "[convolutional\n"), 27)
    _assert_at(_build_error("[net]\nwidth=32\n"), 1, "net")
    with pytest.raises(CfgError, match="no sections"):
        Darknet.from_cfg_text("# nothing\n", "t.cfg")


def test_shape_errors_name_the_layer() -> None:
    text = BASE.replace("[shortcut]\nfrom=-2", "[upsample]\nstride=2\n[route]\nlayers=-1,-2")
    # the new route is layer 4, its layers= at line 19: 32x32 and 16x16 maps cannot be concatenated
    err = _build_error(text)
    _assert_at(err, 19, "route #4", "layers")
    assert "layer 2 is 16x16 but layer 3 is 32x32" in str(err)


# -- fuzzing -----------------------------------------------------------------------------------------------------
_CHEAP = {"tiny", "yolov3-tiny", "yolov4-tiny"}  # fast enough to build ~150 times
FUZZ_CFGS = {p.stem: p.read_text() for p in [FIXTURES / "tiny.cfg", *REFERENCE_CFGS] if p.stem in _CHEAP}
_GARBAGE = ["abc", "1.5", "-3", "0", "1e9", ""]
_NUMERIC = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*(-?[\d.]+(\s*,\s*-?[\d.]+)*\s*,?)\s*$")
_KEY = re.compile(r"^\s*[A-Za-z_]\w*\s*=")


def _is_header(line: str) -> bool:
    return line.strip().startswith("[")


def _layer_index(lines: list[str], i: int) -> int:
    """Darknet layer index of the section holding line ``i`` (0-based); ``[net]`` is -1."""
    return sum(_is_header(line) for line in lines[:i + 1]) - 2


def _mutate(lines: list[str], kind: str, choose: Callable[[Sequence], object]) -> list[str]:
    """One hand-made mistake of ``kind``; ``choose`` picks an element of a sequence (hypothesis draws it)."""
    if kind == "drop_equals":
        i = choose([i for i, line in enumerate(lines) if _KEY.match(line)])
        lines[i] = lines[i].replace("=", "", 1)
    elif kind == "garbage_value":
        numeric = {i: m.group(1) for i, line in enumerate(lines) if (m := _NUMERIC.match(line))}
        key = choose(sorted(set(numeric.values())))  # the key first: rare keys get their share
        lines[choose([i for i, k in numeric.items() if k == key])] = f"{key}={choose(_GARBAGE)}"
    elif kind == "unknown_section":
        i = choose(range(len(lines) + 1))
        lines[i:i] = ["[not_a_layer]", "filters=3"][:choose([1, 2])]
    elif kind == "unknown_key":
        lines.insert(choose([i for i, line in enumerate(lines) if _is_header(line)]) + 1, "not_a_key=1")
    elif kind == "bad_index":
        i = choose([i for i, line in enumerate(lines) if re.match(r"^\s*(layers|from)\s*=", line)])
        own = _layer_index(lines, i)
        bad = choose(["999", "-999", str(own), str(own + 1), f"-1,{own}", f"-{own + 1}"])
        lines[i] = f"{lines[i].split('=')[0].strip()}={bad}"
    elif kind == "yolo_mismatch":
        i = choose([i for i, line in enumerate(lines) if re.match(r"^\s*(classes|mask)\s*=", line)])
        key, value = (s.strip() for s in lines[i].split("=", 1))
        if key == "classes":
            lines[i] = f"classes={int(value) + choose([-1, 1, 7])}"
        else:
            mask = value.split(",")
            lines[i] = "mask=" + ",".join(mask + mask[:1] if not choose([False, True]) else mask[:-1])
    elif kind == "delete_header":
        del lines[choose([i for i, line in enumerate(lines) if _is_header(line)])]
    else:  # pragma: no cover
        raise AssertionError(kind)
    return lines


MUTATIONS = ["drop_equals", "garbage_value", "unknown_section", "unknown_key", "bad_index", "yolo_mismatch",
             "delete_header"]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_cfgs_build_or_raise_located_cfgerror(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(FUZZ_CFGS)), label="cfg")
    lines = FUZZ_CFGS[name].splitlines()
    choose = lambda seq: data.draw(st.sampled_from(seq))  # noqa: E731
    count = data.draw(st.sampled_from([1, 1, 2, 3]), label="count")  # mostly one: a later error hides nothing
    for kind in data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=count, max_size=count), label="kinds"):
        lines = _mutate(lines, kind, choose)
    text = "\n".join(lines) + "\n"
    path = f"{name}.cfg"
    try:
        Darknet.from_cfg_text(text, path)  # any exception other than CfgError fails the test
    except CfgError as exc:
        m = re.match(rf"{re.escape(path)}:(\d+):", str(exc))
        assert m, f"not located: {exc}"
        assert 1 <= int(m.group(1)) <= len(lines), str(exc)
        assert exc.line == int(m.group(1))


# (kind, which candidate: first or last) -> line of the *mutated* tiny.cfg the error must name (None: it builds)
_TINY_CASES = {
    ("drop_equals", "first"): 3,  # width=64 -> width64
    ("drop_equals", "last"): 138,  # num=6 -> num6
    ("garbage_value", "first"): 107,  # keys sorted: anchors=abc in the first [yolo]
    ("garbage_value", "last"): 3,  # ... width= (empty)
    ("unknown_section", "first"): 1,  # [not_a_layer] before [net]
    ("unknown_section", "last"): 139,  # [not_a_layer] + filters=3 appended
    ("unknown_key", "first"): None,  # into [net]: tolerated
    ("unknown_key", "last"): 135,  # into the last [yolo]
    ("bad_index", "first"): 35,  # layers=999 in the route at layer 3
    ("bad_index", "last"): 123,  # layers=-18 in the route at layer 17
    ("yolo_mismatch", "first"): 108,  # mask=3,4,5,3: reported at classes=
    ("yolo_mismatch", "last"): 137,  # classes=9
    ("delete_header", "first"): 2,  # [net] gone: width=64 is now line 2, before any section
    ("delete_header", "last"): 134,  # last [yolo] gone: its mask= lands in the conv before it
}


@pytest.mark.parametrize("kind, which", sorted(_TINY_CASES))
def test_each_mutation_kind_on_tiny(kind: str, which: str) -> None:
    """Deterministic counterpart of the fuzz test: the exact line reported for each kind of mistake."""
    lines = (FIXTURES / "tiny.cfg").read_text().splitlines()
    choose = (lambda seq: seq[0]) if which == "first" else (lambda seq: seq[-1])
    text = "\n".join(_mutate(lines, kind, choose)) + "\n"
    expected = _TINY_CASES[kind, which]
    if expected is None:
        Darknet.from_cfg_text(text, "tiny.cfg")
    else:
        _assert_at(_build_error(text, "tiny.cfg"), expected, path="tiny.cfg")


def _every_mutation(lines: list[str], kind: str) -> Iterator[list[str]]:
    """Every outcome of ``_mutate(lines, kind, choose)``: ``choose``'s answers are enumerated depth-first."""
    todo: list[list[int]] = [[]]
    while todo:
        path = todo.pop()
        depth = 0

        def choose(seq: Sequence) -> object:
            nonlocal depth
            seq = list(seq)
            if depth == len(path):  # a new choice point: visit answer 0 now, the others later
                todo.extend(path + [j] for j in range(1, len(seq)))
                path.append(0)
            depth += 1
            return seq[path[depth - 1]]

        yield _mutate(list(lines), kind, choose)


@pytest.mark.parametrize("kind", MUTATIONS)
def test_every_single_mutation_of_tiny(kind: str) -> None:
    """Exhaustive over one mistake in tiny.cfg (every line, every garbage value, every position)."""
    lines = (FIXTURES / "tiny.cfg").read_text().splitlines()
    outcomes = {"ok": 0, "error": 0}
    for mutated in _every_mutation(lines, kind):
        try:
            Darknet.from_cfg_text("\n".join(mutated) + "\n", "tiny.cfg")
            outcomes["ok"] += 1
        except CfgError as exc:
            assert re.match(r"tiny\.cfg:\d+:", str(exc)) and 1 <= exc.line <= len(mutated), str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 0, outcomes
