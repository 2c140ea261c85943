"""Darknet's recurrent layers at inference: ``[rnn]``, ``[gru]``, ``[lstm]`` (over ``[connected]`` gates) and
``[crnn]`` (over ``[convolutional]`` gates), one time step per forward.

State: as in Darknet, each layer keeps its hidden state (and the LSTM its cell) from one forward to the next
(``network_predict`` on a sequence, one input at a time); it starts at zero, is reset to zero when the batch size
(or, for ``[crnn]``, the input's H, W) changes, and :meth:`RecurrentBlock.reset_state` (or
:meth:`yolodet.modeling.model.Darknet.reset_state`) resets it explicitly, e.g. between independent sequences.
Darknet resets it only when training starts a batch.
Training these layers is not supported (no backpropagation through time): the state is kept detached.

Weights file order (Darknet's ``load_weights``): ``[rnn]``/``[crnn]``: input, self, output layer; ``[gru]``:
input_z, input_r, input_h, state_z, state_r, state_h; ``[lstm]``: wf, wi, wg, wo (on the state), uf, ui, ug, uo
(on the input); each a full ``[connected]``/``[convolutional]`` record.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.base import Block, BuildContext, Shape
from yolodet.modeling.blocks.conv import BN_EPS, ConnectedBlock, ConvBlock, make_activation
from yolodet.modeling.registry import BLOCKS


class RecurrentBlock(Block):
    """Base: named state tensors kept between forwards (see the module docstring)."""

    state_names: tuple[str, ...] = ("state",)

    def __init__(self) -> None:
        super().__init__()
        self._state: dict[str, torch.Tensor] = {}

    def reset_state(self) -> None:
        """Forget the hidden state: the next forward starts from zeros, as a fresh Darknet network does."""
        self._state = {}

    def _get(self, name: str, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        s = self._state.get(name)
        if s is None or s.shape != (like.shape[0], *shape) or s.device != like.device:
            s = like.new_zeros(like.shape[0], *shape)
        return s

    def _keep(self, **states: torch.Tensor) -> None:
        self._state = {k: v.detach() for k, v in states.items()}

    def darknet_tensors(self) -> list[torch.Tensor]:
        return [t for gate in self.gates for t in gate.darknet_tensors()]


def _fc(inputs: int, outputs: int, act: nn.Module, bn: bool) -> ConnectedBlock:
    norm = nn.BatchNorm1d(outputs, eps=BN_EPS, momentum=0.01) if bn else None
    return ConnectedBlock(nn.Linear(inputs, outputs, bias=not bn), norm, act)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, 1, 1)


class Rnn(RecurrentBlock):
    """``[rnn]``: ``s' = (shortcut ? s : 0) + input(x) + self(s)``; output ``= output(s')`` (connected layers)."""

    def __init__(self, inputs: int, hidden: int, outputs: int, act: str, self_act: str, bn: bool, shortcut: bool,
                 block: CfgBlock) -> None:
        super().__init__()
        mk = (lambda name: make_activation(_with_activation(block, name), name))
        self.gates = nn.ModuleList([_fc(inputs, hidden, mk(act), bn), _fc(hidden, hidden, mk(self_act), bn),
                                    _fc(hidden, outputs, mk(act), bn)])
        self.hidden, self.shortcut, self.out_shape = hidden, shortcut, (outputs, 1, 1)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        s = self._get("state", x, (self.hidden, 1, 1))
        inp, slf, out = self.gates
        new = inp(_flat(x), []) + slf(s, []) + (s if self.shortcut else 0)
        self._keep(state=new)
        return out(new, [])


def _with_activation(block: CfgBlock, name: str) -> CfgBlock:
    """``block`` with ``activation=name`` (so make_activation validates and builds it)."""
    return CfgBlock(block.type, {**block.options, "activation": name}, block.path, block.line, block.key_lines,
                    block.index)


class Gru(RecurrentBlock):
    """``[gru]``: ``z, r = logistic(Wx + Us)``, ``h = logistic(W_h x + U_h (r * s))`` (Darknet's GRU uses logistic,
    not tanh, since ``USET`` is not defined in ``gru_layer.c``), ``s' = z * s + (1 - z) * h`` = output."""

    def __init__(self, inputs: int, outputs: int, bn: bool) -> None:
        super().__init__()
        lin = nn.Identity
        self.gates = nn.ModuleList([_fc(inputs, outputs, lin(), bn) for _ in range(3)]
                                   + [_fc(outputs, outputs, lin(), bn) for _ in range(3)])
        self.outputs, self.out_shape = outputs, (outputs, 1, 1)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        s = self._get("state", x, (self.outputs, 1, 1))
        iz, ir, ih, sz, sr, sh = self.gates
        x = _flat(x)
        z = torch.sigmoid(iz(x, []) + sz(s, []))
        r = torch.sigmoid(ir(x, []) + sr(s, []))
        h = torch.sigmoid(ih(x, []) + sh(r * s, []))
        new = z * s + (1 - z) * h
        self._keep(state=new)
        return new


