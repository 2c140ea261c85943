"""The Darknet model: cfg blocks -> registry builders -> one ``nn.Module`` that runs them in order.

``forward`` returns ``list[Tensor]`` in every mode: the raw output of each ``[yolo]`` head
(``[B, A*(5+C), H_i, W_i]``, before any sigmoid), or, for a cfg without heads (a classifier), the final output.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

import yolodet.modeling.blocks  # noqa: F401  (registers the built-in block types)
from yolodet.modeling.blocks.base import Block, BuildContext, HeadBlock
from yolodet.modeling.blocks.conv import apply_bin_output
from yolodet.modeling.blocks.yolo import HeadSpec
from yolodet.cfg import CfgBlock, CfgError, parse_cfg_text
from yolodet.cfg.darknet_keys import (COMMON, DARKNET_KEYS, GPU_ONLY, ZERO_ONLY, darknet_reads, did_you_mean,
                                      training_only)
from yolodet.cfg.net import NetConfig
from yolodet.modeling.registry import BLOCKS

log = logging.getLogger(__name__)

MAX_OUTPUT_ELEMENTS = 1 << 28
"""Most values one layer's output may hold for one image at the cfg's network size (C*H*W): 1 GiB of float32.
Real cfgs stay far below (yolov4 at 608: 11.8 M in its first layer, 32 x 608 x 608; the limit lets it run up
to about 2900 x 2900). A larger output is a typo (``[upsample] stride=1000``, a route repeating a layer thousands
of times, a padding of 1e9) that must be a :class:`CfgError` at build time, not a ``RuntimeError: Storage size
calculation overflowed``, an out-of-memory kill or a forward pass that never ends."""


def _validate_keys(block: CfgBlock, unknown_keys: str = "error") -> None:
    """Every key must be implemented by the block, or be one Darknet reads only for training (no effect on
    inference, see :mod:`yolodet.cfg.darknet_keys`); anything else is an error saying which of the two it is."""
    if block.type not in BLOCKS:
        if block.type in DARKNET_KEYS:
            raise block.error(f"Darknet's [{block.type}] layer is not implemented by yolodet; implemented: "
                              f"{', '.join(BLOCKS.names())}")
        raise block.error(f"unknown section type [{block.type}]; known: {', '.join(BLOCKS.names())}")
    implemented = BLOCKS.get(block.type).keys
    accepted = implemented | training_only(block.type)
    for key, value in block.options.items():
        if key in accepted:
            if key in ZERO_ONLY and block.get_int(key) != 0 and key not in implemented:
                raise block.error(f"{key}={value} makes Darknet skip this layer's bytes when it reads .weights "
                                  "(the next layer reads them); yolodet supports only 0", key)
            gpu = GPU_ONLY.get(block.type, {}).get(key)
            if gpu and block.get_float(key) != 0:
                log.warning("%s:%d: [%s] %s=%s: ignored, as Darknet's CPU forward does; %s", block.path,
                            block.key_lines.get(key, block.line), block.type, key, value, gpu)
            continue
        if key in darknet_reads(block.type):
            raise block.error(f"Darknet reads this key for [{block.type}] and it changes what the layer computes, "
                              "but yolodet does not implement it", key)
        known = accepted | darknet_reads(block.type)
        own = sorted(known - COMMON)
        if unknown_keys == "ignore":  # Darknet's own behaviour: "Unused field", then go on
            log.warning("%s:%d: [%s] %s: no Darknet layer reads this key; ignored as Darknet does%s", block.path,
                        block.key_lines.get(key, block.line), block.type, key, did_you_mean(key, known))
            continue
        raise block.error(f"unknown key for [{block.type}]{did_you_mean(key, known)}; known: "
                          f"{', '.join(own) or '(none)'} (and for every layer: {', '.join(sorted(COMMON))})", key)


class Darknet(nn.Module):
    """A network described by a Darknet cfg.

    Args:
        blocks: parsed cfg (``[net]`` first), see :func:`yolodet.cfg.parse_cfg_text`.
        cfg_text: the cfg source, kept so checkpoints can embed it.
        unknown_keys: ``"error"`` (default): a key no Darknet parser reads is a :class:`CfgError` with a
            did-you-mean; ``"ignore"``: logged and ignored, as Darknet itself does ("Unused field"), for cfgs such
            as AlexeyAB's ``yolov4-sam-mish-csp-reorg-bfm.cfg`` (``beta1=``).

    Attributes:
        net: the ``[net]`` section, typed (:class:`yolodet.cfg.net.NetConfig`): input size, training keys.
        layers: one :class:`Block` per cfg section after ``[net]`` (index = Darknet layer index).
        heads: one :class:`HeadSpec` per ``[yolo]`` section, in cfg order (same order as ``forward``'s list).
    """

    def __init__(self, blocks: list[CfgBlock], *, cfg_text: str = "", unknown_keys: str = "error") -> None:
        super().__init__()
        if not blocks or blocks[0].type != "net":
            raise CfgError("the first section must be [net]")
        self.net = NetConfig.from_block(blocks[0])
        self.cfg_text = cfg_text
        self.cfg_path = blocks[0].path
        if unknown_keys not in ("error", "ignore"):
            raise ValueError(f"unknown_keys must be 'error' or 'ignore', got {unknown_keys!r}")
        for block in blocks[1:]:  # validate every section before building any of them
            _validate_keys(block, unknown_keys)
        if len(blocks) < 2:
            raise blocks[0].error("the cfg has no layers after [net]")
        ctx = BuildContext(self.net)
        for block in blocks[1:]:
            layer = _build(block, ctx)
            ctx.layers.append(layer)
            ctx.shapes.append(tuple(layer.out_shape))
        apply_bin_output(ctx.layers)
        self.layers = nn.ModuleList(ctx.layers)
        self.heads: list[HeadSpec] = [m.spec for m in self.layers if isinstance(m, HeadBlock)]
        self._outputs = [h.layer for h in self.heads] or [len(self.layers) - 1]
        needed = {s for m in self.layers for s in m.sources} | set(self._outputs)
        self._keep = [i in needed for i in range(len(self.layers))]

    @classmethod
    def from_cfg(cls, path: str | os.PathLike, *, unknown_keys: str = "error") -> "Darknet":
        """Parse and build a cfg file (``unknown_keys``: see the class)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise CfgError(f"cannot read cfg: {exc.strerror or exc}", path=str(p)) from None
        return cls(parse_cfg_text(text, str(p)), cfg_text=text, unknown_keys=unknown_keys)

    @classmethod
    def from_cfg_text(cls, text: str, path: str = "<cfg>", *, unknown_keys: str = "error") -> "Darknet":
        return cls(parse_cfg_text(text, path), cfg_text=text, unknown_keys=unknown_keys)

    @property
    def num_classes(self) -> int:
        return self.heads[0].classes if self.heads else self.layers[-1].out_shape[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, C, H, W] float in [0, 1] (RGB) -> raw head outputs (see module docstring)."""
        saved: list[torch.Tensor | None] = []
        for layer, keep in zip(self.layers, self._keep):
            x = layer(x, [saved[s] for s in layer.sources])
            saved.append(x if keep else None)
        return [saved[i] for i in self._outputs]

    def reset_state(self) -> None:
        """Zero the hidden state of every recurrent layer (``[rnn]``, ``[gru]``, ``[lstm]``, ``[crnn]``,
        ``[conv_lstm]``), which otherwise carries over from one forward to the next as in Darknet (see
        ``yolodet.modeling.blocks.recurrent``)."""
        for layer in self.layers:
            if hasattr(layer, "reset_state"):
                layer.reset_state()

    def layer_outputs(self, x: torch.Tensor, layers: "list[int] | None" = None) -> dict[int, torch.Tensor]:
        """x: [B, C, H, W] -> {Darknet layer index: that layer's output} for ``layers`` (default: all of them).

        For inspection and oracle tests (Darknet's ``l.output`` of any layer); ``forward`` keeps only what it needs.
        """
        wanted = set(range(len(self.layers)) if layers is None else
                     (i + len(self.layers) if i < 0 else i for i in layers))
        saved: list[torch.Tensor] = []
        for layer in self.layers[:max(wanted) + 1]:
            x = layer(x, [saved[s] for s in layer.sources])
            saved.append(x)
        return {i: saved[i] for i in sorted(wanted)}


def _build(block: CfgBlock, ctx: BuildContext) -> Block:
    entry = BLOCKS.get(block.type)
    try:
        layer = entry.builder(block, ctx)
    except CfgError:
        raise
    except (ValueError, RuntimeError, IndexError, ZeroDivisionError, OverflowError) as exc:
        raise block.error(f"cannot build this layer with input {ctx.in_shape}: {exc}") from exc
    if any(d < 1 for d in layer.out_shape):
        raise block.error(f"output shape {layer.out_shape} is empty (input {ctx.in_shape})")
    for s in layer.sources:  # Darknet gives an index reader the host dims of an antialiased layer (see antialias.py)
        host = getattr(ctx.layers[s], "host_shape", None)
        if host is not None and host != ctx.layers[s].out_shape:
            key = next((k for k in ("layers", "from") if block.has(k)), None)
            raise block.error(f"layer {s} is antialiased with a stride: Darknet would read it as {host} (its "
                              f"stride-1 dims) holding the {ctx.layers[s].out_shape} blurred output; not supported",
                              key)
    elements = math.prod(layer.out_shape)
    if elements > MAX_OUTPUT_ELEMENTS:
        c, h, w = layer.out_shape
        raise block.error(f"this layer's output ({c} x {h} x {w}, input {ctx.in_shape}) would need {elements} "
                          f"elements per image, more than the limit of {MAX_OUTPUT_ELEMENTS}")
    return layer
