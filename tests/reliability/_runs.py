"""Real run logs for the reliability suite: written by a real Meter in a child process that is
SIGKILLed while a span is open, so the directory holds every file a run can leave behind
(run.json, spans.jsonl, samples.csv, heartbeat.json)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    import meter
    m = meter.Meter(output_dir=sys.argv[1], region="FR", interval_s=0.02, gpus="none",
                    rapl_root=sys.argv[1] + "/no-rapl", run_name="victim")
    with m.track("prepare", samples=64, tags={"model": "tiny", "lr": 0.001}):
        sum(range(20000))
    with m.track("train", tags={"kind": "train"}) as t:
        with m.track("epoch-1", samples=128, tokens=4096):
            sum(range(20000))
    m.flush()
    open_span = m.track("epoch-2", samples=128)
    open_span.__enter__()
    sum(range(20000))
    hb = os.path.join(m.run_dir, "heartbeat.json")
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if any(o["name"] == "epoch-2" for o in json.load(open(hb))["open"]):
                rows = open(os.path.join(m.run_dir, "samples.csv")).read().splitlines()
                if len(rows) >= 4:
                    break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    print(m.run_dir, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def killed_run(out_dir: str) -> str:
    """A run directory left by a process killed with SIGKILL while ``epoch-2`` was open."""
    p = subprocess.run([sys.executable, "-c", _CHILD, out_dir], capture_output=True, text=True, timeout=120)
    run_dir = p.stdout.strip().splitlines()[-1]
    assert p.returncode == -9 and os.path.isfile(os.path.join(run_dir, "heartbeat.json")), p.stderr
    return run_dir


def copy_run(src: str, dst_parent: str, name: str) -> str:
    dst = os.path.join(dst_parent, name)
    shutil.copytree(src, dst)
    return dst
