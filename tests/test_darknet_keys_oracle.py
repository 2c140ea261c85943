"""Keys and layers of AlexeyAB's parser that change inference, each checked against Darknet C (``../shared/oracle``)
on a small synthetic cfg: ``[normalization]``/``[lrn]``, ``antialiasing`` of ``[convolutional]`` and ``[maxpool]``,
``maxpool_depth``/``out_channels``; and the keys Darknet's CPU forward ignores (``coordconv``, ``reverse``,
``maxpool_zero_nonmax``, ``[softmax] spatial``, ``[region] sqrt``), which yolodet accepts and ignores alike.

Weights are random (``conftest.randomize``), written by yolodet's saver and read by Darknet's ``load_weights``;
outputs agree to 1e-4 of their scale (``test_zoo_darknet._compare``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import randomize
from test_zoo_darknet import _compare
from yolodet.cfg import CfgError
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import load_darknet_weights, save_darknet_weights


def _cfg(body: str, c: int = 3, h: int = 20, w: int = 20) -> str:
    return f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n" + body


CONV = "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
"""A first layer with random weights, so the layer under test sees 8 channels of varied values."""


def _against_darknet(text: str, oracle, tmp_path: Path, *, seed: int = 0) -> float:
    """yolodet vs Darknet C on every layer of ``text`` (an antialiased layer: its blur's output, which is what the
    harness dumps): the largest |diff| / scale."""
    model = randomize(Darknet.from_cfg_text(text, "test.cfg").eval(), seed=seed)
    (tmp_path / "model.cfg").write_text(text)
    save_darknet_weights(model, tmp_path / "model.weights")
    n = model.net
    x = torch.rand(1, n.channels, n.height, n.width, generator=torch.Generator().manual_seed(seed)) * 2 - 0.5
    theirs = oracle.run_indexed(tmp_path / "model.cfg", tmp_path / "model.weights", x.numpy(), "all", timeout=300)
    with torch.no_grad():
        ours = model.layer_outputs(x)
    worst = 0.0
    for i, kind, a in theirs:
        if kind == "region":  # Darknet's transposed, activated head; yolodet's is the raw input (decode applies it)
            continue
        worst = max(worst, _compare(ours[i], a, f"layer {i} ({kind})"))
    return worst


# -- [normalization] / [lrn] --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9, 16])
def test_normalization_equals_darknet(size: int, oracle, tmp_path: Path) -> None:
    body = CONV + f"[normalization]\nsize={size}\nalpha=0.05\nbeta=0.75\nkappa=1.5\n"
    _against_darknet(_cfg(body), oracle, tmp_path)


def test_lrn_alias_defaults_on_the_input(oracle, tmp_path: Path) -> None:
    """``[lrn]`` with Darknet's defaults (size 5, alpha 1e-4, beta .75, kappa 1) on 3 channels (size/2 = 2 < 3);
    then size/2 equal to the channels (5 -> size 10), the largest Darknet reads without overrunning."""
    _against_darknet(_cfg("[lrn]\n\n[lrn]\nsize=6\nalpha=0.5\n"), oracle, tmp_path)


def test_normalization_size_past_the_channels_is_refused() -> None:
    with pytest.raises(CfgError, match=r"test.cfg:7: \[normalization #0\] size: size/2 = 2 is more than the input's 1"):
        Darknet.from_cfg_text(_cfg("[normalization]\nsize=5\n", c=1), "test.cfg")


def test_normalization_is_not_torch_local_response_norm() -> None:
    """Darknet's sum misses channel size/2 and does not divide alpha by size (hand-computed on 3 channels)."""
    model = Darknet.from_cfg_text(_cfg("[lrn]\nsize=3\nalpha=1\nbeta=1\nkappa=1\n", h=1, w=1))
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    # windows [k-1, k+1]: {0,1}, {0,1,2}, {1,2}; minus x[1]^2 = 4 each
    expected = x.flatten() / (1 + torch.tensor([1 + 4 - 4, 1 + 4 + 9 - 4, 4 + 9 - 4.0]))
    assert torch.allclose(model(x)[0].flatten(), expected)


# -- antialiasing -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys", ["stride=2\nantialiasing=1", "stride=2\nantialiasing=2", "stride=1\nantialiasing=1",
                                  "stride=1\nantialiasing=2", "stride_x=2\nstride_y=1\nantialiasing=1",
                                  "stride=3\nantialiasing=2\nbatch_normalize=1"])
