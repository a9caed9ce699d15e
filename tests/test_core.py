"""The core's semantics: failed starts, snapshots, results independent of when they are read,
nesting under an explicit Meter, asyncio tasks sharing a Track, immutable measurements. The
process-level cases (threads, fork, SIGKILL, full disk, hung sensor) are in
tests/reliability/test_processes.py."""

import asyncio
import json
import os

import pytest

import meter
from meter.errors import SensorError, SpanStateError
from meter.testing import FakeSensor


def counter_meter(tmp_path, **kw):
    s = FakeSensor.counter("gpu:0", "gpu")
    kw.setdefault("interval_s", 0.01)
    return meter.Meter(output_dir=str(tmp_path / "runs"), sensors=[s], region="FR", **kw), s


def read_samples(run_dir):
    with open(os.path.join(run_dir, "samples.csv")) as f:
        header = f.readline().strip().split(",")
        return header, [line.strip().split(",") for line in f]



def test_failed_start_closes_what_it_opened_and_says_what_to_do(tmp_path):
    class BadRapl(FakeSensor):
        def wrap_period_s(self):
            raise OSError("powercap went away")

    ok, bad = FakeSensor.counter("gpu:0"), BadRapl(FakeSensor.counter("cpu:x", "cpu").channels)
    m = meter.Meter(output_dir=str(tmp_path), sensors=[ok, bad])
    with pytest.raises(SensorError, match="meter doctor"):
        with m.track("x"):
            pass
    assert ok.closed and bad.closed


def test_snapshot_never_raises_and_open_spans_give_figures_so_far(clock):
    s = FakeSensor.counter()
    m = meter.Meter(write=False, sensors=[s], clock=clock, interval_s=3600)
    t = m.track("open")
    span = t.__enter__()
    s.values["gpu:0"] = 7.0
    clock.advance(2.0)
    assert span.energy_j == pytest.approx(7.0) and span.duration_s == pytest.approx(2.0)
    assert span.snapshot().status == "open" and "open" in repr(span)
    with pytest.raises(SpanStateError, match="snapshot"):
        _ = span.result
    m.close()  # closes the open span as incomplete
    snap = span.snapshot()
    assert snap.status == "incomplete" and snap.energy_j == pytest.approx(7.0)
    t.__exit__(None, None, None)  # the user's with-block ends later: a no-op
    assert span.result.status == "incomplete"


def test_result_does_not_depend_on_when_it_is_read(clock):
    s = FakeSensor.counter()
    m = meter.Meter(write=False, sensors=[s], clock=clock, interval_s=3600)
    with m.track("a", samples=1) as a:
        s.values["gpu:0"] = 3.0
        clock.advance(1.0)
    a.add(samples=5)  # after exit: ignored, with a warning
    s.values["gpu:0"] = 100.0
    clock.advance(10.0)
    m.flush()
    assert a.result.counts == {"samples": 1} and a.energy_j == pytest.approx(3.0) and a.duration_s == pytest.approx(1.0)
    m.close()


def test_module_level_track_nests_under_an_explicit_meter(tmp_path, monkeypatch):
    import meter.core as core

    monkeypatch.setattr(core, "_default", None)
    m, s = counter_meter(tmp_path)
    with m.track("outer") as outer:
        with meter.track("inner") as inner:  # e.g. inside a library the user calls
            s.values["gpu:0"] += 1.0
    assert inner.meter is m and inner.path == "outer/inner" and inner.result.parent_id == outer.span_id
    assert core._default is None  # no second Meter, thread or run directory
    m.close()


def test_one_track_shared_by_asyncio_tasks_keeps_their_spans_apart(clock):
    s = FakeSensor.counter()
    m = meter.Meter(write=False, sensors=[s], clock=clock, interval_s=3600)
    req = m.track("request")
    seen = {}

    async def handle(k, delay):
        with req as span:
            await asyncio.sleep(delay)
            with m.track("decode") as inner:
                await asyncio.sleep(0.01)
            seen[k] = (span, inner)

    async def main():
        await asyncio.gather(handle("slow", 0.05), handle("fast", 0.0))

    asyncio.run(main())
    for span, inner in seen.values():
        assert span.closed and inner.result.parent_id == span.span_id
    assert seen["slow"][0] is not seen["fast"][0]
    m.close()


def test_measurement_is_deeply_immutable_and_round_trips(clock):
    s = FakeSensor.counter()
    m = meter.Meter(write=False, sensors=[s], clock=clock, interval_s=3600)
    with m.track("x", tags={"model": "tiny", "layers": [1, 2]}) as span:
        s.values["gpu:0"] = 2.0
        clock.advance(1.0)
    r = span.result
    with pytest.raises(TypeError):
        r.tags["model"] = "big"
    with pytest.raises(TypeError):
        r.energy_by_component["gpu"] = None
    assert r.tags["layers"] == (1, 2)
    with pytest.raises(TypeError, match="unhashable"):
        hash(r)
    back = meter.Measurement.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    assert "<table>" in r._repr_html_() and "<table>" in span._repr_html_()
    m.close()
