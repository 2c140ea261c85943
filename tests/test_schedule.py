"""Darknet's learning-rate policies, hand-computed."""

from __future__ import annotations

import pytest

from conftest import REFERENCE_CFGS, need_shared
from yolodet.cfg import parse_cfg_text
from yolodet.cfg.net import NetConfig
from yolodet.modeling.model import Darknet
from yolodet.training.schedule import LrSchedule, get_lr


def test_burn_in_is_a_fourth_power_ramp_from_zero() -> None:
    s = LrSchedule(learning_rate=0.001, burn_in=1000, max_batches=5000, steps=(4000,), scales=(0.1,))
    assert get_lr(0, s) == 0.0
    assert get_lr(500, s) == pytest.approx(0.001 * 0.5 ** 4)
    assert get_lr(999, s) == pytest.approx(0.001 * 0.999 ** 4)
    assert get_lr(1000, s) == 0.001
    assert s(1000) == get_lr(1000, s)


def test_steps_multiply_from_each_boundary_on() -> None:
    s = LrSchedule(learning_rate=0.01, max_batches=100, steps=(10, 20, 20), scales=(0.5, 0.1, 2.0))
    assert [s(k) for k in (0, 9, 10, 19)] == [0.01, 0.01, 0.005, 0.005]
    assert s(20) == pytest.approx(0.01 * 0.5 * 0.1 * 2.0)


def test_other_policies() -> None:
    assert LrSchedule(learning_rate=0.1, policy="constant", max_batches=10)(7) == 0.1
    assert LrSchedule(learning_rate=0.1, policy="poly", power=2, max_batches=10)(5) == pytest.approx(0.1 * 0.25)
    assert LrSchedule(learning_rate=0.1, policy="exp", gamma=0.5, max_batches=10)(3) == pytest.approx(0.0125)


def _net(text: str) -> NetConfig:
    return NetConfig.from_block(parse_cfg_text("[net]\n" + text)[0])


def test_reads_net_options_as_darknet() -> None:
    s = LrSchedule.from_net(_net("learning_rate=0.001\nburn_in=1000\nmax_batches = 500200\npolicy=steps\n"
                                 "steps=400000,450000\nscales=.1,.1"))
    assert (s.learning_rate, s.burn_in, s.max_batches, s.steps, s.scales) == (0.001, 1000, 500200,
                                                                             (400000, 450000), (0.1, 0.1))
    assert LrSchedule.from_net(_net("steps=10,20\nscales=.1")).scales == (0.1, 1.0)  # missing: 1


@pytest.mark.parametrize("cfg", REFERENCE_CFGS, ids=[p.stem for p in REFERENCE_CFGS])
def test_every_reference_cfg_has_a_readable_schedule(cfg) -> None:
    schedule = LrSchedule.from_net(Darknet.from_cfg(need_shared(cfg)).net)
    assert schedule(schedule.max_batches - 1) >= 0


def test_stretching_to_a_short_run_scales_steps_and_caps_burn_in() -> None:
    s = LrSchedule(learning_rate=0.001, burn_in=1000, max_batches=6000, steps=(4800, 5400), scales=(0.1, 0.1))
    short = s.with_max_batches(600)
    assert (short.steps, short.burn_in, short.max_batches) == ((480, 540), 60, 600)


@pytest.mark.parametrize("bad", [dict(policy="sgdr"), dict(steps=(1, 2), scales=(0.1,)), dict(steps=(5, 2),
                                 scales=(1.0, 1.0)), dict(max_batches=0)])
def test_invalid_schedules_are_rejected(bad) -> None:
    with pytest.raises(ValueError):
        LrSchedule(**bad)