def test_conv_antialiasing_equals_darknet(keys: str, oracle, tmp_path: Path) -> None:
    body = (CONV + f"[convolutional]\nfilters=6\nsize=3\npad=1\nactivation=leaky\n{keys}\n\n"
            "[convolutional]\nfilters=4\nsize=3\npad=1\nstride=1\nactivation=linear\n")
    _against_darknet(_cfg(body, h=21), oracle, tmp_path)


@pytest.mark.parametrize("keys", ["size=2\nstride=2\nantialiasing=1", "size=2\nstride=2\nantialiasing=2",
                                  "size=3\nstride=2\nantialiasing=1", "size=3\nstride=1\nantialiasing=2"])
def test_maxpool_antialiasing_equals_darknet(keys: str, oracle, tmp_path: Path) -> None:
    body = CONV + f"[maxpool]\n{keys}\n\n[convolutional]\nfilters=4\nsize=1\nstride=1\nactivation=linear\n"
    _against_darknet(_cfg(body, w=19), oracle, tmp_path)


def test_route_to_a_stride_2_antialiased_layer_is_refused() -> None:
    body = CONV + "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nantialiasing=1\n\n[route]\nlayers=-1\n"
    with pytest.raises(CfgError, match=r"test.cfg:2\d: \[route #2\] layers: layer 1 is antialiased with a stride"):
        Darknet.from_cfg_text(_cfg(body), "test.cfg")


def test_route_to_a_stride_1_antialiased_layer_equals_darknet(oracle, tmp_path: Path) -> None:
    body = CONV + "[convolutional]\nfilters=4\nsize=3\nstride=1\npad=1\nantialiasing=1\n\n[route]\nlayers=-1,-2\n"
    _against_darknet(_cfg(body), oracle, tmp_path)


def test_antialiasing_with_xnor_is_refused() -> None:
    body = CONV + "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nxnor=1\nantialiasing=1\n"
    with pytest.raises(CfgError, match="antialiasing: xnor=1 with antialiasing is not implemented"):
        Darknet.from_cfg_text(_cfg(body), "test.cfg")


def test_share_index_of_an_antialiased_conv_shares_the_host_weights(oracle, tmp_path: Path) -> None:
    body = (CONV + "[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nantialiasing=1\nactivation=leaky\n\n"
            "[convolutional]\nfilters=8\nsize=3\nstride=1\npad=1\nshare_index=1\nactivation=leaky\n")
    model = Darknet.from_cfg_text(_cfg(body))
    assert model.layers[2].conv.weight is model.layers[1].inner.conv.weight
    _against_darknet(_cfg(body), oracle, tmp_path)


# -- maxpool_depth ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys", ["maxpool_depth=1\nout_channels=1", "maxpool_depth=1\nout_channels=2",
                                  "maxpool_depth=1\nout_channels=3", "maxpool_depth=1\nout_channels=8",
                                  "out_channels=3\nsize=2\nstride=2"])
def test_maxpool_depth_equals_darknet(keys: str, oracle, tmp_path: Path) -> None:
    _against_darknet(_cfg(CONV + f"[maxpool]\n{keys}\n"), oracle, tmp_path)


def test_maxpool_depth_more_out_channels_than_inputs_gives_minus_flt_max(oracle, tmp_path: Path) -> None:
    text = _cfg(CONV + "[maxpool]\nmaxpool_depth=1\nout_channels=11\n")
    model = randomize(Darknet.from_cfg_text(text).eval())
    (tmp_path / "m.cfg").write_text(text)
    save_darknet_weights(model, tmp_path / "m.weights")
    x = torch.rand(1, 3, 20, 20)
    [theirs] = oracle.run(tmp_path / "m.cfg", tmp_path / "m.weights", x.numpy(), [1])
    with torch.no_grad():
        ours = model(x)[0]
    assert ours.shape == (1, 11, 20, 20)
    assert np.array_equal(ours[:, 8:].numpy(), theirs[:, 8:]) and (theirs[:, 8:] == -np.finfo(np.float32).max).all()
    _compare(ours[:, :8], theirs[:, :8], "the first 8 channels")


def test_maxpool_depth_with_antialiasing_is_refused() -> None:
    """Darknet's ``forward_maxpool_layer`` returns before the blur when ``maxpool_depth=1``, while the next layer
    takes the blur's output size: it would read the first values of the unblurred map."""
    with pytest.raises(CfgError, match="test.cfg:1[0-9]: .*antialiasing: maxpool_depth=1 with antialiasing"):
        Darknet.from_cfg_text(_cfg(CONV + "[maxpool]\nmaxpool_depth=1\nout_channels=3\nstride=2\nantialiasing=1\n"),
                              "test.cfg")


