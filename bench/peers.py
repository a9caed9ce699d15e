"""meter, CodeCarbon and Zeus side by side on the same emulated GPUs, in one run.

    python bench/peers.py [--quick] [--out bench/results/peers.md]

The peers are installed into the benchmark's own virtual environment (bench/.work/venv-peers:
meter from this checkout, codecarbon, zeus), never into meter's dependencies; the first run
creates it. All three tools load the emulated libnvidia-ml.so.1 (bench/fake_nvml) through the
real pynvml: two GPUs drawing square waves, energy counters updated every 100 ms as on real
drivers. Each tool measures each window in turn (sleeping inside it); the truth is the exact
integral over the interval between the tool's start call returning and its stop call starting,
so time a tool spends inside its own calls counts against it.

Also measured, each in a fresh process: import time, first start (construct + start + stop of
an empty window), start+stop overhead once warm (median of 30), and background CPU while a
window is open (process CPU time over 5 s after 2 s of warm-up, minus an idle process's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fake_nvml  # noqa: E402

DEVICES = [(100.0, 300.0, 0.5, 0.0), (50.0, 250.0, 0.37, 0.11)]
WINDOWS = (0.02, 0.1, 0.5, 2.0, 10.0)
VENV = os.path.join(HERE, ".work", "venv-peers")
TOOLS = ("meter", "zeus", "codecarbon")


# -- the tools, behind one start/stop interface -------------------------------------------------


class MeterTool:
    def __init__(self):
        import meter

        self.m = meter.Meter(write=False, rapl_root="/nonexistent", gpus="all", sync_cuda=False)
        self.m.start()  # sensors and the sampler start now, as they would at a run's first stage
        self.track = None

    def start(self):
        self.track = self.m.track("window")
        self.span = self.track.__enter__()

    def stop(self) -> float:
        self.track.__exit__(None, None, None)
        return self.span.energy_by_component["gpu"].energy_j

    def close(self):
        self.m.close()


class ZeusTool:
    def __init__(self):
        from zeus.monitor import ZeusMonitor

        self.z = ZeusMonitor(gpu_indices=[0, 1], cpu_indices=[])

    def start(self):
        self.z.begin_window("w", sync_execution=False)

    def stop(self) -> float:
        return sum(self.z.end_window("w", sync_execution=False).gpu_energy.values())

    def close(self):
        pass


class CodeCarbonTool:
    def __init__(self):
        import logging

        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self.cls = OfflineEmissionsTracker

    def start(self):
        self.t = self.cls(country_iso_code="FRA", save_to_file=False, log_level="error", gpu_ids=[0, 1],
                          allow_multiple_runs=True)
        self.t.start()

    def stop(self) -> float:
        self.t.stop()
        return float(self.t.final_emissions_data.gpu_energy) * 3.6e6  # kWh -> J

    def close(self):
        pass


def make(tool):
    return {"meter": MeterTool, "zeus": ZeusTool, "codecarbon": CodeCarbonTool}[tool]()


# -- workers (run inside the peers venv, with the emulated GPUs) --------------------------------


def worker_accuracy(quick: bool) -> None:
    tools = {name: make(name) for name in TOOLS}
    time.sleep(2.0)  # let meter learn the counter's update period, as in a real run's first seconds
    reps = 1 if quick else 3
    for w in WINDOWS:
        for rep in range(reps):
            for name, tool in tools.items():
                time.sleep(0.017 * (rep + 1))
                tool.start()
                a = time.perf_counter()
                time.sleep(w)
                b = time.perf_counter()
                e = tool.stop()
                truth = sum(fake_nvml.true_energy_j(d, a, b) for d in DEVICES)
                print(json.dumps({"tool": name, "window": w, "energy_j": e, "truth_j": truth}), flush=True)
    for tool in tools.values():
        tool.close()


def worker_overhead(name: str) -> None:
    cpu = time.process_time
    t0 = time.perf_counter()
    tool = make(name)
    tool.start()
    tool.stop()
    first = time.perf_counter() - t0
    costs = []
    for _ in range(30):
        a = time.perf_counter()
        tool.start()
        tool.stop()
        costs.append(time.perf_counter() - a)
    tool.start()
    time.sleep(2.0)  # past one-time start-up work (meter learns counter update periods here)
    c0, w0 = cpu(), time.perf_counter()
    time.sleep(5.0)
    busy = (cpu() - c0) / (time.perf_counter() - w0)
    tool.stop()
    tool.close()
    print(json.dumps({"tool": name, "first_start_s": first, "start_stop_s": statistics.median(costs), "cpu_busy": busy}))


def import_time(py: str, module: str, env: dict, rounds: int = 5) -> float:
    def run(code):
        t0 = time.perf_counter()
        subprocess.run([py, "-c", code], check=True, env=env, capture_output=True)
        return time.perf_counter() - t0

    return statistics.median(run(f"import {module}") - run("pass") for _ in range(rounds))


def idle_cpu(py: str) -> float:
    code = "import time\nc=time.process_time(); w=time.perf_counter(); time.sleep(5)\nprint((time.process_time()-c)/(time.perf_counter()-w))"
    return float(subprocess.run([py, "-c", code], check=True, capture_output=True, text=True).stdout)


# -- driver -------------------------------------------------------------------------------------


def ensure_venv() -> str:
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "-e", ROOT, "zeus"], check=True)
    return py


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "accuracy":
        worker_accuracy(args.quick)
        return 0
    if args.worker:
        worker_overhead(args.worker)
        return 0
    py = ensure_venv()
    lib = fake_nvml.build(os.path.join(HERE, ".work", "lib"))
    env = {**os.environ, **fake_nvml.env(lib, DEVICES, update_s=0.1)}
    p = subprocess.run([py, __file__, "--worker", "accuracy"] + (["--quick"] if args.quick else []),
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        return 1
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    over = {}
    for name in TOOLS:
        q = subprocess.run([py, __file__, "--worker", name], capture_output=True, text=True, env=env)
        if q.returncode != 0:
            sys.stderr.write(q.stderr)
            return 1
        over[name] = json.loads(q.stdout.strip().splitlines()[-1])
    base = idle_cpu(py)
    imports = {"meter": import_time(py, "meter", env), "zeus": import_time(py, "zeus.monitor", env),
               "codecarbon": import_time(py, "codecarbon", env)}
    text = report(rows, over, imports, base)
    header = (f"meter vs peers, {time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              "2 emulated GPUs (counters updated every 100 ms)\n\n")
    print(header + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# bench/peers.py\n\n" + header + text + "\n")
    return 0


def report(rows, over, imports, idle) -> str:
    lines = ["## GPU energy error against the truth (mean signed error; worst in brackets)", "",
             "| window (s) | truth (J) | meter | Zeus | CodeCarbon |", "|---|---|---|---|---|"]
    for w in WINDOWS:
        cells = []
        truth = statistics.mean(r["truth_j"] for r in rows if r["window"] == w)
        for name in TOOLS:
            errs = [100.0 * (r["energy_j"] - r["truth_j"]) / r["truth_j"] for r in rows if r["tool"] == name and r["window"] == w]
            cells.append(f"{statistics.mean(errs):+.2f}% ({max(errs, key=abs):+.2f}%)" if errs else "-")
        lines.append(f"| {w:g} | {truth:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "## Costs (ratio = meter / peer; below 1 means meter is cheaper)", "",
              "| measure | meter | Zeus | CodeCarbon | meter/Zeus | meter/CodeCarbon |", "|---|---|---|---|---|---|"]

    def row(label, vals, unit, scale=1.0, digits=2):
        m, z, c = (vals[t] * scale for t in TOOLS)
        fmt = f"{{:.{digits}f}} {unit}"
        lines.append(f"| {label} | {fmt.format(m)} | {fmt.format(z)} | {fmt.format(c)} | "
                     f"{m / z if z else float('nan'):.2f} | {m / c if c else float('nan'):.2f} |")

    row("import", imports, "ms", 1000, 0)
    row("first start (construct + start + stop)", {t: over[t]["first_start_s"] for t in TOOLS}, "ms", 1000, 1)
    row("start + stop, warm (median of 30)", {t: over[t]["start_stop_s"] for t in TOOLS}, "ms", 1000, 3)
    row("background CPU while open", {t: max(over[t]["cpu_busy"] - idle, 0.0) for t in TOOLS}, "% of a core", 100, 2)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
