"""AlexeyAB Darknet's ``[conv_lstm]`` and ``[history]`` at inference, one time step per forward, as Darknet's CPU
``network_predict`` computes them (``conv_lstm_layer.c``; Darknet's detectors parse the cfg with
``time_steps=1``).

``[conv_lstm]`` keeps its hidden state ``h`` and cell ``c`` (``[B, output, H, W]``) from one forward to the next,
like the other recurrent layers (:mod:`yolodet.modeling.blocks.recurrent`): zeros at first, again after
:meth:`~yolodet.modeling.blocks.recurrent.RecurrentBlock.reset_state` or when the batch size or H, W change.
Every gate is a full ``[convolutional]`` (same ``size``, ``pad``, ``groups``, ``dilation``, ``activation``,
``batch_normalize``), its activation applied before the gates are summed::

    f = logistic(wf(h) + uf(x) [+ vf(c)])      i = logistic(wi(h) + ui(x) [+ vi(c)])
    g = tanh(wg(h) + ug(x))                    c' = f * c + i * g
    o = logistic(wo(h) + uo(x) [+ vo(c')])     h' = o * tanh(c') = the output
    kept for the next step: h' and clamp(c', -state_constrain, state_constrain)   ([v*]: peephole=1)

Weights file order (Darknet's ``load_weights``): ``vf, vi, vo`` (``peephole=1`` only), ``wf, wi, wg, wo`` (on
``h``), ``uf, ui, ug, uo`` (on the input), each a full ``[convolutional]`` record.

Warning: Darknet's CPU and GPU forwards differ. The CPU forward (yolodet's reference, the oracle's build) always
uses tanh for ``g`` and ``h`` and ignores ``shortcut``; the GPU forward uses ``lstm_activation`` and adds a partial
shortcut with ``bottleneck=1``, which the CPU forward does not implement (it fails an assertion). yolodet therefore
accepts ``lstm_activation=tanh`` and ``bottleneck=0`` only; ``shortcut`` has no effect (as on both builds without
``bottleneck``). ``xnor=1`` is refused: Darknet never packs these gates' binary weights
(``calculate_binary_weights`` skips them), so its forward binarizes them with ``binarize_weights(weights, n,
nweights, ...)``, which reads and writes ``n`` times past the buffers (undefined behaviour, no result to match).
Darknet also replaces non-finite ``h``, ``c`` values by ``1/index`` (``fix_nan_and_inf_cpu``); yolodet leaves them.

``[history]``: Darknet's ``forward_history_layer`` with ``time_steps=1`` (inference) only copies the input into
the first ``C`` of its ``C * history_size`` channels; the others stay zero (its shift over past steps runs only
when training with ``time_steps > 1``). yolodet computes exactly that, per image.
Warning: with a batch of ``B > 1`` images Darknet copies the whole batch into the first image's output buffer;
yolodet gives every image its own ``[x, 0, ...]``, what Darknet gives for each image alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yolodet.cfg import CfgBlock
from yolodet.modeling.blocks.base import BuildContext, Shape
from yolodet.modeling.blocks.conv import BN_EPS, MAX_WEIGHTS, ConvBlock, make_activation
from yolodet.modeling.blocks.recurrent import RecurrentBlock
from yolodet.modeling.registry import BLOCKS

DEFAULT_STATE_CONSTRAIN = 32
"""Darknet's default ``state_constrain`` is ``time_steps * 32``, and its detectors parse the cfg with
``time_steps=1`` whatever ``[net]`` says."""


class ConvLstm(RecurrentBlock):
    """``[conv_lstm]``: a convolutional LSTM (see the module docstring). Input ``[B, C, H, W]`` -> ``h'``
    ``[B, output, H, W]``; the state has the input's H, W (``size``/``pad`` keep them)."""

    def __init__(self, gates: list[ConvBlock], outputs: int, peephole: bool, state_constrain: int,
                 out_shape: Shape) -> None:
        super().__init__()
        self.gates = nn.ModuleList(gates)  # Darknet's file order: [vf, vi, vo,] wf, wi, wg, wo, uf, ui, ug, uo
        self.outputs, self.peephole, self.state_constrain = outputs, peephole, state_constrain
        self.out_shape = out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        shape = (self.outputs, x.shape[2], x.shape[3])
        h, c = self._get("h", x, shape), self._get("c", x, shape)
        gates = list(self.gates)
        vf, vi, vo = gates[:3] if self.peephole else (None, None, None)
        wf, wi, wg, wo, uf, ui, ug, uo = gates[-8:]
        f = wf(h, []) + uf(x, [])  # summed in Darknet's order: w, then u, then v
        i = wi(h, []) + ui(x, [])
        if self.peephole:
            f, i = f + vf(c, []), i + vi(c, [])
        g = torch.tanh(wg(h, []) + ug(x, []))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * g
        o = wo(h, []) + uo(x, [])
        if self.peephole:
            o = o + vo(c, [])  # the peephole on o reads the new cell
        h = torch.sigmoid(o) * torch.tanh(c)
        if self.state_constrain:  # after h: clamps only the cell kept for the next step (fminf(a, fmaxf(-a, c)))
            c = c.clamp(-self.state_constrain, self.state_constrain)
        self._keep(h=h, c=c)
        return h


