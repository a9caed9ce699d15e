"""The sampler's quiet cadence, on a real Meter with a real powercap tree and real time: ticks
spread out while no span enters or exits (10% of the quiet time, up to ``quiet_interval_s``), the
next edge brings them back at once, and nothing a span reports depends on it."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import meter
from meter.config import ConfigError
from meter.report.cards import render_paths
from meter.sampler import QUIET_RAMP
from meter.testing import write_rapl_tree

ZONES = {"intel-rapl:0": {"name": "package-0"}, "intel-rapl:0:0": {"name": "dram"}}


def rapl_meter(tmp_path, **kw):
    tree = write_rapl_tree(str(tmp_path / "pc"), ZONES)
    m = meter.Meter(output_dir=str(tmp_path / "runs"), rapl_root=str(tmp_path / "pc"), gpus="none", region="FR",
                    **kw)
    return m, tree


def sample_times(run_dir):
    with open(os.path.join(run_dir, "samples.csv")) as f:
        rows = list(csv.reader(f))
    col = rows[0].index("t_mono_s")
    return [float(r[col]) for r in rows[1:]]


def quiet_span(tmp_path, seconds, **kw):
    """One span held open ``seconds`` with no other edge; 1 J added to the package every 0.25 s."""
    m, tree = rapl_meter(tmp_path, **kw)
    added = 0.0
    with m.track("long") as span:
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            time.sleep(0.25)
            tree.add("intel-rapl:0", 1.0)
            added += 1.0
    m.close()
    return m, span, added


def expected_ticks(seconds, interval, quiet):
    """Ticks the ramp allows in a quiet stretch: gap = clamp(QUIET_RAMP x t, interval, quiet)."""
    t, n = 0.0, 0
    while t < seconds:
        t += min(quiet, max(interval, QUIET_RAMP * t))
        n += 1
    return n


def test_a_long_quiet_span_ticks_far_less_and_reports_the_same_energy(tmp_path):
    seconds, interval = 4.0, 0.02
    quiet_m, quiet, quiet_j = quiet_span(tmp_path / "q", seconds, interval_s=interval, quiet_interval_s=1.0)
    fixed_m, fixed, fixed_j = quiet_span(tmp_path / "f", seconds, interval_s=interval, quiet_interval_s=interval)
    ramp = expected_ticks(seconds, interval, 1.0)  # 42 for 4 s at 0.02 s; fixed cadence: 200
    q_ticks = json.load(open(os.path.join(quiet_m.run_dir, "run.json")))["ticks"]
    f_ticks = json.load(open(os.path.join(fixed_m.run_dir, "run.json")))["ticks"]
    # A late tick is never made up for, so a loaded machine gives fewer ticks, never more; +3 for
    # the start, the close and a poke's wake.
    assert q_ticks <= ramp + 3
    assert f_ticks >= 0.5 * seconds / interval  # fixed: a loaded 2-core CI machine still keeps half
    assert q_ticks < 0.4 * f_ticks
    # What the span reports is the counter's delta either way: exact.
    for span, added in ((quiet, quiet_j), (fixed, fixed_j)):
        assert span.energy_by_component["cpu"].energy_j == pytest.approx(added, abs=1e-6)
        assert span.energy_by_component["cpu"].provenance == "counter"
    # samples.csv spreads out along the ramp and never past quiet_interval_s (plus scheduling slack).
    gaps = [b - a for a, b in zip(sample_times(quiet_m.run_dir), sample_times(quiet_m.run_dir)[1:], strict=False)]
    assert max(gaps) <= 1.0 + 0.25 and max(gaps) > 5 * interval
    fgaps = [b - a for a, b in zip(sample_times(fixed_m.run_dir), sample_times(fixed_m.run_dir)[1:], strict=False)]
    assert sorted(fgaps)[len(fgaps) // 2] == pytest.approx(interval, rel=0.5)
    # The irregular timeline reads back and reports like any other.
    df = meter.load(quiet_m.run_dir)
    assert df.iloc[0]["energy_j"] == pytest.approx(quiet_j, abs=1e-6)
    assert "sampling every 0.02 s while stages start and end, up to every 1 s while none does" in (
        render_paths([quiet_m.run_dir], fmt="md"))


def test_the_first_edge_after_a_quiet_stretch_is_written_within_an_interval(tmp_path):
    m, tree = rapl_meter(tmp_path, interval_s=0.05, quiet_interval_s=5.0)
    m.start()
    time.sleep(4.0)  # quiet: the gap has grown to ~0.4 s
    gaps = [b - a for a, b in zip(sample_times(m.run_dir), sample_times(m.run_dir)[1:], strict=False)]
    assert gaps[-1] > 0.25  # the stretch really did spread out
    with m.track("short"):
        time.sleep(0.05)  # a plausible 50 W for 50 ms, not a counter jump inside a microsecond
        tree.add("intel-rapl:0", 2.5)
    closed = time.monotonic()
    spans = os.path.join(m.run_dir, "spans.jsonl")
    while not (os.path.exists(spans) and os.path.getsize(spans)) and time.monotonic() - closed < 5:
        time.sleep(0.005)
    latency = time.monotonic() - closed
    # The exit wakes the sampler: written within about one interval, not after the 0.4 s quiet gap.
    assert latency < 0.2
    # Ticks are back at interval_s after the edge.
    t_edge = time.monotonic()
    time.sleep(0.5)
    recent = [t for t in sample_times(m.run_dir) if t > t_edge]
    assert len(recent) >= 5  # 10 at 0.05 s; the quiet cadence would give 1
    m.close()
    assert meter.load(m.run_dir).iloc[0]["energy_j"] == pytest.approx(2.5, abs=1e-6)


def test_spans_coming_and_going_keep_the_fixed_cadence(tmp_path):
    m, tree = rapl_meter(tmp_path, interval_s=0.02, quiet_interval_s=1.0)
    t_end = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < t_end:
        with m.track("step"):
            tree.add("intel-rapl:0", 0.5)
            time.sleep(0.01)
        n += 1
    m.close()
    ticks = json.load(open(os.path.join(m.run_dir, "run.json")))["ticks"]
    assert ticks >= 0.5 * 1.5 / 0.02  # steps every ~10 ms: never quiet, so ~75 ticks
    df = meter.load(m.run_dir)
    assert len(df) == n and df["energy_j"].sum() == pytest.approx(0.5 * n, abs=1e-5)


CHILD = textwrap.dedent("""
    import sys, time, meter
    from meter.testing import RaplTree
    tree = RaplTree(sys.argv[2], {"intel-rapl:0": {}, "intel-rapl:0:0": {}})
    m = meter.Meter(output_dir=sys.argv[1], rapl_root=sys.argv[2], gpus="none", region="FR",
                    interval_s=0.02, quiet_interval_s=1.0)
    with m.track("running"):
        while True:
            tree.add("intel-rapl:0", 1.0)
            time.sleep(0.01)
            print("tick", flush=True)
