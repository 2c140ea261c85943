"""``[conv_lstm]`` and ``[history]`` (:mod:`yolodet.modeling.blocks.conv_lstm`): Darknet C is the oracle over a
sequence of forwards (the state must match step by step, see ``sequence_oracle.py``), the weights file round-trips
byte-identically in Darknet's order, ``reset_state`` restarts the sequence, the keys Darknet's CPU forward cannot
give a defined result for are refused, training refuses the layers, and ONNX export matches the first step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import randomize
from sequence_oracle import run_sequence, sequence_binary
from yolodet.cfg import CfgError
from yolodet.modeling.blocks.conv_lstm import ConvLstm, History
from yolodet.modeling.model import Darknet
from yolodet.modeling.weights import load_darknet_weights, save_darknet_weights
from yolodet.training.criterion import UntrainableError, check_trainable

STEPS = 4
TOL = 1e-4

HEAD = """[net]
width=32
height=32
channels=3

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

"""
TAIL = """
[history]
history_size=3

[convolutional]
filters=6
size=1
activation=linear
"""
VARIANTS = {
    "plain": "[conv_lstm]\noutput=4\nsize=3\npad=1\n",
    "peephole_bn_leaky": "[conv_lstm]\noutput=6\nsize=3\npad=1\npeephole=1\nbatch_normalize=1\nactivation=leaky\n"
                         "shortcut=1\nlstm_activation=tanh\ntime_normalizer=0.5\n",
    "groups_dilation": "[conv_lstm]\noutput=4\nsize=3\npad=1\ngroups=2\ndilation=2\npeephole=1\n",
    "constrained_5x5": "[conv_lstm]\noutput=4\nsize=5\npadding=2\nstate_constrain=1\n",
}


def _model(variant: str, seed: int = 0) -> tuple[str, Darknet]:
    text = HEAD + VARIANTS[variant] + TAIL
    model = randomize(Darknet.from_cfg_text(text, f"{variant}.cfg").eval(), seed=seed)
    if variant == "constrained_5x5":  # f, i near 1 and |g| near 1: |c| grows past state_constrain=1 at step 2
        uf, ui, ug, _ = model.layers[1].gates[-4:]
        with torch.no_grad():
            uf.conv.bias += 4
            ui.conv.bias += 4
            ug.conv.weight *= 4
    return text, model


def _inputs(seed: int = 0) -> torch.Tensor:
    """STEPS different frames [STEPS, 3, 32, 32]."""
    return torch.rand(STEPS, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _run_ours(model: Darknet, xs: torch.Tensor, layers: list[int]) -> list[dict[int, torch.Tensor]]:
    model.reset_state()
    with torch.no_grad():
        return [model.layer_outputs(x[None], layers) for x in xs]


def _rel(ours: torch.Tensor, theirs: np.ndarray, what: str) -> float:
    ours_np, theirs = ours.numpy().reshape(-1), theirs.reshape(-1)
    assert ours_np.shape == theirs.shape, f"{what}: yolodet {tuple(ours.shape)} vs Darknet {theirs.size} values"
    scale = float(np.abs(theirs).max())
    assert scale > 0 and theirs.std() > 1e-6 * scale, f"{what}: degenerate Darknet output"
    return float(np.abs(ours_np - theirs).max()) / scale


def _compare_with_darknet(oracle, model: Darknet, text: str, tmp_path: Path) -> list[float]:
    """Relative max |diff| of layers 1 (conv_lstm), 2 (history), 3 (conv) at each step."""
    (tmp_path / "model.cfg").write_text(text)
    save_darknet_weights(model, tmp_path / "model.weights")
    xs, layers = _inputs(), [1, 2, 3]
    theirs = run_sequence(oracle, sequence_binary(oracle), tmp_path / "model.cfg", tmp_path / "model.weights",
                          xs.numpy(), layers)
    ours = _run_ours(model, xs, layers)
    return [max(_rel(ours[t][i], theirs[t][k], f"step {t} layer {i}") for k, i in enumerate(layers))
            for t in range(STEPS)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_conv_lstm_and_history_equal_darknet_step_by_step(variant: str, oracle, tmp_path: Path) -> None:
    text, model = _model(variant)
    diffs = _compare_with_darknet(oracle, model, text, tmp_path)
    assert max(diffs) <= TOL, f"{variant}: relative max |diff| per step {diffs}"
    lstm = model.layers[1]
    if lstm.state_constrain == 1:  # the clamp must have acted for this variant to test it
        assert float(lstm._state["c"].abs().max()) == 1.0


def test_oracle_comparison_catches_swapped_gates(oracle, tmp_path: Path) -> None:
    """A degenerate check would pass anything: with wf and wi swapped after saving, Darknet disagrees."""
    text, model = _model("peephole_bn_leaky")
    (tmp_path / "model.cfg").write_text(text)
    save_darknet_weights(model, tmp_path / "model.weights")
    gates = model.layers[1].gates
    gates[3], gates[4] = gates[4], gates[3]  # [vf, vi, vo, wf, wi, ...]: wf <-> wi
    xs = _inputs()
    theirs = run_sequence(oracle, sequence_binary(oracle), tmp_path / "model.cfg", tmp_path / "model.weights",
                          xs.numpy(), [1])
    ours = _run_ours(model, xs, [1])
    assert _rel(ours[STEPS - 1][1], theirs[STEPS - 1][0], "swapped") > 100 * TOL


def test_each_step_depends_on_the_state_and_reset_restarts() -> None:
    _, model = _model("peephole_bn_leaky")
    x = _inputs()[:1]
    with torch.no_grad():
        first, second = model(x)[0], model(x)[0]
        model.reset_state()
        again = model(x)[0]
    assert not torch.allclose(first, second, atol=1e-4), "the second step must see the first step's state"
    assert torch.equal(first, again)


def test_history_is_the_input_then_zeros() -> None:
    """Darknet at time_steps=1: the input in the first C channels, zeros in the others, at every step."""
    model = Darknet.from_cfg_text("[net]\nwidth=4\nheight=3\nchannels=2\n[history]\nhistory_size=4\n").eval()
    x = torch.rand(2, 2, 3, 4)
    for _ in range(2):
        out = model(x)[0]
        assert out.shape == (2, 8, 3, 4) and torch.equal(out[:, :2], x) and not out[:, 2:].any()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_weights_round_trip_byte_identical_in_darknet_order(variant: str, tmp_path: Path) -> None:
    text, model = _model(variant, seed=1)
    save_darknet_weights(model, tmp_path / "a.weights")
    fresh = Darknet.from_cfg_text(text)
    load_darknet_weights(fresh, tmp_path / "a.weights")
    save_darknet_weights(fresh, tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    lstm = fresh.layers[1]
    assert isinstance(lstm, ConvLstm) and isinstance(fresh.layers[2], History)
    order = [g.conv.in_channels for g in lstm.gates]  # [vf, vi, vo,] wf, wi, wg, wo (on h), uf, ui, ug, uo (on x)
    assert order == [lstm.outputs] * (7 if lstm.peephole else 4) + [8] * 4
    assert torch.equal(fresh.layers[1].gates[-1].conv.weight, model.layers[1].gates[-1].conv.weight)


@pytest.mark.parametrize("option, key", [
    ("bottleneck=1", "bottleneck"), ("xnor=1", "xnor"), ("lstm_activation=relu", "lstm_activation"),
    ("stride=2", "stride"), ("pad=0", "size"), ("groups=3", "groups"), ("output=0", "output"),
])
def test_refused_options_name_the_key(option: str, key: str) -> None:
    options = {"output": "4", "size": "3", "pad": "1", **dict([option.split("=")])}  # Darknet: the first wins
    text = HEAD + "[conv_lstm]\n" + "".join(f"{k}={v}\n" for k, v in options.items())
    with pytest.raises(CfgError, match=key) as info:
        Darknet.from_cfg_text(text, "bad.cfg")
    assert "bad.cfg:" in str(info.value)


def test_zero_valued_refused_keys_are_accepted() -> None:
    text = HEAD + "[conv_lstm]\noutput=4\npad=1\nbottleneck=0\nxnor=0\nlstm_activation=tanh\n"
    assert Darknet.from_cfg_text(text).layers[1].out_shape == (4, 16, 16)


@pytest.mark.parametrize("section", ["[conv_lstm]\noutput=4\npad=1\n", "[history]\nhistory_size=2\n"])
def test_training_refuses_the_layer(section: str) -> None:
    model = Darknet.from_cfg_text(HEAD + section, "seq.cfg")
    with pytest.raises(UntrainableError, match=r"layer 1 \[%s\] \(line 13\): recurrent" % section[1:-1].split("]")[0]):
        check_trainable(model)


def test_onnx_export_matches_the_first_step(tmp_path: Path) -> None:
    """The graph computes one step from a zero state (the model after ``reset_state``), at any size and batch."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from yolodet.export import to_onnx

    _, model = _model("peephole_bn_leaky")
    with torch.no_grad():
        model(_inputs()[:1])  # a state the export must not bake in
    session = ort.InferenceSession(str(to_onnx(model, tmp_path / "m.onnx", dynamic=True)),
                                   providers=["CPUExecutionProvider"])
    for batch, (h, w) in ((1, (32, 32)), (2, (24, 40))):
        x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))
        model.reset_state()
        with torch.no_grad():
            ref = model(x)[0].numpy()
        [got] = session.run(None, {"images": x.numpy()})
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= TOL * np.abs(ref).max(), (batch, h, w)