class Lstm(RecurrentBlock):
    """``[lstm]``: gates ``f, i, o = logistic(W h + U x)``, ``g = tanh(W h + U x)``; ``c' = f c + i g``,
    ``h' = o tanh(c')`` = output."""

    def __init__(self, inputs: int, outputs: int, bn: bool) -> None:
        super().__init__()
        lin = nn.Identity
        self.gates = nn.ModuleList([_fc(outputs, outputs, lin(), bn) for _ in range(4)]
                                   + [_fc(inputs, outputs, lin(), bn) for _ in range(4)])
        self.outputs, self.out_shape = outputs, (outputs, 1, 1)

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        h = self._get("h", x, (self.outputs, 1, 1))
        c = self._get("c", x, (self.outputs, 1, 1))
        wf, wi, wg, wo, uf, ui, ug, uo = self.gates
        x = _flat(x)
        f = torch.sigmoid(wf(h, []) + uf(x, []))
        i = torch.sigmoid(wi(h, []) + ui(x, []))
        g = torch.tanh(wg(h, []) + ug(x, []))
        o = torch.sigmoid(wo(h, []) + uo(x, []))
        c = f * c + i * g
        h = o * torch.tanh(c)
        self._keep(h=h, c=c)
        return h


class Crnn(RecurrentBlock):
    """``[crnn]``: :class:`Rnn` with ``[convolutional]`` gates (same size, stride 1 keeps H, W).

    The state is ``[B, hidden, H, W]`` at the input's H, W (any size: a new size starts from zeros, as a new batch
    size does)."""

    def __init__(self, gates: list[ConvBlock], hidden: int, shortcut: bool, out_shape: Shape) -> None:
        super().__init__()
        self.gates = nn.ModuleList(gates)
        self.hidden, self.shortcut, self.out_shape = hidden, shortcut, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        s = self._get("state", x, (self.hidden, x.shape[2], x.shape[3]))
        inp, slf, out = self.gates
        new = inp(x, []) + slf(s, []) + (s if self.shortcut else 0)
        self._keep(state=new)
        return out(new, [])


def _positive(block: CfgBlock, *keys_values: tuple[str, int]) -> None:
    for key, value in keys_values:
        if value < 1:
            raise block.error(f"must be >= 1, got {value}", key)


@BLOCKS.register("rnn", keys=("output", "hidden", "activation", "batch_normalize", "logistic", "shortcut"))
def build_rnn(block: CfgBlock, ctx: BuildContext) -> Rnn:
    """Vanilla RNN over the flattened input (``logistic=1``/``2``: the self layer uses logistic/loggy)."""
    outputs, hidden = block.get_int("output", 1), block.get_int("hidden", 1)
    _positive(block, ("output", outputs), ("hidden", hidden))
    act = block.get_str("activation", "logistic")
    log_kind = block.get_int("logistic", 0)
    self_act = "loggy" if log_kind == 2 else "logistic" if log_kind == 1 else act
    return Rnn(math.prod(ctx.in_shape), hidden, outputs, act, self_act, bool(block.get_int("batch_normalize", 0)),
               bool(block.get_int("shortcut", 0)), block)


@BLOCKS.register("gru", keys=("output", "batch_normalize"))
def build_gru(block: CfgBlock, ctx: BuildContext) -> Gru:
    """GRU over the flattened input."""
    outputs = block.get_int("output", 1)
    _positive(block, ("output", outputs))
    return Gru(math.prod(ctx.in_shape), outputs, bool(block.get_int("batch_normalize", 0)))


@BLOCKS.register("lstm", keys=("output", "batch_normalize"))
def build_lstm(block: CfgBlock, ctx: BuildContext) -> Lstm:
    """LSTM over the flattened input."""
    outputs = block.get_int("output", 1)
    _positive(block, ("output", outputs))
    return Lstm(math.prod(ctx.in_shape), outputs, bool(block.get_int("batch_normalize", 0)))


@BLOCKS.register("crnn", keys=("output", "hidden", "size", "stride", "pad", "padding", "activation",
                               "batch_normalize", "shortcut", "groups", "dilation"))
def build_crnn(block: CfgBlock, ctx: BuildContext) -> Crnn:
    """Convolutional RNN (``size`` default 3, ``pad=1``: padding size/2)."""
    c, h, w = ctx.in_shape
    outputs, hidden = block.get_int("output", 1), block.get_int("hidden", 1)
    size, stride = block.get_int("size", 3), block.get_int("stride", 1)
    groups, dilation = block.get_int("groups", 1), block.get_int("dilation", 1)
    _positive(block, ("output", outputs), ("hidden", hidden), ("size", size))
    if stride != 1 or groups != 1 or dilation != 1:
        raise block.error("yolodet supports [crnn] with stride=1, groups=1, dilation=1 (Darknet runs its three "
                          "gates on the same H, W)", "stride")
    padding = size // 2 if block.get_int("pad", 0) else block.get_int("padding", 0)
    out_h, out_w = h + 2 * padding - size + 1, w + 2 * padding - size + 1
    if (out_h, out_w) != (h, w):
        raise block.error(f"size={size} with padding {padding} changes {h}x{w} to {out_h}x{out_w}; the state "
                          "must keep its size (use pad=1)", "size")
    bn = bool(block.get_int("batch_normalize", 0))

    def gate(cin: int, cout: int) -> ConvBlock:
        norm = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.01) if bn else None
        conv = nn.Conv2d(cin, cout, size, 1, padding, bias=not bn)
        return ConvBlock(conv, norm, make_activation(block, "logistic"), (cout, h, w))

    return Crnn([gate(c, hidden), gate(hidden, hidden), gate(hidden, outputs)], hidden,
                bool(block.get_int("shortcut", 0)), (outputs, h, w))
