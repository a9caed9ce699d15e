"""The estimate sensor: TDP table lookup, CPU-time share, RAM per GB, labels."""

import os
import time

import pandas as pd
import pytest

from meter.sensors import discover
from meter.sensors.estimate import DEFAULT_W_PER_THREAD, RAM_W_PER_GB, EstimateSensor, cpu_power_per_thread, lookup_tdp


@pytest.mark.parametrize("model,tdp,row", [
    ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", 150.0, "Intel Xeon Gold 6248"),
    ("AMD EPYC 7763 64-Core Processor", 280.0, "AMD EPYC 7763"),
    ("Intel(R) Core(TM) i7-8700K CPU @ 3.70GHz", 95.0, "Intel Core i7-8700K"),
])
def test_tdp_from_codecarbon_table(model, tdp, row):
    got, source = lookup_tdp(model)
    assert got == tdp and row in source


def test_unknown_model_has_no_tdp_and_says_so():
    got, source = lookup_tdp("Intel(R) Xeon(R) Processor @ 2.30GHz")
    assert got is None and "not in codecarbon's cpu_power.csv" in source


def test_cpu_energy_is_power_per_thread_times_cpu_time():
    s = EstimateSensor(cpu_power_w=3.0, ram=False)
    t0 = time.process_time()
    before = s.read()[0]
    x = 0
    while time.process_time() - t0 < 0.3:  # burn ~0.3 s of CPU
        x += 1
    after = s.read()[0]
    cpu_s = time.process_time() - t0
    # The bracketing process_time() calls sit outside the sensor's reads: within 1 ms of CPU.
    assert after - before == pytest.approx(3.0 * cpu_s, abs=3.0 * 0.001)
    ch = s.channels[0]
    assert ch.provenance == "estimated" and ch.details["power_source"] == "given by the user (cpu_power_w)"
    assert ch.details["max_process_w"] == pytest.approx(3.0 * ch.details["visible_threads"])


@pytest.mark.parametrize("model,info,w,how", [
    # A 2-vCPU VM of a 64-core EPYC: the package's 280 W over its 128 threads, not 85 W over 2 vCPUs.
    ("AMD EPYC 7763 64-Core Processor", {"siblings": "2", "cpu cores": "2", "flags": "fpu hypervisor"}, 280 / 128, "assumed in a VM"),
    ("AMD EPYC 7763 64-Core Processor", {"siblings": "128", "cpu cores": "64", "flags": "fpu"}, 280 / 128, "from /proc/cpuinfo"),
    ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", {"siblings": "40", "cpu cores": "20", "flags": "fpu"}, 150 / 40, "bare metal"),
    ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", {"siblings": "2", "cpu cores": "1", "flags": "hypervisor"}, 4.0, "thread count"),
    ("AMD EPYC", {"siblings": "2", "cpu cores": "2", "flags": "hypervisor"}, DEFAULT_W_PER_THREAD, "not in codecarbon"),
])
def test_power_per_hardware_thread(model, info, w, how):
    got, source, _ = cpu_power_per_thread(model, info=info)
    assert got == pytest.approx(w) and how in source


def test_cpu_power_is_configurable_everywhere(tmp_path, monkeypatch):
    import meter
    from meter.errors import ConfigError

    (tmp_path / "pyproject.toml").write_text("[tool.meter]\ncpu_power_w = 2.5\n")
    m = meter.Meter(write=False, rapl_root=str(tmp_path / "none"), gpus="none", pyproject=str(tmp_path / "pyproject.toml"))
    assert m.config.cpu_power_w == 2.5 and "pyproject" in m.config.sources["cpu_power_w"]
    monkeypatch.setenv("METER_CPU_POWER_W", "3.5")
    m2 = meter.Meter(write=False, rapl_root=str(tmp_path / "none"), gpus="none", pyproject=str(tmp_path / "pyproject.toml"))
    assert m2.config.cpu_power_w == 3.5
    with m2.track("x") as span:
        pass
    ch = [c for c in m2.sensors_report()["channels"] if c["key"] == "cpu:estimate"][0]
    assert ch["details"]["w_per_thread"] == 3.5
    assert any("3.5 W per busy hardware thread" in n for n in m2.sensors_report()["notes"])
    m2.close()
    with pytest.raises(ConfigError, match="per busy hardware thread"):
        meter.Meter(write=False, cpu_power_w=-1)
    assert span.result.energy_by_component["cpu"].provenance == "estimated"


def test_ram_power_is_rss_times_w_per_gb():
    import psutil

    s = EstimateSensor(cpu=False)
    w = s.read()[0]
    rss = psutil.Process().memory_info().rss
    assert w == pytest.approx(rss / 1e9 * RAM_W_PER_GB, rel=0.2)
    assert "Green Algorithms" in s.channels[0].details["source"]


def test_discover_estimates_only_what_rapl_lacks(tmp_path):
    from meter.testing import write_rapl_tree

    write_rapl_tree(str(tmp_path), {"intel-rapl:0": {"name": "package-0"}})  # AMD-like: no dram zone
    found = discover(gpus=(), rapl_root=str(tmp_path))
    keys = [c.key for c in found.channels]
    assert keys == ["cpu:package-0", "dram:estimate"]
    assert any("dram energy is estimated" in n for n in found.notes)


