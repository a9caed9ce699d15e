"""The run log on disk: files, reading back, corruption, SIGKILL, fork."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import meter
from meter.runlog import read_run
from meter.testing import FakeSensor


def make_meter(tmp_path, clock, **kw):
    s = FakeSensor.counter("gpu:0", "gpu")
    m = meter.Meter(output_dir=str(tmp_path / "runs"), sensors=[s], clock=clock, interval_s=3600, region="FR", **kw)
    return m, s


def test_files_and_load(tmp_path, clock):
    m, s = make_meter(tmp_path, clock, run_name="sweep a")
    with m.track("train", samples=10, tags={"model": "tiny"}):
        s.values["gpu:0"] = 30.0
        clock.advance(3)
        m.flush()
        with m.track("epoch-1"):
            s.values["gpu:0"] = 40.0
            clock.advance(1)
    m.close()
    run_dir = m.run_dir
    assert os.path.basename(run_dir).startswith("sweep-a-")
    assert sorted(os.listdir(run_dir)) == ["run.json", "samples.csv", "spans.jsonl"]  # heartbeat removed at close
    info = json.load(open(os.path.join(run_dir, "run.json")))
    assert info["schema_version"] == 1 and info["config"]["region"] == "FR"
    assert info["channels"][0]["key"] == "gpu:0" and "ended_utc" in info
    df = meter.load(tmp_path / "runs")
    assert list(df["path"]) == ["train/epoch-1", "train"]
    row = df.set_index("path").loc["train"]
    assert row["energy_j"] == pytest.approx(40.0)
    assert row["gpu_energy_j"] == pytest.approx(40.0) and row["gpu_provenance"] == "counter"
    assert row["samples"] == 10 and row["tag_model"] == "tiny"
    assert row["duration_s"] == pytest.approx(4.0)
    samples = read_run(run_dir).samples()
    assert list(samples.columns[:3]) == ["t_wall_s", "t_mono_s", "gpu:0:power_w"]
    assert samples["gpu:0:energy_j"].iloc[-1] == pytest.approx(40.0)


def test_corrupt_line_is_reported_and_skipped(tmp_path, clock):
    m, s = make_meter(tmp_path, clock)
    for name in ("a", "b"):
        with m.track(name):
            clock.advance(1)
    m.close()
    path = os.path.join(m.run_dir, "spans.jsonl")
    lines = open(path).read().splitlines()
    open(path, "w").write(lines[0] + "\n{\"truncated\": \n" + lines[1] + "\n")
    df = meter.load(m.run_dir)
    assert list(df["name"]) == ["a", "b"]
    assert any("corrupt line skipped" in p for p in df.attrs["problems"])


def test_spans_open_at_close_are_recorded_incomplete(tmp_path, clock):
    m, s = make_meter(tmp_path, clock)
    t = m.track("never-closed")
    t.__enter__()
    s.values["gpu:0"] = 5.0
    clock.advance(1)
    m.close()
    assert meter.current_span() is None
    df = meter.load(m.run_dir)
    row = df.iloc[0]
    assert row["status"] == "incomplete" and row["energy_j"] == pytest.approx(5.0)


CHILD = textwrap.dedent("""
    import sys, time, meter
    from meter.testing import FakeSensor
    s = FakeSensor.counter("gpu:0", "gpu")
    m = meter.Meter(output_dir=sys.argv[1], sensors=[s], interval_s=0.05)
    for i in range(3):
        with m.track(f"done-{i}"):
            s.values["gpu:0"] += 10.0
    with m.track("running"):
        while True:
            s.values["gpu:0"] += 1.0
            time.sleep(0.01)
            print("tick", flush=True)
""")


def test_sigkill_loses_at_most_one_interval(tmp_path):
    out = tmp_path / "runs"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, text=True)
    for _ in range(40):  # let it run ~0.4 s inside the open span
        p.stdout.readline()
    p.send_signal(signal.SIGKILL)
    p.wait()
    df = meter.load(out)
    done = df[df["name"].str.startswith("done")]
    assert len(done) == 3 and done["energy_j"].tolist() == pytest.approx([10.0, 10.0, 10.0])
    running = df[df["name"] == "running"].iloc[0]
    assert running["status"] == "incomplete"
    # ~40 increments of 1 J happened; the last sample row is at most one 0.05 s interval (~5 J) old.
    assert 30.0 <= running["energy_j"] <= 41.0
    assert running["duration_s"] > 0.3


def test_forked_child_neither_samples_nor_writes(tmp_path):
    m = meter.Meter(output_dir=str(tmp_path / "runs"), sensors=[FakeSensor.counter()], interval_s=0.01)
    with m.track("parent"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a DataLoader worker, say
            try:
                with m.track("in-child") as span:
                    time.sleep(0.05)
                ok = (span.energy_j is None and "forked child" in span.warnings[0]
                      and not m._session.sampler.running and m._session.writer is None)
                os.write(w, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(r, 1) == b"1"
        assert m._session.sampler.running  # the parent's sampler is untouched
    m.close()
    df = meter.load(m.run_dir)
    assert df["name"].tolist() == ["parent"]
    lines = open(os.path.join(m.run_dir, "spans.jsonl")).read().splitlines()
    assert len(lines) == 1  # the child flushed no copy of the parent's buffers
