"""Build and describe the emulated libnvidia-ml.so.1 (see fake_nvml.c)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "fake_nvml.c")


def build(out_dir: str) -> str:
    """Compile the library with the system C compiler into ``out_dir``; returns that directory
    (put it on LD_LIBRARY_PATH). Rebuilds only when the source is newer."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) found: install one (Debian: apt-get install gcc)")
    os.makedirs(out_dir, exist_ok=True)
    lib = os.path.join(out_dir, "libnvidia-ml.so.1")
    if not os.path.exists(lib) or os.path.getmtime(lib) < os.path.getmtime(SOURCE):
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", lib, SOURCE, "-lm"], check=True)
    # CodeCarbon looks for GPUs only if `nvidia-smi --help` runs; a stand-in that says so.
    smi = os.path.join(out_dir, "nvidia-smi")
    with open(smi, "w") as f:
        f.write("#!/bin/sh\necho 'nvidia-smi stand-in for the emulated libnvidia-ml.so.1 (meter benchmarks)'\n")
    os.chmod(smi, 0o755)
    return out_dir


def env(lib_dir: str, devices: list[tuple[float, float, float, float]], *, update_s: float = 0.0,
        power: str = "instant", energy: bool = True) -> dict[str, str]:
    """Environment for a process that should see the emulated GPUs."""
    return {
        "LD_LIBRARY_PATH": lib_dir + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""),
        "PATH": lib_dir + os.pathsep + os.environ.get("PATH", ""),
        "FAKE_NVML_DEVICES": ";".join(",".join(f"{x:g}" for x in d) for d in devices),
        "FAKE_NVML_UPDATE": f"{update_s:g}",
        "FAKE_NVML_POWER": power,
        "FAKE_NVML_ENERGY": "1" if energy else "0",
    }


def true_energy_j(device: tuple[float, float, float, float], t0: float, t1: float) -> float:
    """Exact energy of a device's square wave over [t0, t1] (CLOCK_MONOTONIC seconds), the same
    closed form as the library's counter."""
    lo, hi, period, phase = device

    def cum(t):
        h = period / 2
        u = t + phase
        k = math.floor(u / period)
        r = u - k * period
        return k * (hi + lo) * h + (hi * r if r < h else hi * h + lo * (r - h))

    return cum(t1) - cum(t0)
