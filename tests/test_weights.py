"""Darknet ``.weights`` I/O: header versions, exact byte accounting, partial files, round trips, atomic saves."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, OFFICIAL_TINY, SHARED, need_shared, randomize
from yolodet.modeling.blocks.conv import ConnectedBlock, ConvBlock
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import (
    WeightsError,
    WeightsHeader,
    load_darknet_weights,
    read_header,
    save_darknet_weights,
)

TINY_CFG = SHARED / "data" / "darknet-cfg" / "yolov3-tiny.cfg"


def _tiny_fixture(seed: int = 0) -> Darknet:
    return randomize(Darknet.from_cfg(FIXTURES / "tiny.cfg").eval(), seed=seed)


def _floats_of(model: Darknet) -> list[int]:
    """Float count of each layer with weights, in file order."""
    return [sum(t.numel() for t in layer.darknet_tensors()) for layer in model.layers if layer.darknet_tensors()]


def _assert_same_state(a: Darknet, b: Darknet) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if k.endswith("num_batches_tracked"):  # not in the file
            continue
        assert torch.equal(sa[k], sb[k]), k


# -- official yolov3-tiny.weights -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official() -> bytes:
    return need_shared(OFFICIAL_TINY).read_bytes()


def test_official_tiny_round_trip_is_byte_identical(official: bytes, tmp_path: Path) -> None:
    model = Darknet.from_cfg(need_shared(TINY_CFG))
    report = load_darknet_weights(model, OFFICIAL_TINY)
    assert report.complete
    assert report.layers_filled == len(model.layers) == 24
    assert report.weighted_filled == report.weighted_total == 13
    major, minor, revision = struct.unpack_from("<3i", official)
    (seen,) = struct.unpack_from("<Q", official, 12)  # version 0.2: 64-bit seen
    assert (major, minor) == (0, 2)
    assert report.header == WeightsHeader(major, minor, revision, seen)
    assert model.seen == seen
    assert 20 + 4 * sum(_floats_of(model)) == len(official)
    out = tmp_path / "again.weights"
    save_darknet_weights(model, out, header=report.header)
    assert out.read_bytes() == official


def test_official_tiny_values_land_in_the_right_tensors(official: bytes) -> None:
    model = Darknet.from_cfg(need_shared(TINY_CFG))
    load_darknet_weights(model, OFFICIAL_TINY)
    floats = np.frombuffer(official, "<f4", offset=20)
    first = model.layers[0]  # BN conv, 16 filters, 3x3x3: beta, gamma, mean, var, then weights
    assert torch.equal(first.bn.bias, torch.from_numpy(floats[0:16].copy()))
    assert torch.equal(first.bn.weight, torch.from_numpy(floats[16:32].copy()))
    assert torch.equal(first.bn.running_mean, torch.from_numpy(floats[32:48].copy()))
    assert torch.equal(first.bn.running_var, torch.from_numpy(floats[48:64].copy()))
    assert torch.equal(first.conv.weight, torch.from_numpy(floats[64:64 + 16 * 27].copy()).view(16, 3, 3, 3))
    last = model.layers[22]  # head conv without BN: bias[255], then weights[255, 256, 1, 1]; the file ends there
    tail = floats[-(255 + 255 * 256):]
    assert torch.equal(last.conv.bias, torch.from_numpy(tail[:255].copy()))
    assert torch.equal(last.conv.weight.flatten(), torch.from_numpy(tail[255:].copy()))


def test_official_tiny_truncated_inside_a_layer(official: bytes, tmp_path: Path) -> None:
    model = Darknet.from_cfg(need_shared(TINY_CFG))
    sizes = _floats_of(model)
    cut = tmp_path / "cut.weights"
    # the file ends 100 floats into layer 2 (the second conv: 32 * (4 + 16*9) = 4736 floats)
    cut.write_bytes(official[:20 + 4 * (sizes[0] + 100)])
    with pytest.raises(WeightsError) as info:
        load_darknet_weights(model, cut)
    msg = str(info.value)
    assert str(cut) in msg and "inside layer 2" in msg
    assert f"needs {sizes[1]} floats" in msg and "only 100 are left" in msg and sizes[1] == 4736


def test_official_tiny_with_extra_bytes(official: bytes, tmp_path: Path) -> None:
    long = tmp_path / "long.weights"
    long.write_bytes(official + b"\0" * 8)
    with pytest.raises(WeightsError, match=r"8 bytes \(2 floats\) are left over"):
        load_darknet_weights(Darknet.from_cfg(need_shared(TINY_CFG)), long)
    odd = tmp_path / "odd.weights"
    odd.write_bytes(official + b"\0" * 3)
    with pytest.raises(WeightsError, match="not a whole number of float32"):
        load_darknet_weights(Darknet.from_cfg(need_shared(TINY_CFG)), odd)


# yolov3-tiny layers with weights: 0 2 4 6 8 10 12 13 14 15 | 16 yolo | 18 | 21 22 (23 yolo)
@pytest.mark.parametrize("cutoff, filled, weighted", [(15, 15, 9), (17, 16, 10), (20, 19, 11), (1, 1, 1)])
def test_official_tiny_partial_at_layer_boundary(official: bytes, tmp_path: Path, cutoff: int, filled: int,
                                                 weighted: int) -> None:
    """``darknet partial yolov3-tiny.cfg yolov3-tiny.weights yolov3-tiny.conv.N N``: layers 0..N-1 only."""
    full = Darknet.from_cfg(need_shared(TINY_CFG))
    load_darknet_weights(full, OFFICIAL_TINY)
    part = tmp_path / f"yolov3-tiny.conv.{cutoff}"
    save_darknet_weights(full, part, cutoff=cutoff)
    data = part.read_bytes()
    assert data[:20] == struct.pack("<3iQ", 0, 2, 5, full.seen)  # our saver writes version 0.2.5
    assert data[20:] == official[20:20 + 4 * sum(_floats_of(full)[:weighted])]
    fresh = randomize(Darknet.from_cfg(TINY_CFG), seed=3)
    before = [[t.clone() for t in m.darknet_tensors()] for m in fresh.layers]
    report = load_darknet_weights(fresh, part)
    assert not report.complete
    assert report.layers_filled == filled  # 1 + the last layer with weights below the cutoff
    assert (report.weighted_filled, report.weighted_total) == (weighted, 13)
    for i, (a, b, old) in enumerate(zip(fresh.layers, full.layers, before)):
        for ta, tb, to in zip(a.darknet_tensors(), b.darknet_tensors(), old):
            assert torch.equal(ta, tb if i < cutoff else to), i
            assert not torch.equal(tb, to), i  # the random start differs from the official values


# -- header rules -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, seen_format", [
    ((0, 1, 0), "<I"), ((0, 0, 0), "<I"), ((0, 2, 5), "<Q"), ((1, 0, 0), "<Q"), ((0, 3, 0), "<Q"),
])
def test_header_seen_width(version: tuple[int, int, int], seen_format: str) -> None:
    seen = 123456 if seen_format == "<I" else 2**40 + 7
    data = struct.pack("<3i", *version) + struct.pack(seen_format, seen) + struct.pack("<f", 1.5)
    header = read_header(data)
    assert (header.major, header.minor, header.revision, header.seen) == (*version, seen)
    assert header.nbytes == struct.calcsize("<3i" + seen_format[1])
    assert header.to_bytes() == data[:header.nbytes]


def test_header_too_short() -> None:
    with pytest.raises(WeightsError, match="too short"):
        read_header(struct.pack("<3i", 0, 2, 0))
    with pytest.raises(WeightsError, match="version 0.2"):
        read_header(struct.pack("<3iI", 0, 2, 0, 5))  # a 64-bit seen needs 8 bytes
    assert read_header(struct.pack("<3iI", 0, 1, 0, 5)).seen == 5


def test_version_0_1_file_loads(tmp_path: Path) -> None:
    """A hand-written version 0.1 file (32-bit seen) with one BN-less 1x1 conv."""
    model = Darknet.from_cfg_text("[net]\nwidth=2\nheight=2\nchannels=2\n[convolutional]\nfilters=3\nsize=1\n")
    values = np.arange(3 + 3 * 2, dtype="<f4")
    path = tmp_path / "old.weights"
    path.write_bytes(struct.pack("<3iI", 0, 1, 0, 77) + values.tobytes())
    report = load_darknet_weights(model, path)
    assert report.complete and report.header.seen == 77 and report.layers_filled == 1
    assert model.layers[0].conv.bias.tolist() == [0, 1, 2]
    assert model.layers[0].conv.weight.flatten().tolist() == [3, 4, 5, 6, 7, 8]
    save_darknet_weights(model, tmp_path / "again.weights", header=report.header)
    assert (tmp_path / "again.weights").read_bytes() == path.read_bytes()
    save_darknet_weights(model, tmp_path / "new.weights")  # default: 0.2.5 with a 64-bit seen
    assert (tmp_path / "new.weights").read_bytes() == struct.pack("<3iQ", 0, 2, 5, 77) + values.tobytes()


# -- round trips ------------------------------------------------------------------------------------------------
def test_random_round_trip_tiny_fixture(tmp_path: Path) -> None:
    model = _tiny_fixture(seed=0)
    path = tmp_path / "tiny.weights"
    save_darknet_weights(model, path, header=WeightsHeader(seen=1234))
    assert len(path.read_bytes()) == 20 + 4 * sum(_floats_of(model))
    fresh = _tiny_fixture(seed=1)
    report = load_darknet_weights(fresh, path)
    assert report.complete and report.layers_filled == len(fresh.layers) and fresh.seen == 1234
    _assert_same_state(model, fresh)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(model(x), fresh(x)):
            assert torch.equal(a, b)


CONNECTED_CFG = """[net]
width=4
height=4
channels=2
[convolutional]
filters=3
size=3
stride=2
pad=1
activation=leaky
[connected]
output=5
activation=linear
[connected]
output=4
batch_normalize=1
activation=relu
"""


def test_connected_round_trip(tmp_path: Path) -> None:
    model = randomize(Darknet.from_cfg_text(CONNECTED_CFG).eval(), seed=0)
    assert [type(m) for m in model.layers] == [ConvBlock, ConnectedBlock, ConnectedBlock]
    # conv: bias 3 + 3*2*9; fc without BN: bias 5 + 5*12; fc with BN: beta 4 + 4*5 + gamma, mean, var 3*4
    assert _floats_of(model) == [57, 65, 36]
    path = tmp_path / "fc.weights"
    save_darknet_weights(model, path)
    fresh = randomize(Darknet.from_cfg_text(CONNECTED_CFG).eval(), seed=1)
    assert load_darknet_weights(fresh, path).complete
    _assert_same_state(model, fresh)
    x = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x)[0], fresh(x)[0])
    # Darknet order for the BN connected layer: bias (= BN beta), weights, scales, rolling mean, rolling var
    floats = np.frombuffer(path.read_bytes(), "<f4", offset=20)[57 + 65:]
    fc = fresh.layers[2]
    expected = [fc.bn.bias, fc.fc.weight, fc.bn.weight, fc.bn.running_mean, fc.bn.running_var]
    assert np.array_equal(floats, np.concatenate([t.detach().numpy().ravel() for t in expected]))


@pytest.mark.parametrize("version", [(1001, 0, 0), (0, 1001, 0)])
def test_transposed_connected_weights(tmp_path: Path, version: tuple[int, int, int]) -> None:
    """Files with a version part > 1000 store each connected matrix as [inputs, outputs]."""
    cfg = "[net]\nwidth=1\nheight=1\nchannels=3\n[connected]\noutput=2\nactivation=linear\n"
    weight = np.array([[1, 2, 3], [4, 5, 6]], dtype="<f4")  # [outputs=2, inputs=3]
    bias = np.array([10, 20], dtype="<f4")
    path = tmp_path / "t.weights"
    path.write_bytes(struct.pack("<3iQ", *version, 9) + bias.tobytes() + weight.T.copy().tobytes())
    model = Darknet.from_cfg_text(cfg)
    report = load_darknet_weights(model, path)
    assert report.header.transposed and report.complete
    assert model.layers[0].fc.weight.tolist() == weight.tolist()
    assert model.layers[0].fc.bias.tolist() == [10, 20]
    with torch.no_grad():
        out = model(torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1))[0]
    assert out.flatten().tolist() == [1 - 3 + 10, 4 - 6 + 20]
    save_darknet_weights(model, tmp_path / "again.weights", header=report.header)
    assert (tmp_path / "again.weights").read_bytes() == path.read_bytes()


def test_untransposed_file_is_read_row_major(tmp_path: Path) -> None:
    cfg = "[net]\nwidth=1\nheight=1\nchannels=3\n[connected]\noutput=2\nactivation=linear\n"
    path = tmp_path / "t.weights"
    path.write_bytes(struct.pack("<3iQ", 0, 2, 5, 0) + np.arange(8, dtype="<f4").tobytes())
    model = Darknet.from_cfg_text(cfg)
    load_darknet_weights(model, path)
    assert model.layers[0].fc.bias.tolist() == [0, 1]
    assert model.layers[0].fc.weight.tolist() == [[2, 3, 4], [5, 6, 7]]


def test_partial_round_trip_on_fixture(tmp_path: Path) -> None:
    model = _tiny_fixture(seed=0)
    weighted = [i for i, m in enumerate(model.layers) if m.darknet_tensors()]
    assert weighted == [0, 2, 4, 8, 10, 12, 13, 18]
    for cutoff, filled in [(1, 1), (3, 3), (8, 5), (9, 9), (14, 14), (18, 14)]:
        path = tmp_path / f"p{cutoff}.weights"
        save_darknet_weights(model, path, cutoff=cutoff)
        fresh = _tiny_fixture(seed=5)
        before = [[t.clone() for t in m.darknet_tensors()] for m in fresh.layers]
        report = load_darknet_weights(fresh, path)
        assert report.layers_filled == filled and not report.complete, cutoff
        for i, (a, b, old) in enumerate(zip(fresh.layers, model.layers, before)):
            for ta, tb, to in zip(a.darknet_tensors(), b.darknet_tensors(), old):
                assert torch.equal(ta, tb if i < cutoff else to), (cutoff, i)


def test_header_only_file_fills_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.weights"
    path.write_bytes(WeightsHeader().to_bytes())
    report = load_darknet_weights(_tiny_fixture(), path)
    assert (report.layers_filled, report.weighted_filled, report.complete) == (0, 0, False)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="cannot read"):
        load_darknet_weights(_tiny_fixture(), tmp_path / "nope.weights")


# -- atomic save ------------------------------------------------------------------------------------------------
def _failing_midway(layer: ConvBlock):
    """A ``darknet_tensors`` replacement that yields the first tensor, then fails (like a crash mid-write)."""
    tensors = layer.darknet_tensors()

    def gen():
        yield tensors[0]
        raise RuntimeError("disk on fire")

    return gen


@pytest.mark.parametrize("existing", [False, True])
def test_failed_save_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            existing: bool) -> None:
    model = _tiny_fixture()
    target = tmp_path / "out.weights"
    if existing:
        target.write_bytes(b"old content")
    monkeypatch.setattr(model.layers[4], "darknet_tensors", _failing_midway(model.layers[4]))
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_darknet_weights(model, target)
    assert list(tmp_path.iterdir()) == ([target] if existing else [])
    if existing:
        assert target.read_bytes() == b"old content"
    monkeypatch.undo()
    save_darknet_weights(model, target)  # and a good save replaces it
    assert list(tmp_path.iterdir()) == [target]
    assert len(target.read_bytes()) == 20 + 4 * sum(_floats_of(model))