def test_unknown_model_uses_documented_default_and_records_it():
    s = EstimateSensor(ram=False, model="Mystery CPU 9000")
    assert s.w_per_thread == DEFAULT_W_PER_THREAD
    assert s.channels[0].details["power_source"].startswith(f"default {DEFAULT_W_PER_THREAD:g} W per thread")


BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\n"


def test_meter_run_and_in_process_agree_on_a_busy_loop(tmp_path):
    import subprocess
    import sys

    import meter

    env = {**os.environ, "METER_CPU_POWER_W": "4", "METER_RAPL_ROOT": str(tmp_path / "none"), "METER_GPUS": "none"}
    subprocess.run([sys.executable, "-m", "meter", "run", "--output", str(tmp_path / "cli"), "--quiet", "--",
                    sys.executable, "-c", BUSY], env=env, check=True, capture_output=True)
    inproc = ("import meter\nm = meter.Meter(output_dir=%r)\nwith m.track('busy'):\n" % str(tmp_path / "lib")
              + "".join("    " + line + "\n" for line in BUSY.splitlines()) + "m.close()\n")
    subprocess.run([sys.executable, "-c", inproc], env=env, check=True, capture_output=True)
    by_cli = meter.load(tmp_path / "cli").iloc[0]["cpu_energy_j"]
    in_process = meter.load(tmp_path / "lib").iloc[0]["cpu_energy_j"]
    assert in_process == pytest.approx(4.0, rel=0.05)  # 1 s of CPU x 4 W per thread
    # The command's tree once (was twice: 255.9 J vs 127.7 J), and not meter's own polling.
    assert by_cli == pytest.approx(in_process, rel=0.10)


def _busy(cpu_s: float) -> None:
    t = time.process_time()
    while time.process_time() - t < cpu_s:
        pass


@pytest.mark.parametrize("ticked,pid", [(True, None), (False, None), (True, "self")])
def test_span_edge_reads_a_stale_estimate_instead_of_extending_it(tmp_path, ticked, pid):
    """Sampling every second (as users of 15 s tools set it): work stops 0.6 s before the span
    exits, after the last tick. The exit reads the CPU time itself (this process's, or a ``pid=``
    tree's): the busy rate of the last tick is not extended over the idle 0.6 s (+0.8 to +2.4 J
    of 6 J before)."""
    import meter

    m = meter.Meter(write=False, rapl_root=str(tmp_path / "none"), gpus="none", cpu_power_w=4.0,
                    interval_s=1.0, quiet_interval_s=1.0, pid=os.getpid() if pid == "self" else None)
    with m.track("work") as span:
        c0 = time.process_time()
        _busy(1.5)
        if ticked:
            assert m.flush()  # a tick at the end of the work: its rate is the busy one
        time.sleep(0.6)
        c1 = time.process_time()
    m.close()
    truth = 4.0 * (c1 - c0)  # the process's CPU time in the span (meter's threads' included) x 4 W
    # At most EXTEND_MAX_S (0.15 s) at the busy rate is extended (when a scheduled tick came
    # in the last 0.15 s), plus the CPU of the edges themselves (and psutil's 10 ms ticks).
    assert span.result.energy_by_component["cpu"].energy_j == pytest.approx(truth, abs=0.15 * 4.0 * 1.1 + 0.05)


def test_meter_run_span_ends_when_the_command_does(tmp_path):
    """The span ends the moment the command exits (woken by SIGCHLD, not by the next 0.2 s
    poll), and with ticks a second apart its CPU figure is the command's own CPU time."""
    import subprocess
    import sys

    import meter

    out = tmp_path / "t"
    cmd = ("import os, time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n"
           f"c = os.times()\nopen({str(out)!r}, 'w').write(f'{{time.time()}} {{c.user + c.system}}')\nos._exit(0)\n")
    env = {**os.environ, "METER_CPU_POWER_W": "4", "METER_RAPL_ROOT": str(tmp_path / "none"), "METER_GPUS": "none"}
    for k in range(3):  # the 0.2 s poll's phase differs from run to run
        subprocess.run([sys.executable, "-m", "meter", "run", "--output", str(tmp_path / f"cli{k}"), "--quiet",
                        "--interval", "1", "--", sys.executable, "-c", cmd], env=env, check=True, capture_output=True)
        ended, cpu_s = (float(x) for x in out.read_text().split())
        row = meter.load(tmp_path / f"cli{k}").iloc[0]
        late = pd.Timestamp(row["end_utc"]).timestamp() - ended
        # Before: up to 0.2 s late (the poll). Now the exit's SIGCHLD wakes meter at once.
        assert -0.01 <= late <= 0.08
        # The child's own CPU time (os.times ticks every 10 ms) x 4 W; ticks were 1 s apart, so an
        # extended rate would have added up to 4 J.
        assert row["cpu_energy_j"] == pytest.approx(4.0 * cpu_s, abs=4.0 * 0.03)
