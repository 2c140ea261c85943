"""The ``[net]`` section, parsed once into a typed :class:`NetConfig` that every consumer reads.

Values are read as Darknet's ``parse_net_options`` reads them (``atoi``/``atof``, see
:func:`yolodet.cfg.parser.darknet_number`): ``letter_box=0.0`` is off for the detector, the evaluation and the
training transforms alike, and a bad value is a :class:`~yolodet.cfg.CfgError` naming ``file:line`` and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from yolodet.cfg.parser import CfgBlock, CfgError

__all__ = ["DARKNET_POLICIES", "LR_POLICIES", "NetConfig"]

LR_POLICIES = ("steps", "constant", "poly", "exp")
"""The ``policy=`` values yolodet trains with (training refuses the others; inference ignores the policy)."""

DARKNET_POLICIES = LR_POLICIES + ("step", "sig", "random", "sgdr")
"""Every ``policy=`` Darknet's ``get_policy`` knows (it silently falls back to ``constant`` for any other name)."""


@dataclass(frozen=True)
class NetConfig:
    """The ``[net]`` keys yolodet uses, with Darknet's meaning and (unless noted) Darknet's defaults.

    Attributes:
        width, height, channels: network input (default 416 x 416 x 3; Darknet has no default and needs them).
            A ``[net]`` with only ``inputs=N`` (Darknet's flat input) is read as ``channels=N``, 1 x 1.
        batch: images per optimiser step (Darknet's ``batch``).
        subdivisions: mini-batches per step; ``batch / subdivisions`` images go through the network at once.
        learning_rate, momentum: SGD settings.
        decay: weight decay of conv weights (default 0.0005, the value of every shipped cfg; Darknet's is 0.0001).
        max_batches: optimiser steps of the run (default 500200, Darknet's COCO recipe; Darknet's is 0).
        burn_in, power: warm-up steps and the exponent of the warm-up ramp and of ``policy=poly``.
        policy, steps, scales, gamma: the lr policy (default ``steps``, which without ``steps`` is constant).
        letter_box: keep the aspect ratio when resizing (AlexeyAB: off unless ``letter_box=1``).
        mosaic, flip, hue, saturation, exposure: training augmentation.
        options: every key as text (keys yolodet does not use are kept here).
        block: the parsed section, for messages (``None`` for a config made in Python).
    """

    width: int = 416
    height: int = 416
    channels: int = 3
    batch: int = 1
    subdivisions: int = 1
    learning_rate: float = 0.001
    momentum: float = 0.9
    decay: float = 0.0005
    max_batches: int = 500200
    burn_in: int = 0
    power: float = 4.0
    policy: str = "steps"
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    gamma: float = 1.0
    letter_box: bool = False
    mosaic: bool = False
    flip: bool = True
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    options: Mapping[str, str] = field(default_factory=dict)
    block: CfgBlock | None = None

    @classmethod
    def from_block(cls, block: CfgBlock) -> "NetConfig":
        """Read a ``[net]`` block.

        Raises:
            CfgError: a value that is not a number, a size or count below 1, an unknown ``policy``, or
                ``steps``/``scales`` lists that do not fit (``file:line`` and key named).
        """
        if block.type != "net":
            raise CfgError(f"expected the [net] section, got [{block.type}]", path=block.path, line=block.line)
        d = cls()
        ints = {k: block.get_int(k, getattr(d, k)) for k in
                ("width", "height", "channels", "batch", "subdivisions", "max_batches", "burn_in")}
        if block.has("inputs") and not any(block.has(k) for k in ("width", "height", "channels")):
            # Darknet's flat input (text RNNs: rnn.cfg, gru.cfg): net.inputs values, read here as inputs x 1 x 1
            ints.update(width=1, height=1, channels=block.get_int("inputs"))
        for key in ("width", "height", "channels", "batch", "subdivisions"):
            if ints[key] < 1:
                raise block.error(f"must be >= 1, got {ints[key]}", key)
        for key in ("burn_in", "max_batches"):  # max_batches=0 (Darknet's default): training refuses it, not a build
            if ints[key] < 0:
                raise block.error(f"must be >= 0, got {ints[key]}", key)
        floats = {k: block.get_float(k, getattr(d, k)) for k in
                  ("learning_rate", "momentum", "decay", "power", "gamma", "hue", "saturation", "exposure")}
        if floats["learning_rate"] < 0:
            raise block.error(f"must be >= 0, got {floats['learning_rate']}", "learning_rate")
        flags = {k: block.get_int(k, int(getattr(d, k))) != 0 for k in ("letter_box", "mosaic", "flip")}
        policy = block.get_str("policy", d.policy)
        if policy not in DARKNET_POLICIES:
            raise block.error(f"unknown lr policy {policy!r} (Darknet would silently use constant); known: "
                              f"{', '.join(DARKNET_POLICIES)}", "policy")
        steps = tuple(block.get_ints("steps", [])) if block.has("steps") else ()
        scales = list(block.get_floats("scales", [])) if block.has("scales") else []
        if list(steps) != sorted(steps):
            raise block.error(f"must be increasing, got {list(steps)}", "steps")
        scales = scales[:len(steps)] + [1.0] * (len(steps) - len(scales))  # Darknet: missing scales are 1
        return cls(**ints, **floats, **flags, policy=policy, steps=steps, scales=tuple(scales),
                   options=dict(block.options), block=block)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the network input."""
        return (self.channels, self.height, self.width)

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A :class:`CfgError` located at ``key`` in the cfg (or unlocated for a config made in Python)."""
        if self.block is not None:
            return self.block.error(message, key)
        return CfgError(message, section="net", key=key)
