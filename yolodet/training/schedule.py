"""Darknet's learning-rate schedule (``get_current_rate`` in ``network.c``) as a pure function of the step.

A *step* is one optimiser update (Darknet's ``get_current_batch``: ``seen / (batch * subdivisions)``), so the
schedule does not depend on how a batch is split into mini-batches. ``lr(0) == 0`` during a burn-in, as in
Darknet (the first update does nothing).

Policies (``policy=`` in ``[net]``):

* ``steps``: ``learning_rate`` times the product of every ``scales[i]`` whose ``steps[i] <= step``.
* ``constant``: ``learning_rate``.
* ``poly``: ``learning_rate * (1 - step / max_batches) ** power``.
* ``exp``: ``learning_rate * gamma ** step``.

Every policy is preceded by ``burn_in`` steps of ``learning_rate * (step / burn_in) ** power`` (power 4 unless
``power=`` says otherwise; Darknet uses the same key for both).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from yolodet.cfg.net import LR_POLICIES, NetConfig
from yolodet.errors import SettingError

POLICIES = LR_POLICIES


@dataclass(frozen=True)
class LrSchedule:
    """Learning rate per optimiser step (call it: ``schedule(step) -> lr``).

    Attributes:
        learning_rate: base rate (``learning_rate=``).
        max_batches: total number of optimiser steps of the run (``max_batches=``).
        burn_in: warm-up steps (``burn_in=``, 0 = none).
        power: exponent of the burn-in ramp and of ``poly`` (``power=``, Darknet default 4).
        policy: one of :data:`POLICIES`.
        steps, scales: for ``policy=steps``: at step ``steps[i]`` the rate is multiplied by ``scales[i]``.
        gamma: for ``policy=exp``.
    """

    learning_rate: float = 0.001
    max_batches: int = 500200
    burn_in: int = 0
    power: float = 4.0
    policy: str = "steps"
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SettingError(f"unknown lr policy {self.policy!r}; supported: {', '.join(POLICIES)}")
        if len(self.steps) != len(self.scales):
            raise SettingError(f"steps has {len(self.steps)} entries but scales has {len(self.scales)}")
        if list(self.steps) != sorted(self.steps):
            raise SettingError(f"steps must be increasing, got {list(self.steps)}")
        if self.learning_rate < 0 or self.max_batches < 1 or self.burn_in < 0:
            raise SettingError(f"need learning_rate >= 0, max_batches >= 1, burn_in >= 0; got {self.learning_rate}, "
                             f"{self.max_batches}, {self.burn_in}")

    def __call__(self, step: int) -> float:
        return get_lr(step, self)

    @classmethod
    def from_net(cls, net: NetConfig) -> "LrSchedule":
        """The schedule of a typed ``[net]`` section."""
        return cls(learning_rate=net.learning_rate, max_batches=net.max_batches, burn_in=net.burn_in,
                   power=net.power, policy=net.policy, steps=net.steps, scales=net.scales, gamma=net.gamma)

    def with_max_batches(self, max_batches: int) -> "LrSchedule":
        """The same schedule stretched to another run length: ``steps`` scale with ``max_batches``; ``burn_in``
        is kept but capped at a tenth of the run (a 1000-step warm-up would eat a short fine-tuning run)."""
        ratio = max_batches / self.max_batches
        steps = tuple(max(1, round(s * ratio)) for s in self.steps)
        return replace(self, max_batches=max_batches, steps=steps, burn_in=min(self.burn_in, max_batches // 10))


def get_lr(step: int, schedule: LrSchedule) -> float:
    """Darknet's ``get_current_rate`` at optimiser step ``step`` (0-based: updates done before this one)."""
    s = schedule
    if step < s.burn_in:
        return s.learning_rate * (step / s.burn_in) ** s.power
    if s.policy == "constant":
        return s.learning_rate
    if s.policy == "steps":
        rate = s.learning_rate
        for boundary, scale in zip(s.steps, s.scales):
            if boundary > step:
                break
            rate *= scale
        return rate
    if s.policy == "poly":
        return s.learning_rate * max(0.0, 1.0 - step / s.max_batches) ** s.power
    return s.learning_rate * s.gamma ** step  # exp
