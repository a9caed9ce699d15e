"""Spans: context manager and decorator, nesting, threads, counts, results."""

import asyncio
import dataclasses
import threading

import pytest

import meter
from meter.errors import ConfigError
from meter.testing import FakeSensor


@pytest.fixture
def rig(clock):
    """A meter over one fake counter that advances 10 J per fake second."""
    s = FakeSensor.counter("gpu:0", "gpu")
    m = meter.Meter(write=False, sensors=[s], clock=clock, interval_s=3600)

    def spend(seconds):
        s.values["gpu:0"] += 10.0 * seconds
        clock.advance(seconds)

    yield m, spend
    m.close()


def test_nesting_paths_and_inclusive_energy(rig):
    m, spend = rig
    with m.track("finetune") as ft:
        spend(1)
        with m.track("epoch-1") as e1:
            spend(2)
            with m.track("eval") as ev:
                spend(0.5)
        spend(1)
    assert (ft.path, e1.path, ev.path) == ("finetune", "finetune/epoch-1", "finetune/epoch-1/eval")
    assert (ft.depth, e1.depth, ev.depth) == (0, 1, 2)
    assert e1.result.parent_id == ft.result.span_id
    assert ft.energy_j == pytest.approx(45.0)
    assert e1.energy_j == pytest.approx(25.0)
    assert ev.energy_j == pytest.approx(5.0)
    assert ft.duration_s == pytest.approx(4.5)
    assert meter.current_span() is None


def test_decorator_gives_fresh_span_each_call(rig):
    m, spend = rig
    seen = []

    @m.track("step")
    def step(n):
        seen.append(meter.current_span())
        spend(n)
        return n * 2

    assert step(1) == 2 and step(2) == 4
    assert seen[0] is not seen[1]
    assert [r.energy_j for r in (seen[0].result, seen[1].result)] == pytest.approx([10.0, 20.0])
    assert step.__name__ == "step"


def test_async_decorator(rig):
    m, spend = rig

    @m.track("infer")
    async def infer():
        spend(1)
        return meter.current_span()

    span = asyncio.run(infer())
    assert span.energy_j == pytest.approx(10.0)


def test_counts_up_front_and_added(rig):
    m, spend = rig
    with m.track("epoch", samples=512) as span:
        span.add(samples=32, tokens=4096)
        span.add(tokens=100, flops=1e12)
    assert span.result.counts == {"samples": 544, "tokens": 4196, "flops": 1e12}


def test_bad_counts_names_and_arguments(rig):
    m, _ = rig
    with pytest.raises(ConfigError, match="non-negative"):
        with m.track("x") as span:
            span.add(samples=-1)
    with pytest.raises(ConfigError, match="non-negative"):
        m.track("x", tokens=-5)
    with pytest.raises(ConfigError, match="did you mean samples"):
        m.track("x", sample=3)
    with pytest.raises(ConfigError, match="without '/'"):
        m.track("a/b")
    with pytest.raises(ConfigError, match="did you mean region"):
        meter.Meter(write=False, regoin="FR")


def test_result_is_frozen_and_versioned(rig):
    m, spend = rig
    with m.track("x") as span:
        spend(1)
        with pytest.raises(RuntimeError, match="still open"):
            _ = span.result
    r = span.result
    assert r.schema_version == 1 and r.status == "complete"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.energy_j = 0
    d = r.to_dict()
    assert d["energy_by_component"]["gpu"]["provenance"] == "counter"
    assert float(span.energy_by_component["gpu"]) == pytest.approx(10.0)


def test_exception_inside_span_is_recorded_and_propagates(rig):
    m, spend = rig
    with pytest.raises(KeyError):
        with m.track("boom") as span:
            spend(1)
            raise KeyError("x")
    assert span.result.tags["exception"] == "KeyError"
    assert span.energy_j == pytest.approx(10.0)


def test_threads_have_their_own_trees(tmp_path):
    s = FakeSensor.counter("gpu:0", "gpu")
    m = meter.Meter(output_dir=str(tmp_path / "runs"), sensors=[s], interval_s=0.01)
    out = {}
    barrier = threading.Barrier(4)

    def worker(k):
        with m.track(f"worker-{k}") as outer:
            barrier.wait()
            for _i in range(50):
                with m.track("step") as inner:
                    inner.add(samples=1)
            out[k] = (outer, inner)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m.close()
    for k, (outer, inner) in out.items():
        assert inner.path == f"worker-{k}/step"
        assert inner.result.parent_id == outer.result.span_id
    df = meter.load(m.run_dir)
    assert len(df) == 4 * 51 and df["span_id"].nunique() == 4 * 51  # every span on disk, none twice
    assert df.attrs["problems"] == []


def test_module_level_track_uses_lazy_default_meter(tmp_path, monkeypatch):
    import meter.core as core

    monkeypatch.setenv("METER_OUTPUT_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("METER_RAPL_ROOT", str(tmp_path / "none"))
    monkeypatch.setattr(core, "_default", None)
    with meter.track("outer") as span:
        pass
    d = meter.default_meter()
    assert span.meter is d and d.config.sources["output_dir"].startswith("environment")
    d.close()
    assert meter.load(tmp_path / "runs")["name"].tolist() == ["outer"]


def test_no_sensor_at_all_is_not_a_silent_zero(clock):
    with meter.Meter(write=False, sensors=[], clock=clock) as m:
        with m.track("x") as span:
            clock.advance(1)
    assert span.energy_j is None
    assert any("no energy sensor" in w for w in span.warnings)


def test_failing_sensor_never_raises_into_user_code(rig, clock):
    m, spend = rig
    m.start()
    bad = m.discovery.sensors[0]
    with m.track("x") as span:
        spend(1)
        m.flush()
        bad.raise_on_read = OSError("device vanished")
        spend(1)
    assert span.energy_j == pytest.approx(10.0)
    assert any("device vanished" in w for w in span.warnings)


def test_peak_power_from_timeline(rig):
    m, spend = rig
    s = m.start().discovery.sensors[0]
    with m.track("x") as span:
        for w in (10, 10, 50, 10):
            s.values["gpu:0"] += w * 1.0
            m.clock.advance(1.0)
            m.flush()
    # power per tick, from the counter's rate over its recent changes, peaks during the 50 W second.
    assert span.peak_power_w > span.avg_power_w == pytest.approx(20.0)
