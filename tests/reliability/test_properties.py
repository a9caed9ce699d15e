"""Property tests (hypothesis) of the arithmetic every figure rests on, checked against exact
integrals of random power traces: counter wrap and reset correction, through real powercap
files and through a counter that restarts; polled-power integration; and the span tree's
invariants (a child never exceeds its parent, children together never exceed it)."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meter
from meter.counters import RESET_FRACTION, counter_delta
from meter.testing import FakeClock, FakeGPU, FakeNVML, FakeSensor, write_rapl_tree
from meter.units import UJ_PER_J

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- counter arithmetic ------------------------------------------------------------------------

@SETTINGS
@given(prev=st.floats(0, 1e6), delta=st.floats(0, 1e4), wrap=st.one_of(st.none(), st.floats(1e4 + 1, 1e7)))
def test_a_plausible_forward_step_or_wrap_is_counted_exactly(prev, delta, wrap):
    if wrap is not None:
        prev = prev % wrap
        value = (prev + delta) % wrap
    else:
        value = prev + delta
    got, event = counter_delta(prev, value, wrap, bound_j=1e4 * 1.01)
    assert got == pytest.approx(delta, abs=1e-6 * max(1.0, wrap or 1.0, prev))
    assert event in (None, "wrap")


@SETTINGS
@given(prev=st.floats(10.0, 1e6), back=st.floats(1e-6, 0.49))
def test_a_small_step_back_is_a_glitch_worth_0_joules(prev, back):
    # Less than half way back (no wrap range): a glitch, never "the whole value again".
    got, event = counter_delta(prev, prev * (1 - back), None, bound_j=1e9)
    assert (got, event) == (0.0, "backwards")


@SETTINGS
@given(prev=st.floats(100.0, 1e6), since_restart=st.floats(0, 1.0))
def test_a_restart_counts_the_energy_since_the_restart(prev, since_restart):
    value = since_restart * RESET_FRACTION * prev * 0.99
    got, event = counter_delta(prev, value, None, bound_j=max(value, 1.0) * 2)
    assert event == "reset" and got == pytest.approx(value)


@SETTINGS
@given(prev=st.floats(0, 1e6), value=st.floats(-1e9, 1e12, allow_nan=False), wrap=st.one_of(st.none(), st.floats(1.0, 1e7)),
       bound=st.floats(0, 1e6))
def test_no_reading_ever_gives_more_than_the_plausible_bound_or_less_than_zero(prev, value, wrap, bound):
    got, _ = counter_delta(prev, value, wrap, bound)
    assert 0.0 <= got
    assert got <= max(bound, value if value <= bound else 0.0) + 1e-9


# -- through real powercap files: wraps inside spans -----------------------------------------------

steps = st.lists(st.tuples(st.floats(0.0, 8.0), st.floats(0.05, 0.2)), min_size=1, max_size=25)


@SETTINGS
@given(trace=steps, start_uj=st.integers(0, 9_999_999))
def test_rapl_span_energy_is_the_exact_sum_of_increments_across_wraps(tmp_path_factory, trace, start_uj):
    """A 10 J counter range (wraps several times a span) under a random trace: the span's CPU
    energy is the sum of what was added, to the counter's resolution (1 µJ per write)."""
    root = str(tmp_path_factory.mktemp("pc"))
    zone = {"name": "package-0", "max_energy_range_uj": 10_000_000, "energy_uj": start_uj,
            "constraint_0_max_power_uw": 100_000_000}
    tree = write_rapl_tree(root, {"intel-rapl:0": zone})
    clock = FakeClock()
    with meter.Meter(write=False, rapl_root=root, gpus="none", clock=clock, interval_s=3600) as m:
        with m.track("work") as span:
            for joules, dt in trace:
                tree.add("intel-rapl:0", joules)
                clock.advance(dt)
                m.flush()
    truth = sum(round(j * UJ_PER_J) for j, _ in trace) / UJ_PER_J
    got = span.energy_by_component["cpu"].energy_j
    assert got == pytest.approx(truth, abs=1e-6 * len(trace) + 1e-9)


