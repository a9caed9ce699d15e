"""The core in the settings users run it in: worker threads with a flush loop, forked workers,
two Meters in one second, SIGKILL during the counter probe and in a tight loop of spans, a full
disk, a deleted run directory, a hung sensor. (Moved here from tests/test_core.py: the
reliability suite holds a case per promise; see RELIABILITY.md.)"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import meter
from meter.testing import FakeSensor


def counter_meter(tmp_path, **kw):
    s = FakeSensor.counter("gpu:0", "gpu")
    kw.setdefault("interval_s", 0.01)
    return meter.Meter(output_dir=str(tmp_path / "runs"), sensors=[s], region="FR", **kw), s


def read_samples(run_dir):
    with open(os.path.join(run_dir, "samples.csv")) as f:
        header = f.readline().strip().split(",")
        return header, [line.strip().split(",") for line in f]


def test_worker_threads_and_a_flush_loop_lose_nothing(tmp_path, caplog):
    m, s = counter_meter(tmp_path)
    stop = threading.Event()
    errors = []

    def flusher():
        while not stop.is_set():
            try:
                m.flush(timeout_s=5)
            except Exception as exc:  # noqa: BLE001 - the test records anything flush raises
                errors.append(exc)

    def worker(k):
        for _ in range(300):
            with m.track(f"w{k}") as span:
                s.values["gpu:0"] += 1.0
                span.add(samples=1)

    with m.track("job"):
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
        f = threading.Thread(target=flusher)
        f.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        f.join()
    m.close()
    assert errors == []
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR") and "heartbeat" in r.getMessage()]
    df = meter.load(m.run_dir)
    assert len(df) == 901 and df["span_id"].nunique() == 901 and df.attrs["problems"] == []
    info = json.load(open(os.path.join(m.run_dir, "run.json")))
    header, rows = read_samples(m.run_dir)
    # One row per tick (plus the first read at start and the final one at close): no tick lost.
    assert len(rows) == info["ticks"] + 2 and info["tick_errors"] == 0
    walls = [float(r[0]) for r in rows]
    assert walls == sorted(walls)  # in time order
    assert not [n for n in os.listdir(m.run_dir) if "tmp" in n]


def test_forked_children_write_nothing_twice(tmp_path):
    m, s = counter_meter(tmp_path, interval_s=3600)  # nothing written by ticks: all at close
    with m.track("epoch"):
        for i in range(5):
            with m.track(f"step-{i}"):
                s.values["gpu:0"] += 1.0
        pids = []
        for exit_how in ("os._exit", "atexit"):
            pid = os.fork()
            if pid == 0:  # a DataLoader worker: does some work, maybe with meter.track, then exits
                try:
                    with meter.track("in-worker") as span:
                        pass
                    assert span.result.status == "not-measured"
                finally:
                    if exit_how == "atexit":
                        import atexit

                        atexit._run_exitfuncs()  # a normal exit: meter's atexit hook must not write the parent's run
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    m.close()
    lines = open(os.path.join(m.run_dir, "spans.jsonl")).read().splitlines()
    ids = [json.loads(x)["span_id"] for x in lines]
    assert len(ids) == 6 and len(set(ids)) == 6
    _, rows = read_samples(m.run_dir)
    assert len(rows) == len({tuple(r) for r in rows})  # no duplicated sample row
    assert sorted(os.listdir(tmp_path / "runs")) == [os.path.basename(m.run_dir)]  # no child run


def test_two_meters_in_one_second_get_their_own_run_dirs(tmp_path, clock):
    a, sa = counter_meter(tmp_path, clock=clock)
    b, sb = counter_meter(tmp_path, clock=clock)  # same fake second, same pid, same host
    with a.track("a"):
        sa.values["gpu:0"] = 1.0
    with b.track("b"):
        sb.values["gpu:0"] = 2.0
    a.close()
    b.close()
    assert a.run_dir != b.run_dir
    assert meter.load(a.run_dir)["name"].tolist() == ["a"]
    assert meter.load(b.run_dir)["name"].tolist() == ["b"]
    header, _ = read_samples(a.run_dir)
    assert header[0] == "t_wall_s" and open(os.path.join(b.run_dir, "samples.csv")).read().count("t_wall_s") == 1


PROBING_CHILD = textwrap.dedent("""
    import sys, time, meter
    from meter.testing import FakeGPU, FakeNVML, FakeClock
    class Clock:  # real time, driving the fake GPUs' counters (100 ms updates: the probe runs 1.5 s)
        monotonic = staticmethod(time.perf_counter)
        wall = staticmethod(time.time)
    clock = FakeClock()
    nv = FakeNVML([FakeGPU(uuid="GPU-1", power_w=100.0, update_period_s=0.1)], clock=clock)
    import threading
    def drive():
        t0 = time.perf_counter()
        while True:
            nv.advance(time.perf_counter() - t0 - (clock.monotonic() - 1000.0), dt=0.001)
            time.sleep(0.001)
    threading.Thread(target=drive, daemon=True).start()
    m = meter.Meter(output_dir=sys.argv[1], nvml=nv, clock=clock, gpus="all", rapl_root="/none", interval_s=0.05)
    i = 0
    while True:
        with m.track(f"step-{i}"):
            time.sleep(0.005)
        print(i, flush=True)
        i += 1
