"""Misuse is an error or a consistent no-op, as docs/architecture.md ("Misuse") decides:
counts added after exit, spans exited out of order, nested Meters, the system clock set
backwards or forwards during a run."""

import asyncio
import json
import threading
import time

import pytest

import meter
from meter.testing import FakeGPU, FakeNVML


def gpu_meter(tmp_path, clock, nv, **kw):
    return meter.Meter(output_dir=str(tmp_path / "runs"), nvml=nv, clock=clock, interval_s=3600,
                       rapl_root=str(tmp_path / "no-rapl"), sync_cuda=False, **kw)


def records(m):
    with open(f"{m.run_dir}/spans.jsonl") as f:
        return {r["path"]: r for r in map(json.loads, f)}


def test_add_after_exit_is_ignored_the_same_in_memory_and_on_disk(tmp_path, caplog):
    """Another thread keeps adding while the span exits: whatever the timing, the record on disk
    and the in-memory result hold the same counts, and adds after the exit change neither."""
    m = meter.Meter(output_dir=str(tmp_path / "runs"), gpus="none", rapl_root=str(tmp_path / "no"))
    for trial in range(20):
        stop = threading.Event()
        with m.track(f"s{trial}") as span:
            def adder(span=span, stop=stop):
                while not stop.is_set():
                    span.add(samples=1)

            t = threading.Thread(target=adder)
            t.start()
            time.sleep(0.002)
        frozen = dict(span.result.counts)
        time.sleep(0.002)
        stop.set()
        t.join()
        assert span.result.counts == frozen  # later adds changed nothing
        span.add(samples=100)
        assert span.result.counts == frozen
    m.flush()
    on_disk = records(m)
    for trial in range(20):
        r = on_disk[f"s{trial}"]
        assert r["counts"].get("samples", 0) >= 1
    m.close()
    on_disk = records(m)
    assert sum("counts added after its exit are ignored" in r.message for r in caplog.records) >= 20
    df = meter.load(str(tmp_path / "runs"))
    assert len(df) == 20
    assert set(df["samples"]) == {on_disk[f"s{i}"]["counts"]["samples"] for i in range(20)}


def test_parent_exiting_before_its_child_closes_the_child_first(tmp_path, clock, caplog):
    nv = FakeNVML([FakeGPU(uuid="GPU-a", power_w=100.0)], clock=clock)
    m = gpu_meter(tmp_path, clock, nv)
    outer, inner, leaf = m.track("outer"), m.track("inner"), m.track("leaf")
    a = outer.__enter__()
    nv.advance(1.0)
    b = inner.__enter__()
    nv.advance(1.0)
    c = leaf.__enter__()
    nv.advance(1.0)
    outer.__exit__(None, None, None)  # out of order: inner and leaf still open
    nv.advance(5.0)
    leaf.__exit__(None, None, None)  # their own exits later change nothing
    inner.__exit__(None, None, None)
    assert meter.current_span() is None
    gpu = {s.path: s.energy_by_component["gpu"].energy_j for s in (a, b, c)}
    assert gpu == pytest.approx({"outer": 300.0, "outer/inner": 200.0, "outer/inner/leaf": 100.0}, abs=2e-3)  # NVML counts whole mJ
    assert a.result.status == "complete"
    assert b.result.status == c.result.status == "incomplete"
    assert any("exited first" in w for w in c.warnings)
    assert sum("exited while" in r.message for r in caplog.records) == 1
    with m.track("after") as d:  # the tree is usable again: a new root
        nv.advance(1.0)
    assert d.path == "after" and d.depth == 0
    m.close()
    on_disk = records(m)
    assert on_disk["outer/inner"]["status"] == "incomplete"
    assert on_disk["outer/inner"]["energy_j"] <= on_disk["outer"]["energy_j"]


def test_asyncio_task_outliving_its_parent_span_is_cut_at_the_parent(tmp_path, clock):
    """A task started inside a span inherits it as parent (ContextVar); if the span exits first
    the task's span closes with it, so no child outlasts its parent."""
    nv = FakeNVML([FakeGPU(uuid="GPU-a", power_w=50.0)], clock=clock)
    m = gpu_meter(tmp_path, clock, nv)
    spans = {}

    async def background(started: asyncio.Event, release: asyncio.Event):
        with m.track("prefetch") as s:
            spans["child"] = s
            started.set()
            await release.wait()
            nv.advance(2.0)

    async def main():
        started, release = asyncio.Event(), asyncio.Event()
        with m.track("epoch") as p:
            spans["parent"] = p
            task = asyncio.ensure_future(background(started, release))
            await started.wait()
            nv.advance(1.0)
        release.set()
        await task

    asyncio.run(main())
    p, c = spans["parent"], spans["child"]
    assert c.path == "epoch/prefetch"
    assert c.result.status == "incomplete"
    assert c.energy_j <= p.energy_j
    assert c.energy_by_component["gpu"].energy_j == pytest.approx(50.0, abs=2e-3)  # NVML counts whole mJ
    m.close()