@SETTINGS
@given(trace=st.lists(st.tuples(st.floats(0.0, 50.0), st.booleans()), min_size=1, max_size=30))
def test_counter_restarts_lose_nothing_but_the_restart_step(trace):
    """A counter without a range that restarts at 0 (a driver reload) now and then: each
    restart counts the energy since the restart; the total is exact."""
    clock = FakeClock()
    s = FakeSensor.counter("gpu:0", "gpu", max_power_w=1000.0)
    s.values["gpu:0"] = 5000.0
    truth = 0.0
    with meter.Meter(write=False, sensors=[s], clock=clock, interval_s=3600) as m:
        with m.track("run") as span:
            for joules, restart in trace:
                clock.advance(0.1)
                v = s.values["gpu:0"]
                s.values["gpu:0"] = joules if restart and v > 2 * joules / RESET_FRACTION else v + joules
                truth += joules
                m.flush()
    assert span.energy_by_component["gpu"].energy_j == pytest.approx(truth, abs=1e-6)


# -- polled power against the exact integral --------------------------------------------------------

levels = st.lists(st.tuples(st.floats(20.0, 700.0), st.integers(1, 12)), min_size=1, max_size=12)


@SETTINGS
@given(levels=levels)
def test_integrated_power_is_within_half_a_sample_per_step_of_the_exact_integral(levels):
    """A GPU without an energy counter, power stepping between random levels; sampled every
    0.1 s. The trapezoid between samples misplaces each step by at most half an interval, so the
    error is at most 0.05 s x |step| summed over the steps, plus one interval of the edges."""
    dt = 0.1
    edges, t = [], 0.0
    for p, n in levels:
        edges.append((t, p))
        t += n * dt
    total_s = t

    clock = FakeClock(start=0.0)

    def power(x):
        cur = edges[0][1]
        for t0, p in edges:
            if x + 1e-9 >= t0:
                cur = p
        return cur

    nv = FakeNVML([FakeGPU(uuid="GPU-p", energy=False, power_w=power)], clock=clock)
    with meter.Meter(write=False, nvml=nv, clock=clock, interval_s=3600, rapl_root="/nonexistent") as m:
        with m.track("run") as span:
            for _ in range(round(total_s / dt)):
                nv.advance(dt, dt=dt / 10)
                m.flush()
    truth = sum(p * n * dt for p, n in levels)
    steps_w = sum(abs(b[1] - a[1]) for a, b in zip(edges, edges[1:], strict=False))
    bound = 0.5 * dt * steps_w + dt * max(p for p, _ in levels) + 1e-6
    gpu = span.energy_by_component["gpu"]
    assert gpu.provenance == "power-integrated"
    assert abs(gpu.energy_j - truth) <= bound


@SETTINGS
@given(levels=levels, period=st.sampled_from([0.0, 0.02]))
def test_counter_energy_matches_the_exact_integral(levels, period):
    """With an energy counter (continuous, or updating every 20 ms), the span's energy is the
    exact integral to the counter's 1 mJ resolution (plus up to one update period of power where
    the counter is coarse); where meter took it from integrated power instead (a counter presumed
    coarse whose period is not learned yet), it says so in the provenance and is within the
    integration bound of the test above."""
    clock = FakeClock(start=0.0)
    edges, t = [], 0.0
    for p, n in levels:
        edges.append((t, p))
        t += n * 0.1

    def power(x):
        cur = edges[0][1]
        for t0, p in edges:
            if x + 1e-9 >= t0:
                cur = p
        return cur

    nv = FakeNVML([FakeGPU(uuid="GPU-c", power_w=power, update_period_s=period)], clock=clock)
    with meter.Meter(write=False, nvml=nv, clock=clock, interval_s=3600, rapl_root="/nonexistent") as m:
        e0 = nv.true_energy_j(0)
        with m.track("run") as span:
            for _ in range(sum(n for _, n in levels)):
                nv.advance(0.1, dt=0.01)
                m.flush()
        truth = nv.true_energy_j(0) - e0
    gpu = span.energy_by_component["gpu"]
    top = max(p for p, _ in levels)
    if gpu.provenance == "power-integrated":
        steps_w = sum(abs(b[1] - a[1]) for a, b in zip(edges, edges[1:], strict=False))
        tol = 0.05 * steps_w + 0.1 * top + 2e-3
        assert any("integrated from instantaneous power" in w for w in span.warnings)
    else:
        assert gpu.provenance == "counter"
        tol = 2e-3 + (2 * period * top if period else 0.0)
    assert abs(gpu.energy_j - truth) <= tol


