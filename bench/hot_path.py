"""meter's span edges and background thread against Zeus's windows, side by side in one run, on
the same two emulated GPUs (bench/fake_nvml, counters updated every 100 ms, read through the
real pynvml).

- **edges**: ``with m.track(...)`` entry + exit against ``ZeusMonitor.begin_window`` +
  ``end_window`` (``sync_execution=False``), back to back and with 20 ms of sleep inside (a
  realistic short step, where meter's edges read instantaneous power again); medians of
  interleaved rounds.
- **background CPU**: process CPU time over 10 s with one span open (after 2 s of warm-up),
  minus the same without a Meter, with the defaults (run log written; ticks spread out while no
  span edge happens) and with a fixed 10 Hz cadence; Zeus has no thread (0).

    bench/.work/venv-peers/bin/python bench/hot_path.py [--out bench/results/hot_path.md]
(``bench/peers.py`` builds that environment with Zeus in it.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fake_nvml  # noqa: E402

DEVICES = [(100.0, 300.0, 0.7, 0.0), (80.0, 250.0, 0.7, 0.2)]


def edges(n: int, inside_s: float):
    from zeus.monitor import ZeusMonitor

    import meter

    m = meter.Meter(write=False, rapl_root="/nonexistent", gpus="all", sync_cuda=False)
    m.start()
    z = ZeusMonitor(gpu_indices=[0, 1], cpu_indices=[])
    time.sleep(2.0)  # past the probe
    mt, zt = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        with m.track("w"):
            t1 = time.perf_counter()
            if inside_s:
                time.sleep(inside_s)
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        mt.append((t1 - t0) + (t3 - t2))
        t0 = time.perf_counter()
        z.begin_window("w", sync_execution=False)
        t1 = time.perf_counter()
        if inside_s:
            time.sleep(inside_s)
        t2 = time.perf_counter()
        z.end_window("w", sync_execution=False)
        t3 = time.perf_counter()
        zt.append((t1 - t0) + (t3 - t2))
    m.close()
    return statistics.median(mt), statistics.median(zt)


def background_cpu(seconds: float, quiet_interval_s: float | None) -> tuple[float, float, int]:
    """Process CPU over ``seconds`` with one span open, after 2 s, minus an idle process's; with
    the defaults (the run log written to a temporary directory), the quiet cadence as given."""
    import tempfile

    import meter

    cpu = time.process_time
    c0, w0 = cpu(), time.perf_counter()
    time.sleep(seconds)
    idle = (cpu() - c0) / (time.perf_counter() - w0)
    with tempfile.TemporaryDirectory() as out:
        m = meter.Meter(output_dir=out, rapl_root="/nonexistent", gpus="all", sync_cuda=False, region="FR",
                        quiet_interval_s=quiet_interval_s)
        c0, w0 = cpu(), time.perf_counter()
        with m.track("long"):
            time.sleep(2.0)  # the 1.5 s probe and the first second of fast polling
            c1, w1 = cpu(), time.perf_counter()
            t1 = m._session.sampler.ticks
            first = (c1 - c0) / (w1 - w0)
            time.sleep(seconds)
            busy = (cpu() - c1) / (time.perf_counter() - w1)
            ticks = m._session.sampler.ticks - t1
        m.close()
    return 100.0 * max(busy - idle, 0.0), 100.0 * max(first - idle, 0.0), ticks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    if "FAKE_NVML_DEVICES" not in os.environ:
        lib = fake_nvml.build(os.path.join(HERE, ".work", "lib"))
        env = {**os.environ, **fake_nvml.env(lib, DEVICES, update_s=0.1)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    import meter

    back = edges(3000, 0.0)
    step = edges(150, 0.02)
    cpu, first, ticks = background_cpu(a.seconds, None)  # the defaults: ticks spread out to 1 s
    fixed, _, fixed_ticks = background_cpu(a.seconds, 0.1)  # the fixed 10 Hz cadence of earlier releases
    lines = [f"meter {meter.__version__} vs Zeus, {time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, "
             f"{os.cpu_count()} CPUs, 2 emulated GPUs (counters updated every 100 ms)", "",
             "| measure | meter | Zeus | meter / Zeus | target |", "|---|---|---|---|---|",
             f"| span edges, back to back (median of 3000) | {back[0] * 1e6:.1f} µs | {back[1] * 1e6:.1f} µs | "
             f"{back[0] / back[1]:.2f} | ≤ 1.5 |",
             f"| span edges around a 20 ms step (median of 150) | {step[0] * 1e6:.1f} µs | {step[1] * 1e6:.1f} µs | "
             f"{step[0] / step[1]:.2f} | ≤ 1.5 |",
             f"| background CPU, one span open, {a.seconds:g} s after the first 2 s, defaults ({ticks} ticks) "
             f"| {cpu:.2f} % of a core | 0 (no thread) | - | ≤ 0.3 % |",
             f"| the same with `quiet_interval_s=0.1`: a fixed 10 Hz cadence ({fixed_ticks} ticks) "
             f"| {fixed:.2f} % of a core | 0 (no thread) | - | - |",
             f"| background CPU in the first 2 s (includes the start and the counter probe) | {first:.2f} % of a core | - | - | - |",
             "", "Both background runs write the run log (to a temporary directory), as a user's run does.",
             "With the defaults, ticks spread out while no span enters or exits (10 % of the quiet time, "
             "up to `quiet_interval_s` = 1 s)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write("# bench/hot_path.py\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