""")


def test_sigkill_during_the_counter_probe_keeps_what_was_measured(tmp_path):
    out = tmp_path / "runs"
    p = subprocess.Popen([sys.executable, "-c", PROBING_CHILD, str(out)], stdout=subprocess.PIPE, text=True)
    first = p.stdout.readline()  # the first span closed: the run has started
    assert first.strip() == "0"
    t0 = time.monotonic()
    last = 0
    while time.monotonic() - t0 < 0.5:
        last = int(p.stdout.readline())
    p.send_signal(signal.SIGKILL)
    p.wait()
    df = meter.load(out)
    on_disk = df[df["status"] == "complete"]
    # 0.5 s into a 1.5 s probe: every span closed more than one interval (0.05 s, ~8 spans) before
    # the kill is on disk, with energy (100 W x 5 ms = 0.5 J each, corrected or not, never zero).
    assert len(on_disk) >= last - 15
    assert (on_disk["energy_j"] > 0).all()
    assert os.path.exists(os.path.join(df["run_dir"].iloc[0], "run.json"))


TIGHT_CHILD = textwrap.dedent("""
    import sys, time, meter
    from meter.testing import FakeSensor
    s = FakeSensor.counter()
    m = meter.Meter(output_dir=sys.argv[1], sensors=[s], interval_s=0.1)
    n = 0
    while True:
        with m.track("step"):
            s.values["gpu:0"] += 0.001
        n += 1
        if n % 1000 == 0:
            print(n, time.monotonic(), flush=True)
