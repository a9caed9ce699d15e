"""Counters that misbehave, deterministically: coarse NVML counters from the first span, with
constant and stepped power; glitches, garbage, resets and frozen counters. The odometer is driven
as the sampler thread drives it (1 ms probe reads, 20 ms power polls, 100 ms ticks) on a fake
clock, so every figure is exact and repeatable."""

import os
import random
import statistics

import pytest

from meter.energy import make_plan, span_energy
from meter.odometer import Odometer
from meter.sensors.nvml import open_nvml
from meter.sensors.rapl import open_rapl
from meter.testing import FakeClock, FakeGPU, FakeNVML, FakeSensor, write_rapl_tree


def square(lo, hi, period, phase=0.0):
    return lambda t: hi if ((t + phase) % period) < period / 2 else lo


class Rig:
    """An odometer over fake GPUs, stepped like the sampler thread: probe reads every 1 ms for the
    first PROBE_S, then instantaneous power every 20 ms and a full read every 100 ms."""

    def __init__(self, *gpus, probe_s=1.5, edges=False):
        self.edges = edges
        self.clock = FakeClock()
        self.nv = FakeNVML(list(gpus), clock=self.clock)
        sensor, _, _ = open_nvml(gpus="all", binding=self.nv, environ={})
        self.odo = Odometer([sensor], self.clock)
        self.plan = make_plan(self.odo.channels)
        self.t0 = self.clock.monotonic()
        self.probe_until = self.t0 + probe_s
        self.next_tick = self.t0 + 0.1
        self.odo.read()

    def run(self, seconds):
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end - 1e-9:
            now = self.clock.monotonic()
            step = 0.001 if now < self.probe_until else 0.02
            self.nv.advance(min(step, end - now))
            now = self.clock.monotonic()
            if now >= self.next_tick:
                self.odo.read()
                self.next_tick += 0.1
            elif now < self.probe_until:
                self.odo.read_counters()
            else:
                self.odo.read_fast()

    def edge(self):
        """A span edge as a span reads it (counters only; the rest resolved from later polls),
        or a full read when ``self.edges`` is False."""
        if not self.edges:
            return self.odo.read()
        with self.odo.lock:
            return self.odo.read_edge_locked()

    def window(self, seconds):
        """(measured J per GPU, true J per GPU, warnings) of a span of ``seconds``."""
        truth0 = [self.nv.true_energy_j(i) for i in range(len(self.nv.gpus))]
        s = self.edge()
        self.run(seconds)
        e = self.edge()
        truth = [self.nv.true_energy_j(i) - truth0[i] for i in range(len(self.nv.gpus))]
        if self.edges:
            self.run(0.02)  # the sampler's next poll, which the edge is resolved against
        f = span_energy(s, e, self.plan, self.odo.faults)
        return [d.energy_j for d in f.devices], truth, f.warnings


def two_coarse_gpus():
    return (FakeGPU(uuid="GPU-a", power_w=square(100, 300, 0.7), update_period_s=0.1),
            FakeGPU(uuid="GPU-b", power_w=square(80, 250, 0.7, 0.23), update_period_s=0.1))


@pytest.mark.parametrize("edges", [False, True], ids=["full-reads", "span-edges"])
def test_spans_in_the_first_second_are_right_never_a_whole_update(edges):
    rng = random.Random(7)
    r = Rig(*two_coarse_gpus(), edges=edges)
    errors = []
    while r.clock.monotonic() - r.t0 < 1.0:
        got, truth, _ = r.window(rng.uniform(0.03, 0.08))
        errors += [abs(g - t) / t for g, t in zip(got, truth, strict=True)]
        r.run(rng.uniform(0.0, 0.03))
    assert len(errors) >= 20
    # Issue 11's target on the emulated library: median <= 5 %, worst <= 50 % (was 25-58 % and 180-350 %).
    assert statistics.median(errors) <= 0.05
    assert max(errors) <= 0.5


@pytest.mark.parametrize("edges", [False, True], ids=["full-reads", "span-edges"])
def test_after_warm_up_constant_power_is_exact_and_steps_are_close(edges):
    r = Rig(FakeGPU(uuid="GPU-c", power_w=200.0, update_period_s=0.1), FakeGPU(uuid="GPU-s", power_w=square(100, 300, 0.7),
                                                                                update_period_s=0.1), edges=edges)
    r.run(3.0)  # the probe learns the period and grid
    assert r.odo.period_s(0) == pytest.approx(0.1, abs=0.011)
    for w in (0.02, 0.05, 0.3, 0.5, 2.0):
        got, truth, warnings = r.window(w)
        assert got[0] == pytest.approx(truth[0], rel=0.01)  # constant power: exact but for mJ truncation
        assert got[1] == pytest.approx(truth[1], rel=0.06 if w < 0.1 else 0.03)