# -- the span tree --------------------------------------------------------------------------------

def trees(depth=0):
    # A tree: work before the children, the children, work after (seconds at random power).
    work = st.floats(0.0, 0.5)
    if depth >= 3:
        return st.tuples(work, st.just([]), work)
    return st.tuples(work, st.lists(st.deferred(lambda: trees(depth + 1)), max_size=3), work)


@SETTINGS
@given(tree=trees(), watts=st.lists(st.floats(10.0, 700.0), min_size=2, max_size=2), cpu_j=st.floats(0.0, 30.0))
def test_children_never_exceed_their_parent(tmp_path_factory, tree, watts, cpu_j):
    """Random nesting and work on two GPUs and a RAPL package: every span's energy and duration
    are >= 0; a child's never exceed its parent's; the children's together never exceed it
    (beyond the counters' resolution: 1 mJ per GPU read, 1 µJ per RAPL write)."""
    root = str(tmp_path_factory.mktemp("pc"))
    rapl = write_rapl_tree(root, {"intel-rapl:0": {"name": "package-0", "constraint_0_max_power_uw": 400_000_000},
                                  "intel-rapl:0:0": {"name": "dram"}})  # every component measured: nothing estimated
    clock = FakeClock()
    nv = FakeNVML([FakeGPU(uuid="GPU-t0", power_w=watts[0]), FakeGPU(uuid="GPU-t1", power_w=watts[1])], clock=clock)
    spans = []
    with meter.Meter(write=False, nvml=nv, clock=clock, interval_s=3600, rapl_root=root) as m:
        def run(node, name):
            before, children, after = node
            with m.track(name) as s:
                spans.append(s)
                nv.advance(before, dt=0.01)
                rapl.add("intel-rapl:0", cpu_j * before)
                for k, child in enumerate(children):
                    run(child, f"c{k}")
                nv.advance(after, dt=0.01)
                rapl.add("intel-rapl:0", cpu_j * after)

        run(tree, "root")
    tol = 4e-3
    by_id = {s.span_id: s for s in spans}
    for s in spans:
        e = s.energy_j
        assert e is not None and e >= -tol and s.duration_s >= 0
        kids = [c for c in spans if c.parent_id == s.span_id]
        assert sum(c.energy_j for c in kids) <= e + tol * (1 + len(kids))
        assert sum(c.duration_s for c in kids) <= s.duration_s + 1e-9
        if s.parent_id is not None:
            p = by_id[s.parent_id]
            assert e <= p.energy_j + tol
            for comp, ce in s.energy_by_component.items():
                assert ce.energy_j <= p.energy_by_component[comp].energy_j + tol
    total_work = sum_work(tree)
    truth = total_work * (sum(watts) + cpu_j)
    assert spans[0].energy_j == pytest.approx(truth, abs=tol * 10 + 1e-6 * math.ceil(total_work * 100))


def sum_work(node):
    before, children, after = node
    return before + after + sum(sum_work(c) for c in children)