""")


def test_sigkill_in_a_quiet_span_loses_at_most_a_tenth_of_it(tmp_path):
    write_rapl_tree(str(tmp_path / "pc"), ZONES)
    out = tmp_path / "runs"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(tmp_path / "pc")], stdout=subprocess.PIPE,
                         text=True)
    p.stdout.readline()  # the span is open (the child's imports took their time before it)
    t0, n = time.monotonic(), 1
    while time.monotonic() - t0 < 3.0:
        p.stdout.readline()
        n += 1
    p.send_signal(signal.SIGKILL)
    p.wait()
    running = meter.load(out).iloc[0]
    assert running["status"] == "incomplete"
    # ~3 s open with 1 J per printed line: the last sample is at most 10% of 3 s (+ slack) old.
    assert n - 0.1 * 3.0 * (n / 3.0) - 15 <= running["energy_j"] <= n + 1
    assert running["duration_s"] >= 3.0 * 0.9 - 0.1


@pytest.mark.parametrize("how", ["arg", "env", "pyproject"])
@pytest.mark.parametrize("bad", ["0", "-1", "inf", "nan", "1e9", "soon"])
def test_bad_quiet_interval_is_refused_naming_it(tmp_path, how, bad):
    kw, environ, pyproject = {}, {}, None
    if how == "arg":
        if bad == "soon":
            kw["quiet_interval_s"] = bad
        else:
            kw["quiet_interval_s"] = float(bad)
    elif how == "env":
        environ["METER_QUIET_INTERVAL_S"] = bad
    else:
        pyproject = tmp_path / "pyproject.toml"
        pyproject.write_text(f"[tool.meter]\nquiet_interval_s = \"{bad}\"\n")
    with pytest.raises(ConfigError) as exc:
        meter.Meter(write=False, gpus="none", environ=environ, pyproject=str(pyproject) if pyproject else None, **kw)
    assert "quiet_interval_s" in str(exc.value)


def test_quiet_interval_from_env_is_recorded_and_a_shorter_one_means_fixed(tmp_path):
    m, _ = rapl_meter(tmp_path / "a", environ={"METER_QUIET_INTERVAL_S": "2.5"})
    m.start()
    m.close()
    info = json.load(open(os.path.join(m.run_dir, "run.json")))
    assert info["quiet_interval_s"] == 2.5 and info["config"]["sources"]["quiet_interval_s"].startswith("environment")
    m, _ = rapl_meter(tmp_path / "b", interval_s=0.5, quiet_interval_s=0.1)
    m.start()
    m.close()
    assert json.load(open(os.path.join(m.run_dir, "run.json")))["quiet_interval_s"] == 0.5