""")


def test_tight_loop_backlog_is_one_interval_even_under_sigkill(tmp_path):
    out = tmp_path / "runs"
    p = subprocess.Popen([sys.executable, "-c", TIGHT_CHILD, str(out)], stdout=subprocess.PIPE, text=True)
    marks = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        n, t = p.stdout.readline().split()
        marks.append((int(n), float(t)))
    kill_t = time.monotonic()
    p.send_signal(signal.SIGKILL)
    p.wait()
    rows = len(meter.load(out))
    # Spans closed more than one interval (0.1 s) plus scheduling slack before the kill are on disk.
    closed_before = max(n for n, t in marks if t < kill_t - 0.1 - 0.15)
    assert rows >= closed_before
    assert marks[-1][0] > 5000  # the loop was not throttled to a crawl


def test_full_disk_is_recorded_measurement_goes_on_and_nothing_is_lost(tmp_path, caplog, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    from meter import runlog

    monkeypatch.setattr(runlog, "RETRY_S", 0.05)
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("this machine does not allow mounting tmpfs")
    try:
        s = FakeSensor.counter()
        m = meter.Meter(output_dir=str(mnt), sensors=[s], interval_s=0.01)
        spans = []
        for i in range(40):
            with m.track(f"s{i}", tags={"pad": "x" * 500}) as span:
                s.values["gpu:0"] += 1.0
            spans.append(span)
            if i == 10:
                m.flush()
                with open(mnt / "filler", "wb") as f:  # another program fills the disk
                    try:
                        f.write(b"\0" * 10**6)
                    except OSError:
                        pass
            if i == 25:
                m.flush()
                faults = [r for r in caplog.records if "cannot write the run log" in r.getMessage()]
                assert len(faults) == 1 and "free disk space" in faults[0].getMessage()  # once, with the fix
                early = meter.load(str(mnt))["name"].tolist()  # written before the fault: still readable
                assert len(early) >= 11 and early == [f"s{i}" for i in range(len(early))]
                os.unlink(mnt / "filler")  # space comes back
        m.close()  # never raises
        assert all(sp.result.energy_j == pytest.approx(1.0) for sp in spans)
        df = meter.load(str(mnt))
        assert df["name"].tolist() == [f"s{i}" for i in range(40)] and df.attrs["problems"] == []
        info = json.load(open(os.path.join(m.run_dir, "run.json")))
        assert "No space left" in info["disk_fault"]["error"] and info["disk_fault"]["recovered"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_output_dir_deleted_mid_run_is_recreated(tmp_path, caplog):
    import shutil

    m, s = counter_meter(tmp_path)
    with m.track("before"):
        s.values["gpu:0"] += 1.0
    m.flush()
    shutil.rmtree(tmp_path / "runs")
    with m.track("after"):
        s.values["gpu:0"] += 2.0
    m.flush()
    m.close()
    df = meter.load(m.run_dir)
    assert df["name"].tolist() == ["after"] and df["energy_j"].tolist() == pytest.approx([2.0])
    info = json.load(open(os.path.join(m.run_dir, "run.json")))
    assert "deleted" in info["disk_fault"]["error"]
    assert any("cannot write the run log" in r.getMessage() for r in caplog.records)


class HangingSensor(FakeSensor):
    def __init__(self):
        super().__init__(FakeSensor.counter().channels)
        self.hang = threading.Event()
        self.release = threading.Event()

    def read(self):
        if self.hang.is_set():
            self.release.wait(30)
        return super().read()


def test_close_with_a_hung_sensor_returns_within_its_timeout(tmp_path):
    s = HangingSensor()
    m = meter.Meter(output_dir=str(tmp_path), sensors=[s], interval_s=0.01)
    with m.track("before"):
        s.values["gpu:0"] = 1.0
    m.flush()
    s.hang.set()
    time.sleep(0.05)  # the sampler thread is now stuck in read()
    t0 = time.monotonic()
    m.close(timeout_s=0.3)
    took = time.monotonic() - t0
    s.release.set()
    assert took < 2.0
    assert meter.load(m.run_dir)["name"].tolist() == ["before"]


def test_signals_sent_to_the_process_reach_the_users_thread_not_meters(tmp_path):
    """A program whose main thread blocks a signal and waits for it (a server's shutdown, `meter
    run`'s own loop) gets it while meter's threads run: the kernel gives a process-directed
    signal to any thread that does not block it, and meter's threads block them all. Before, the
    sampler thread took SIGUSR1 and its default action killed the process."""
    script = textwrap.dedent(f"""
        import os, signal, meter
        m = meter.Meter(write=False, gpus="none", rapl_root={str(tmp_path / "none")!r}, region="FR")
        with m.track("serve"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1, signal.SIGTERM}})
            got = []
            for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGUSR1):
                os.kill(os.getpid(), sig)
                info = signal.sigtimedwait({{sig}}, 5)
                got.append(info.si_signo if info else None)
        m.close()
        print(got == [signal.SIGUSR1, signal.SIGTERM, signal.SIGUSR1])
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True"
