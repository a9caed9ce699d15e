"""Estimated CPU and RAM energy, for when no hardware counter can be read.

CPU: the CPU model's TDP (from codecarbon's packaged ``cpu_power.csv``, read as a data file)
times this process's share of the machine's CPU time: energy = TDP x sockets x CPU-seconds /
logical CPUs. Idle power of the machine is not attributed to the job. An unknown model uses
:data:`DEFAULT_TDP_W` per socket (the constant codecarbon uses for unknown CPUs).

RAM: :data:`RAM_W_PER_GB` per GB of this process's resident memory (Green Algorithms,
Lannelongue et al. 2021, ``memoryPower`` = 0.3725 W/GB), integrated over time by the sampler.

Both channels are labelled ``estimated`` with these assumptions recorded on them.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import time
from functools import lru_cache

from ..units import BYTES_PER_GB
from .base import ESTIMATED, Channel, Fault

DEFAULT_TDP_W = 85.0
RAM_W_PER_GB = 0.3725
RSS_EVERY_S = 0.1
RAM_SOURCE = "Green Algorithms (Lannelongue et al. 2021), memoryPower 0.3725 W/GB"

_NOISE = re.compile(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\bwith\b.*$|\d+-core", re.I)


def codecarbon_data_dir() -> str | None:
    """codecarbon's packaged ``data`` directory, found without importing codecarbon."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data")
    return path if os.path.isdir(path) else None


def _tokens(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9-]+", " ", _NOISE.sub(" ", text.lower())).split()


@lru_cache(maxsize=1)
def _tdp_table() -> tuple[tuple[tuple[str, ...], str, float], ...]:
    data = codecarbon_data_dir()
    if data is None:
        return ()
    rows = []
    with open(os.path.join(data, "hardware", "cpu_power.csv"), encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            try:
                rows.append((tuple(_tokens(row["Name"])), row["Name"], float(row["TDP"])))
            except (KeyError, ValueError):
                continue
    return tuple(rows)


def lookup_tdp(model: str) -> tuple[float | None, str]:
    """TDP in W for a CPU model string, and where it came from.

    A table row matches when every token of its name appears in the model string; the longest
    such name wins, so "Xeon Gold 6248R" beats "Xeon Gold 6248" only when the R is present.
    """
    table = _tdp_table()
    if not table:
        return None, "codecarbon's cpu_power.csv not found (pip install codecarbon)"
    have = set(_tokens(model))
    best = None
    for toks, name, tdp in table:
        if toks and have.issuperset(toks) and any(any(ch.isdigit() for ch in t) for t in toks):
            if best is None or len(toks) > len(best[0]):
                best = (toks, name, tdp)
    if best is None:
        return None, f"CPU model {model!r} not in codecarbon's cpu_power.csv"
    return best[2], f"codecarbon cpu_power.csv row {best[1]!r}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def socket_count() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            ids = {line.split(":", 1)[1].strip() for line in f if line.startswith("physical id")}
        return max(1, len(ids))
    except OSError:
        return 1


class EstimateSensor:
    """``cpu:estimate`` (cumulative J from CPU time) and ``dram:estimate`` (W from RSS)."""

    name = "estimate"

    def __init__(self, *, cpu: bool = True, ram: bool = True, cpu_tdp_w: float | None = None, pid: int | None = None,
                 model: str | None = None):
        self._pid = pid
        self._proc = None
        self._rss_t = -1e9
        self._rss_w = 0.0
        self._ncpu = os.cpu_count() or 1
        self._peak_cpu_s = 0.0
        self.model = model or cpu_model()
        sockets = socket_count()
        if cpu_tdp_w is not None:
            tdp, src = float(cpu_tdp_w), "given by the user (cpu_tdp_w)"
        else:
            tdp, src = lookup_tdp(self.model)
            if tdp is None:
                tdp, src = DEFAULT_TDP_W, f"default {DEFAULT_TDP_W:g} W per socket; {src}"
        self.tdp_w = tdp * sockets
        self.tdp_source = src
        self._j_per_cpu_s = self.tdp_w / self._ncpu
        scope = "this process" if pid is None else f"process tree of pid {pid}"
        channels, readers = [], []
        if cpu:
            channels.append(
                Channel(
                    key="cpu:estimate",
                    component="cpu",
                    label=f"{self.model} (estimated)",
                    mode="energy",
                    provenance=ESTIMATED,
                    scope=scope,
                    details={
                        "model": "TDP x CPU-seconds / logical CPUs; machine idle power not attributed",
                        "tdp_w": self.tdp_w,
                        "tdp_source": src,
                        "sockets": sockets,
                        "logical_cpus": self._ncpu,
                    },
                )
            )
            readers.append(self._cpu_j)
        if ram:
            channels.append(
                Channel(
                    key="dram:estimate",
                    component="dram",
                    label="RAM (estimated)",
                    mode="power",
                    provenance=ESTIMATED,
                    scope=scope,
                    details={"model": "resident memory x W/GB", "w_per_gb": RAM_W_PER_GB, "source": RAM_SOURCE},
                )
            )
            readers.append(self._ram_w)
        self.channels = tuple(channels)
        self._readers = tuple(readers)

    def assumptions_text(self, component: str) -> str:
        if component == "cpu":
            return f"TDP {self.tdp_w:g} W from {self.tdp_source}, times this job's share of CPU time"
        return f"{RAM_W_PER_GB} W/GB of resident memory ({RAM_SOURCE})"

    def _cpu_seconds(self) -> float:
        if self._pid is None:
            # process_time has ns resolution (os.times ticks every 10 ms); reaped children from os.times.
            t = os.times()
            return time.process_time() + t.children_user + t.children_system
        import psutil

        total = 0.0
        try:
            root = psutil.Process(self._pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                ct = p.cpu_times()
                total += ct.user + ct.system + ct.children_user + ct.children_system
            except psutil.Error:
                continue
        t = os.times()  # children this process already reaped
        return total + t.children_user + t.children_system

    def _cpu_j(self) -> float:
        # CPU time only grows; a process dying between reads must not make energy go backwards.
        secs = self._cpu_seconds()
        if secs > self._peak_cpu_s:
            self._peak_cpu_s = secs
        return self._peak_cpu_s * self._j_per_cpu_s

    def _ram_w(self) -> float:
        # Resident memory moves slowly; reading it (a /proc parse) at most every 0.1 s keeps span
        # edges cheap. The sampler integrates the held value, like any power reading.
        now = time.monotonic()
        if now - self._rss_t < RSS_EVERY_S:
            return self._rss_w
        self._rss_t = now
        self._rss_w = self._read_ram_w()
        return self._rss_w

    def _read_ram_w(self) -> float:
        import psutil

        try:
            if self._pid is None:
                if self._proc is None:
                    self._proc = psutil.Process()
                rss = self._proc.memory_info().rss
            else:
                root = psutil.Process(self._pid)
                rss = root.memory_info().rss + sum(
                    c.memory_info().rss for c in root.children(recursive=True)
                )
        except psutil.Error:
            rss = 0
        return rss / BYTES_PER_GB * RAM_W_PER_GB

    def read(self) -> tuple:
        out = []
        for r in self._readers:
            try:
                out.append(r())
            except OSError as exc:
                out.append(Fault(f"estimate read failed: {exc}"))
        return tuple(out)

    def close(self) -> None:
        pass