class History(RecurrentBlock):
    """``[history]`` at inference: ``[B, C, H, W]`` -> ``[B, C * history_size, H, W]``, the input followed by
    zeros (see the module docstring). No state; a :class:`RecurrentBlock` because Darknet runs it over time steps
    (so training refuses it like the other recurrent layers)."""

    def __init__(self, history_size: int, out_shape: Shape) -> None:
        super().__init__()
        self.gates = nn.ModuleList()
        self.history_size, self.out_shape = history_size, out_shape

    def forward(self, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, 0, (self.history_size - 1) * x.shape[1]))


def _zero_only(block: CfgBlock, key: str, why: str) -> None:
    if block.get_int(key, 0) != 0:
        raise block.error(f"yolodet supports only {key}=0 for [conv_lstm]: {why}", key)


@BLOCKS.register("conv_lstm", keys=("output", "size", "stride", "pad", "padding", "dilation", "groups",
                                    "activation", "batch_normalize", "peephole", "state_constrain", "shortcut",
                                    "lstm_activation", "bottleneck", "xnor"))
def build_conv_lstm(block: CfgBlock, ctx: BuildContext) -> ConvLstm:
    """Convolutional LSTM (``size`` default 3, ``activation`` default linear, ``pad=1``: padding size/2)."""
    c, h, w = ctx.in_shape
    outputs, size = block.get_int("output", 1), block.get_int("size", 3)
    stride, dilation, groups = block.get_int("stride", 1), block.get_int("dilation", 1), block.get_int("groups", 1)
    for key, value in (("output", outputs), ("size", size), ("dilation", dilation), ("groups", groups)):
        if value < 1:
            raise block.error(f"must be >= 1, got {value}", key)
    if stride != 1:
        raise block.error("yolodet supports [conv_lstm] with stride=1 only (Darknet runs the gates on the state "
                          "as if it had the input's H, W; another stride reads past it)", "stride")
    padding = size // 2 if block.get_int("pad", 0) else block.get_int("padding", 0)
    out_h, out_w = h + 2 * padding - size + 1, w + 2 * padding - size + 1  # Darknet's size, dilation ignored
    if (out_h, out_w) != (h, w):
        raise block.error(f"size={size} with padding {padding} changes {h}x{w} to {out_h}x{out_w}; the state "
                          "must keep its size (use pad=1 with an odd size)", "size")
    if c % groups or outputs % groups:
        raise block.error(f"groups={groups} must divide the input channels ({c}) and output ({outputs})", "groups")
    _zero_only(block, "bottleneck", "Darknet's CPU forward does not implement bottleneck=1 (it fails an "
               "assertion in conv_lstm_layer.c); only its GPU forward does")
    _zero_only(block, "xnor", "Darknet never packs the gates' binary weights, and its fallback "
               "binarize_weights(weights, n, nweights, ...) reads and writes past the buffers (undefined behaviour)")
    if block.get_str("lstm_activation", "tanh") != "tanh":
        raise block.error("yolodet supports only lstm_activation=tanh: Darknet's CPU forward always uses tanh, "
                          "its GPU forward uses lstm_activation, so the two disagree", "lstm_activation")
    peephole = bool(block.get_int("peephole", 0))
    bn = bool(block.get_int("batch_normalize", 0))
    count = ((4 + 3 * peephole) * outputs * outputs + 4 * outputs * c) * size * size // groups
    if count > MAX_WEIGHTS:
        raise block.error(f"this layer would have {count} weights, more than the limit of {MAX_WEIGHTS}", "output")

    def gate(cin: int) -> ConvBlock:
        norm = nn.BatchNorm2d(outputs, eps=BN_EPS, momentum=0.01) if bn else None
        conv = nn.Conv2d(cin, outputs, size, 1, padding * dilation, dilation, groups, bias=not bn)
        return ConvBlock(conv, norm, make_activation(block, "linear"), (outputs, h, w))

    gates = [gate(outputs) for _ in range(3 * peephole + 4)] + [gate(c) for _ in range(4)]
    return ConvLstm(gates, outputs, peephole, block.get_int("state_constrain", DEFAULT_STATE_CONSTRAIN),
                    (outputs, h, w))


@BLOCKS.register("history", keys=("history_size",))
def build_history(block: CfgBlock, ctx: BuildContext) -> History:
    """Darknet's ``[history]`` at inference: the input, then ``(history_size - 1) * C`` zero channels."""
    c, h, w = ctx.in_shape
    size = block.get_int("history_size", 4)
    if size < 1:
        raise block.error(f"must be >= 1, got {size}", "history_size")
    return History(size, (c * size, h, w))