def test_maxpool_out_channels_below_one_is_refused() -> None:
    with pytest.raises(CfgError, match="out_channels: must be >= 1, got 0"):
        Darknet.from_cfg_text(_cfg("[maxpool]\nmaxpool_depth=1\nout_channels=0\n"), "test.cfg")


# -- keys Darknet's CPU forward ignores ---------------------------------------------------------------------------
def test_cpu_ignored_keys_equal_darknet(oracle, tmp_path: Path, caplog) -> None:
    """``coordconv`` (GPU forward only), ``reverse`` (GPU weight update only), ``maxpool_zero_nonmax`` (GPU only),
    ``[softmax] spatial`` (GPU only): Darknet's CPU output is as without them, and so is yolodet's."""
    body = (CONV + "[convolutional]\nfilters=6\nsize=3\npad=1\nstride=1\ncoordconv=1\nreverse=1\nactivation=leaky\n\n"
            "[maxpool]\nsize=2\nstride=2\nmaxpool_zero_nonmax=1\n\n[softmax]\nspatial=1\ngroups=2\n")
    with caplog.at_level(logging.WARNING, logger="yolodet.modeling.model"):
        _against_darknet(_cfg(body), oracle, tmp_path)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "coordconv=1: ignored" in warned and "maxpool_zero_nonmax=1" in warned and "spatial=1" in warned
    assert "reverse" not in warned  # training only: no warning


def test_region_sqrt_is_accepted_and_changes_nothing(oracle, tmp_path: Path) -> None:
    head = "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n\n[region]\nanchors=1,1,2,2\nclasses=2\nnum=2\n"
    plain = Darknet.from_cfg_text(_cfg(CONV + head))
    with_sqrt = Darknet.from_cfg_text(_cfg(CONV + head + "sqrt=1\n"))
    assert plain.heads == with_sqrt.heads
    _against_darknet(_cfg(CONV + head + "sqrt=1\n"), oracle, tmp_path)


def test_crnn_xnor_stays_refused() -> None:
    body = "[crnn]\nhidden=4\noutput=4\nsize=3\npad=1\nxnor=1\n"
    with pytest.raises(CfgError, match="xnor: Darknet reads this key .* but yolodet does not implement it"):
        Darknet.from_cfg_text(_cfg(body), "test.cfg")


# -- weights and export -------------------------------------------------------------------------------------------
ALL_NEW = _cfg(CONV + "[lrn]\nsize=3\nalpha=0.05\n\n"
               "[convolutional]\nbatch_normalize=1\nfilters=6\nsize=3\npad=1\nstride=2\nantialiasing=1\n"
               "activation=leaky\n\n"
               "[maxpool]\nsize=2\nstride=2\nantialiasing=2\n\n"
               "[convolutional]\nfilters=6\nsize=3\npad=1\nstride=1\nantialiasing=1\nactivation=leaky\n\n"
               "[maxpool]\nmaxpool_depth=1\nout_channels=4\n", h=32, w=32)


def test_weights_round_trip_byte_identical_without_blur_weights(tmp_path: Path) -> None:
    model = randomize(Darknet.from_cfg_text(ALL_NEW), seed=5)
    save_darknet_weights(model, tmp_path / "a.weights")
    floats = sum(t.numel() for layer in model.layers for t in layer.darknet_tensors())
    assert floats == (8 * 4 + 8 * 27) + (6 * 4 + 6 * 8 * 9) + (6 + 6 * 6 * 9)  # the conv layers' own tensors only
    assert (tmp_path / "a.weights").stat().st_size == 20 + 4 * floats
    fresh = Darknet.from_cfg_text(ALL_NEW)
    assert load_darknet_weights(fresh, tmp_path / "a.weights").complete
    save_darknet_weights(fresh, tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[0], fresh.eval()(x)[0])
    assert not any("kernel" in k for k in fresh.state_dict())  # the blur is fixed, not a checkpoint tensor


def test_all_new_layers_equal_darknet(oracle, tmp_path: Path) -> None:
    _against_darknet(ALL_NEW, oracle, tmp_path, seed=1)


def test_onnx_export_of_the_new_layers(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from yolodet.export import to_onnx

    model = randomize(Darknet.from_cfg_text(ALL_NEW, "all_new.cfg").eval(), seed=2)
    path = to_onnx(model, tmp_path / "m.onnx")
    x = torch.rand(1, 3, 32, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [theirs] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ours = model(x)[0]
    _compare(ours, theirs, "onnxruntime")
