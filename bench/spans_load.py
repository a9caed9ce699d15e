"""100,000 spans in a tight loop: throughput, memory growth and the unwritten backlog.

Side by side in one run: the same loop with ``contextlib.nullcontext`` (the floor), with an
in-memory Meter (``write=False``) and with a Meter writing its run log, all on one FakeSensor
counter so the sensor read costs nothing and the figures are meter's own. A monitor thread
samples the backlog (closed spans not yet written) every millisecond.

    python bench/spans_load.py [--spans 100000] [--out bench/results/spans_load.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import meter  # noqa: E402
from meter.testing import FakeSensor  # noqa: E402


def run(n: int, make):
    proc = psutil.Process()
    m = make()
    track = (lambda: contextlib.nullcontext()) if m is None else (lambda: m.track("step"))
    if m is not None:
        with m.track("warmup"):
            pass
        m.flush()
    rss0 = proc.memory_info().rss
    peak_age = peak_n = 0.0
    stop = threading.Event()
    rec = m._session.recorder if m is not None else None

    def monitor():
        nonlocal peak_age, peak_n
        while not stop.is_set():
            if rec is not None:
                peak_age = max(peak_age, rec.backlog_age_s())
                peak_n = max(peak_n, rec.backlog)
            time.sleep(0.001)

    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    t0 = time.perf_counter()
    for _ in range(n):
        with track():
            pass
    dt = time.perf_counter() - t0
    stop.set()
    mon.join()
    rss1 = proc.memory_info().rss
    rows = None
    if m is not None:
        m.close()
        if m.run_dir:
            with open(os.path.join(m.run_dir, "spans.jsonl")) as f:
                rows = sum(1 for _ in f) - 1  # minus the warm-up span
    return {"spans_per_s": n / dt, "us_per_span": dt / n * 1e6, "rss_growth_mb": (rss1 - rss0) / 2**20,
            "peak_backlog_age_s": peak_age, "peak_backlog": int(peak_n), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=100_000)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--out")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="meter-bench-")
    cases = {
        "nullcontext": lambda: None,
        "Meter(write=False)": lambda: meter.Meter(write=False, sensors=[FakeSensor.counter()], interval_s=a.interval),
        "Meter (run log)": lambda: meter.Meter(output_dir=tmp, sensors=[FakeSensor.counter()], interval_s=a.interval),
    }
    res = {k: run(a.spans, f) for k, f in cases.items()}
    floor = res["nullcontext"]["us_per_span"]
    lines = [f"meter {meter.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {a.spans:,} spans, "
             f"interval {a.interval} s, {time.strftime('%Y-%m-%d')}", "",
             "| loop | spans/s | µs/span | × nullcontext | RSS growth | peak backlog (spans) | peak backlog age | on disk |",
             "|---|---|---|---|---|---|---|---|"]
    for k, r in res.items():
        disk = "" if r["rows"] is None else f"{r['rows']:,}"
        lines.append(f"| {k} | {r['spans_per_s']:,.0f} | {r['us_per_span']:.1f} | {r['us_per_span'] / floor:.0f} | "
                     f"{r['rss_growth_mb']:.1f} MB | {r['peak_backlog']:,} | {r['peak_backlog_age_s']:.3f} s | "
                     f"{disk} |")
    lines += ["", "Targets (issue 10): memory growth under 64 MB; unwritten backlog at most about one sampling "
              f"interval ({a.interval} s) at any span rate; every span on disk."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