def test_a_counter_that_glitches_backwards_is_not_a_reset(clock):
    s = FakeSensor.counter(max_power_w=700.0)
    odo = Odometer([s], clock)
    plan = make_plan(odo.channels)
    s.values["gpu:0"] = 5000.0
    a = odo.read()
    for v in (5100.0, 5099.999, 5200.0):  # 1 mJ back, then on
        clock.advance(1.0)
        s.values["gpu:0"] = v
        odo.read()
    f = span_energy(a, odo.read(), plan, odo.faults)
    assert f.energy_j == pytest.approx(200.0)  # was 5,300 J when the glitch counted as a reset
    assert any("backwards a little" in w for w in f.warnings)


def test_a_real_reset_still_counts_the_energy_since(clock):
    s = FakeSensor.counter(max_power_w=700.0)
    odo = Odometer([s], clock)
    s.values["gpu:0"] = 5000.0
    a = odo.read()
    clock.advance(1.0)
    s.values["gpu:0"] = 5100.0
    odo.read()
    clock.advance(1.0)
    s.values["gpu:0"] = 80.0  # driver reload: restarts from 0, 80 J since
    f = span_energy(a, odo.read(), make_plan(odo.channels), odo.faults)
    assert f.energy_j == pytest.approx(180.0)
    assert any("restarted" in w for w in f.warnings)


def test_an_implausible_jump_counts_zero_and_a_confirmed_one_rebases(clock):
    s = FakeSensor.counter(max_power_w=700.0)
    odo = Odometer([s], clock)
    s.values["gpu:0"] = 1000.0
    a = odo.read()
    for v in (1100.0, 900_000.0, 1200.0, 1300.0):  # one garbage reading, then normal
        clock.advance(1.0)
        s.values["gpu:0"] = v
        odo.read()
    f = span_energy(a, odo.read(), make_plan(odo.channels), odo.faults)
    assert f.energy_j == pytest.approx(300.0)
    assert any("jumped" in w for w in f.warnings)


@pytest.mark.parametrize("garbage", ["-5", "999999999999999", "not a number"])
def test_garbage_rapl_content_is_a_fault_not_a_wrap(tmp_path, clock, garbage):
    zone = {"name": "package-0", "max_energy_range_uj": 262143328850, "energy_uj": 100_000_000}
    tree = write_rapl_tree(str(tmp_path), {"intel-rapl:0": zone})
    sensor, _, _ = open_rapl(str(tmp_path))
    odo = Odometer([sensor], clock)
    a = odo.read()
    clock.advance(1.0)
    tree.add("intel-rapl:0", 50.0)
    odo.read()
    with open(os.path.join(tree.path("intel-rapl:0"), "energy_uj"), "r+") as f:
        f.write(garbage.ljust(20) + "\n")
    clock.advance(1.0)
    odo.read()
    tree.set_uj("intel-rapl:0", 100_000_000 + 100_000_000)  # back to sane: 100 J after the start
    clock.advance(1.0)
    f = span_energy(a, odo.read(), make_plan(odo.channels), odo.faults)
    assert f.energy_j == pytest.approx(100.0)  # was +262,000 J when garbage counted as a wrap
    assert f.warnings


def test_a_frozen_counter_makes_no_energy_up():
    g = FakeGPU(uuid="GPU-f", power_w=300.0, update_period_s=0.1)
    r = Rig(g)
    r.run(3.0)
    g.frozen = True
    got, truth, warnings = r.window(60.0)
    assert truth[0] == pytest.approx(18000.0)
    assert got[0] < 50.0  # what the counter moved (up to one update), not 6,000 J from edge power
    assert any("stopped moving" in w for w in warnings)
    assert any("did not move" in w for w in warnings)


def test_a_rapl_zone_that_vanishes_is_a_fault(tmp_path, clock):
    tree = write_rapl_tree(str(tmp_path), {"intel-rapl:0": {"name": "package-0"}})
    sensor, _, _ = open_rapl(str(tmp_path))
    odo = Odometer([sensor], clock)
    a = odo.read()
    tree.add("intel-rapl:0", 10.0)
    clock.advance(1.0)
    odo.read()
    path = os.path.join(tree.path("intel-rapl:0"), "energy_uj")
    os.unlink(path)  # the zone goes away; a new file appears where it was
    with open(path, "w") as f:
        f.write("5".ljust(20) + "\n")
    with odo.lock:
        odo.check_sensors()
    clock.advance(1.0)
    f = span_energy(a, odo.read(), make_plan(odo.channels), odo.faults)
    assert f.energy_j == pytest.approx(10.0)
    assert any("vanished or was replaced" in w for w in f.warnings)


def test_a_failed_instant_power_read_is_no_value_not_zero_watts():
    g = FakeGPU(uuid="GPU-i", power_w=250.0, update_period_s=0.1)
    r = Rig(g)
    sensor = r.odo._sensors[0]
    assert sensor.read_power() == (250.0,)
    g.instant = False  # the field read now fails (nvmlReturn != 0)
    assert sensor.read_power() == (None,)
    got, truth, warnings = r.window(0.05)
    # Not 0 W integrated into the correction: the last power that was read, and it says so.
    assert got[0] == pytest.approx(truth[0], rel=0.01)
    assert any("instantaneous power" in w or "last power read" in w for w in warnings)