def test_nested_meters_are_independent_runs_of_the_same_hardware(tmp_path, clock):
    """A Meter created inside another Meter's span measures on its own: its spans are roots of
    its own run (never children of the outer Meter's), and both see the same joules for the
    time they overlap. ``meter.track`` nests under the innermost open span's Meter."""
    nv = FakeNVML([FakeGPU(uuid="GPU-a", power_w=200.0)], clock=clock)
    outer = gpu_meter(tmp_path, clock, nv, run_name="outer")
    with outer.track("job") as job:
        nv.advance(1.0)
        inner = gpu_meter(tmp_path, clock, nv, run_name="inner")
        with inner.track("step") as step:
            nv.advance(2.0)
            with meter.track("sub") as sub:
                nv.advance(1.0)
        inner.close()
        nv.advance(1.0)
    outer.close()
    assert step.depth == 0 and step.path == "step"
    assert sub.meter is inner and sub.path == "step/sub"
    assert job.energy_by_component["gpu"].energy_j == pytest.approx(1000.0, abs=2e-3)  # NVML counts whole mJ
    assert step.energy_by_component["gpu"].energy_j == pytest.approx(600.0, abs=2e-3)  # NVML counts whole mJ
    assert outer.run_dir != inner.run_dir
    assert set(records(outer)) == {"job"}
    assert set(records(inner)) == {"step", "step/sub"}


@pytest.mark.parametrize("step_s", [-7200.0, 3600.0])
def test_system_clock_set_during_a_run_keeps_times_monotonic(tmp_path, monkeypatch, step_s, caplog):
    """The system clock is stepped (NTP, a manual change) in the middle of a span: durations come
    from the monotonic clock, wall times never go backwards, the card's wall time is not negative,
    and run.json records how far the clock moved."""
    real_time = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    m = meter.Meter(output_dir=str(tmp_path / "runs"), gpus="none", rapl_root=str(tmp_path / "no"))
    with m.track("train") as span:
        time.sleep(0.05)
        offset[0] = step_s
        time.sleep(0.05)
    m.close()
    assert 0.09 <= span.duration_s < 1.0
    r = span.result
    from meter.clock import parse_utc_iso

    assert 0.09 <= parse_utc_iso(r.end_utc) - parse_utc_iso(r.start_utc) < 1.0
    info = json.loads(open(f"{m.run_dir}/run.json").read())
    assert info["clock"]["system_clock_moved_s"] == pytest.approx(step_s, abs=0.5)
    assert any("system clock moved" in rec.message for rec in caplog.records)
    from meter.report import model

    card = model.build([m.run_dir], live=False)
    run = card["runs"][0]
    assert run["totals"]["wall_time_s"] is not None and 0 <= run["totals"]["wall_time_s"] < 5
    assert any("system clock was set" in n for n in run["notes"])


def test_an_old_log_with_end_before_start_gives_no_wall_time_not_a_negative_one(tmp_path):
    m = meter.Meter(output_dir=str(tmp_path / "runs"), gpus="none", rapl_root=str(tmp_path / "no"))
    with m.track("a"):
        pass
    m.close()
    path = f"{m.run_dir}/run.json"
    info = json.loads(open(path).read())
    info["ended_utc"] = "2000-01-01T00:00:00.000Z"  # written by a clock set backwards
    with open(path, "w") as f:
        json.dump(info, f)
    from meter.report import model

    run = model.build([m.run_dir], live=False)["runs"][0]
    assert run["totals"]["wall_time_s"] is None
    assert run["totals"]["stage_time_s"] >= 0


def test_an_extra_exit_is_ignored_and_never_closes_another_threads_span(tmp_path, caplog):
    m = meter.Meter(write=False, gpus="none", rapl_root=str(tmp_path / "no"))
    t = m.track("step")
    t.__enter__()
    t.__exit__(None, None, None)
    t.__exit__(None, None, None)  # a notebook cell's second exit: ignored, warned
    assert any("exited with no span of it open" in r.message for r in caplog.records)

    opened, done, seen = threading.Event(), threading.Event(), {}

    def worker():
        with t as s:
            opened.set()
            done.wait(10)
            seen["closed_under_it"] = s.closed
        seen["status"] = s.result.status

    th = threading.Thread(target=worker)
    th.start()
    opened.wait(10)
    t.__exit__(None, None, None)  # a stray exit on the main thread: the worker's span is not touched
    done.set()
    th.join()
    assert seen == {"closed_under_it": False, "status": "complete"}
    m.close()


def test_a_span_on_a_closed_meter_measures_nothing_and_says_so(tmp_path, caplog):
    m = meter.Meter(write=False, gpus="none", rapl_root=str(tmp_path / "no"))
    m.close()
    with m.track("late") as span:
        pass
    assert span.energy_j is None and span.result.status == "not-measured"
    assert any("opened on a closed Meter" in r.message for r in caplog.records)


def test_meters_dropped_without_close_close_their_runs(tmp_path, caplog, monkeypatch):
    """A notebook cell re-run: ``m = Meter()`` again and again without close. Each dropped Meter
    closes its run (records written, thread gone); many running at once are warned about."""
    import gc

    import meter.core
    from meter.testing import FakeSensor

    monkeypatch.setattr(meter.core, "_warned_many", False)  # warned once per process: maybe by an earlier test

    before = threading.active_count()
    keep = []
    for i in range(6):
        m = meter.Meter(output_dir=str(tmp_path / "runs"), sensors=[FakeSensor.counter()], interval_s=0.05)
        with m.track(f"cell{i}"):
            pass
        keep.append(m)
    assert any("Meters are running in this process" in r.message for r in caplog.records)
    del keep, m
    gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
    df = meter.load(str(tmp_path / "runs"))
    assert sorted(df["name"]) == [f"cell{i}" for i in range(6)]
