"""Counter arithmetic: wraps and resets, and learning a coarse counter's update grid."""

import random

import pytest

from meter.counters import TIGHT_S, UpdateGrid, counter_delta


def test_counter_delta_plain_wrap_and_reset():
    assert counter_delta(10.0, 12.5, 100.0) == (2.5, None)
    assert counter_delta(99.0, 1.0, 100.0) == pytest.approx((2.0, "wrap"))
    assert counter_delta(5000.0, 3.0, None) == (3.0, "reset")  # no range: a driver reload
    assert counter_delta(7.0, 7.0, None) == (0.0, None)


def test_update_grid_learns_period_and_phase_from_tight_observations():
    rng = random.Random(1)
    true_period, phase = 0.1, 0.0371
    g = UpdateGrid()
    for k in range(1, 40):
        u = phase + k * true_period
        t = u + rng.uniform(0, TIGHT_S * 0.9)  # seen shortly after the update
        g.observe(t - TIGHT_S * 0.9, t, period_hint=0.093)  # the hint is a lower bound, as learned
    assert g.ready
    assert g.period == pytest.approx(true_period, abs=2e-5)
    for t in (4.0, 4.05, 7.456):  # within seconds of the last pinned point; the sampler re-pins every 30 s
        true_age = (t - phase) % true_period
        assert g.age(t) == pytest.approx(true_age, abs=2e-3)


def test_loose_observations_are_ignored():
    g = UpdateGrid()
    assert not g.observe(1.0, 1.0 + 2 * TIGHT_S, period_hint=0.1)
    assert not g.ready and g.period is None


def test_grid_needs_a_baseline_before_it_is_trusted():
    g = UpdateGrid()
    for k in range(4):
        g.observe(k * 0.1 + 0.001, k * 0.1 + 0.002, period_hint=0.1)
    assert not g.ready  # 4 points over 0.3 s: less than 5 periods of baseline
    g.observe(0.6 + 0.001, 0.6 + 0.002, period_hint=0.1)
    assert g.ready