def test_an_edge_is_resolved_by_its_reader_when_no_poll_followed_it():
    # Span edges read only the counters; the polled power around them is resolved later. A result
    # read at once (before the sampler's next poll) polls instantaneous power itself.
    r = Rig(FakeGPU(uuid="GPU-r", power_w=150.0, update_period_s=0.1), edges=True)
    r.run(0.5)  # in the probe: the period is not learned, short spans take the polled power
    with r.odo.lock:
        s = r.odo.read_edge_locked()
    r.nv.advance(0.04)
    with r.odo.lock:
        e = r.odo.read_edge_locked()
    assert not s.resolved and not e.resolved
    f = span_energy(s, e, r.plan, r.odo.faults)
    assert s.resolved and e.resolved and not r.odo._pending
    assert f.devices[0].energy_j == pytest.approx(150.0 * 0.04, rel=1e-6)
    assert f.devices[0].corrected


def test_a_continuous_counter_is_learned_as_such_and_stops_being_polled():
    # A counter that moves at every 1 ms read is not coarse: once learned, its spans take the
    # counter's own delta (exact), not the polled power (main presumed it coarse for ever).
    r = Rig(FakeGPU(uuid="GPU-k", power_w=square(100, 300, 0.7)))  # update_period_s=0: continuous
    r.run(1.0)
    assert 0.0 < r.odo.period_s(0) <= 0.003
    assert not r.odo.has_fast  # instantaneous power is no longer polled
    got, truth, warnings = r.window(0.05)
    assert got[0] == pytest.approx(truth[0], rel=1e-3)
    assert not any("instantaneous power" in w for w in warnings)


def test_a_late_probe_window_costs_a_few_reads_not_a_dense_period():
    """The probe sleeps through each period's flat middle. On a busy machine its thread may wake
    after the update it waited for: the change is then seen late. The next window is placed
    from the last update pinned tightly (one period per update since), so one late wake costs a
    few reads; before, it meant 2 ms reads for a whole period (about 50)."""
    clock = FakeClock()
    nv = FakeNVML([FakeGPU(uuid="GPU-a", power_w=square(100, 300, 0.7), update_period_s=0.1)], clock=clock)
    sensor, _, _ = open_nvml(gpus="all", binding=nv, environ={})
    odo = Odometer([sensor], clock)
    odo.read()
    t0 = clock.monotonic()
    per_period: dict[int, int] = {}
    late_at = []
    while clock.monotonic() - t0 < 2.5 and odo.learning:
        now = clock.monotonic()
        wake = odo.probe_wake(now, 0.004)  # as the sampler's probe (PROBE_LEAD_S, PROBE_INTERVAL_S)
        step = 0.002 if wake is None or wake <= now else max(0.002, wake - now)
        if step > 0.002 and now - t0 > (0.5, 0.6, 1.0, 9.9)[len(late_at)]:
            step += 0.012  # the thread oversleeps: its window opens 8 ms after the update
            late_at.append(now + step)
        nv.advance(step)
        odo.read_counters()
        k = int((clock.monotonic() - t0) / 0.1)
        per_period[k] = per_period.get(k, 0) + 1
    assert len(late_at) == 3  # two windows in a row, then one on its own
    after_warm = [n for k, n in per_period.items() if 3 <= k <= 12]
    # A window (lead 4 ms, 2 ms reads) is about 3 reads; the periods with a late wake a few more.
    assert max(after_warm) <= 8, per_period
    assert sum(after_warm) <= 10 * 4 + 10, per_period
    # And the late changes do not spoil what the probe learns, as fast as the sampler's 1.5 s.
    assert not odo.learning and clock.monotonic() - t0 < 1.6 and abs(odo.period_s(0) - 0.1) < 0.003


def test_a_span_that_closed_before_the_first_power_poll_is_not_zero():
    # On a loaded machine the sampler thread can start late: the first span (5 ms, right after the
    # Meter starts) opens and closes before any instantaneous-power poll, and the poll its result
    # makes comes after it. It takes that first poll's power over its length, not 0 J (fresh-clone
    # CI under load: test_sigkill_during_the_counter_probe_keeps_what_was_measured saw 0 J).
    clock = FakeClock()
    nv = FakeNVML([FakeGPU(uuid="GPU-f", power_w=100.0, update_period_s=0.1)], clock=clock)
    sensor, _, _ = open_nvml(gpus="all", binding=nv, environ={})
    odo = Odometer([sensor], clock)
    plan = make_plan(odo.channels)
    with odo.lock:
        s = odo.read_edge_locked()
    nv.advance(0.005)
    with odo.lock:
        e = odo.read_edge_locked()
    nv.advance(0.03)  # the sampler's first poll comes 30 ms after the span
    odo.read_fast()
    f = span_energy(s, e, plan, odo.faults)
    assert f.devices[0].energy_j == pytest.approx(100.0 * 0.005, rel=1e-6)
