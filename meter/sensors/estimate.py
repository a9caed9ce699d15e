"""Estimated CPU and RAM energy, for when no hardware counter can be read.

CPU: watts per busy hardware thread times the CPU time of the measured processes. The figure per
thread is the model's TDP (from codecarbon's packaged ``cpu_power.csv``, read as a data file)
over the model's hardware threads, so a 2-vCPU VM of a 64-core part is charged two threads'
worth, not a whole socket; ``cpu_power_w`` sets it; an unknown model or thread count uses
:data:`DEFAULT_W_PER_THREAD`. Idle power of the machine is not attributed to the job.

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

#: Watts per busy hardware thread for a CPU whose TDP or thread count is unknown.
DEFAULT_W_PER_THREAD = 4.0
DEFAULT_SOURCE = "CodeCarbon's figure for CPUs it does not know: 4 W per thread"
RAM_W_PER_GB = 0.3725
RSS_EVERY_S = 1.0
RAM_SOURCE = "Green Algorithms (Lannelongue et al. 2021), memoryPower 0.3725 W/GB"

_CORES = re.compile(r"(\d+)[- ]core", re.I)
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
def _tdp_rows() -> tuple[tuple[str, str, float], ...]:
    """codecarbon's ``cpu_power.csv`` as (name, lowercased name, TDP W), read once."""
    data = codecarbon_data_dir()
    if data is None:
        return ()
    rows = []
    with open(os.path.join(data, "hardware", "cpu_power.csv"), encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            try:
                rows.append((row["Name"], row["Name"].lower(), float(row["TDP"])))
            except (KeyError, ValueError, AttributeError):
                continue
    return tuple(rows)


@lru_cache(maxsize=16)
def lookup_tdp(model: str) -> tuple[float | None, str]:
    """TDP in W for a CPU model string, and where it came from.

    A table row matches when every token of its name appears in the model string; the longest
    such name wins, so "Xeon Gold 6248R" beats "Xeon Gold 6248" only when the R is present.
    """
    table = _tdp_rows()
    if not table:
        return None, "codecarbon's cpu_power.csv not found (pip install codecarbon)"
    have = set(_tokens(model))
    # A matching row has a token with a digit that is one of the model's tokens, and each of a
    # row's tokens is a substring of its lowercased name: only those rows are tokenised.
    keys = [t for t in have if any(ch.isdigit() for ch in t)]
    best = None
    for name, lower, tdp in table:
        if not any(k in lower for k in keys):
            continue
        toks = _tokens(name)
        if toks and have.issuperset(toks) and any(any(ch.isdigit() for ch in t) for t in toks):
            if best is None or len(toks) > len(best[0]):
                best = (toks, name, tdp)
    if best is None:
        return None, f"CPU model {model!r} not in codecarbon's cpu_power.csv"
    return best[2], f"codecarbon cpu_power.csv row {best[1]!r}"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo, plus ``flags`` (empty off Linux)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                out.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    return out


def cpu_model() -> str:
    info = _cpuinfo()
    for k in ("model name", "hardware", "cpu model"):
        if info.get(k):
            return info[k]
    import platform

    return platform.processor() or "unknown"


def socket_count() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            ids = {line.split(":", 1)[1].strip() for line in f if line.startswith("physical id")}
        return max(1, len(ids))
    except OSError:
        return 1


def model_threads(model: str, info: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Hardware threads of one package of this CPU model, and how that was found: the core count
    in the model name ("64-Core") times threads per core, or, on bare metal, /proc/cpuinfo's
    ``siblings``. None inside a VM whose model name states no core count: a VM's cpuinfo
    describes its own vCPUs, not the package."""
    info = _cpuinfo() if info is None else info
    try:
        per_core = max(1, int(info.get("siblings", "1")) // max(1, int(info.get("cpu cores", "1"))))
    except ValueError:
        per_core = 1
    vm = "hypervisor" in info.get("flags", "")
    m = _CORES.search(model)
    if m:
        # A VM's topology is its own: server CPUs run two threads per core.
        smt, how = (2, "assumed in a VM") if vm else (per_core, "from /proc/cpuinfo")
        return int(m.group(1)) * smt, f"{m.group(1)} cores in the model name x {smt} threads per core ({how})"
    if not vm and info.get("siblings", "").isdigit():
        return int(info["siblings"]), "siblings in /proc/cpuinfo (bare metal)"
    return None, "a VM whose CPU model states no core count"


def visible_threads() -> int:
    """Hardware threads this process may run on (its CPU affinity; cgroup quotas are not read)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_power_per_thread(model: str, *, cpu_power_w: float | None = None, cpu_tdp_w: float | None = None,
                         info: dict[str, str] | None = None) -> tuple[float, str, dict]:
    """Watts per busy hardware thread for the CPU estimate, where the figure came from, and the
    inputs (for the record). ``cpu_power_w`` (per thread) wins; then the package TDP (given, or
    from codecarbon's table) over the model's thread count; else :data:`DEFAULT_W_PER_THREAD`."""
    if cpu_power_w is not None:
        return float(cpu_power_w), "given by the user (cpu_power_w)", {}
    if cpu_tdp_w is not None:
        tdp, src = float(cpu_tdp_w), "given by the user (cpu_tdp_w)"
    else:
        tdp, src = lookup_tdp(model)
    threads, how = model_threads(model, info)
    if tdp is not None and threads:
        return tdp / threads, f"TDP {tdp:g} W ({src}) / {threads} threads ({how})", {"tdp_w": tdp, "model_threads": threads}
    why = src if tdp is None else f"TDP {tdp:g} W known but not the thread count ({how})"
    return DEFAULT_W_PER_THREAD, f"default {DEFAULT_W_PER_THREAD:g} W per thread ({DEFAULT_SOURCE}); {why}", {}


def _tree_cpu_s(procs) -> float:
    import psutil

    total = 0.0
    for p in procs:
        try:
            ct = p.cpu_times()
            total += ct.user + ct.system + ct.children_user + ct.children_system
        except psutil.Error:
            continue
    return total


class EstimateSensor:
    """``cpu:estimate`` (cumulative J from CPU time) and ``dram:estimate`` (W from RSS).

    ``pid``: None for this process (and the children it reaped), a pid for that process's tree,
    or ``"children"`` for this process's children only (``meter run``: the command, not meter).
    """

    name = "estimate"
    #: For this process, a span edge does not read the estimates: it extends both from the sampler
    #: thread's last reading at their last rate (an estimate is a model; reading CPU time and
    #: resident memory at every edge would cost the user's loop more than it changes the figure),
    #: and reads them itself only after a quiet stretch (``odometer.EXTEND_MAX_S``); so does a
    #: ``pid=`` tree, whose read walks the process table (about 1 ms). For ``meter run``'s command
    #: tree (``pid="children"``, two edges) the CPU time is read at every edge (:meth:`read_edge`):
    #: there it is the whole figure, and the command may have ended since the last tick.
    reads_at_edges = False

    def __init__(self, *, cpu: bool = True, ram: bool = True, cpu_tdp_w: float | None = None,
                 cpu_power_w: float | None = None, pid: int | str | None = None, model: str | None = None):
        self._pid = pid
        self.reads_at_edges = pid == "children"
        self._proc = None
        self._rss_t = -1e9
        self._rss_w = 0.0
        self._peak_cpu_s = 0.0
        self.model = model or cpu_model()
        self.w_per_thread, self.power_source, inputs = cpu_power_per_thread(
            self.model, cpu_power_w=cpu_power_w, cpu_tdp_w=cpu_tdp_w, info=None if model is None else {})
        self.visible = visible_threads()
        scope = {None: "this process", "children": "the processes this one started"}.get(pid, f"process tree of pid {pid}")
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
                        "model": "W per hardware thread x busy thread-seconds; machine idle power not attributed",
                        "w_per_thread": self.w_per_thread,
                        "power_source": self.power_source,
                        "visible_threads": self.visible,
                        "max_process_w": self.w_per_thread * self.visible,
                        **inputs,
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
            return f"{self.w_per_thread:.3g} W per busy hardware thread from {self.power_source}, times CPU time"
        return f"{RAM_W_PER_GB} W/GB of resident memory ({RAM_SOURCE})"

    def _cpu_seconds(self) -> float:
        if self._pid is None:
            # process_time has ns resolution (os.times ticks every 10 ms); reaped children from os.times.
            t = os.times()
            return time.process_time() + t.children_user + t.children_system
        import psutil

        if self._pid == "children":
            # Live descendants (each with the children it reaped) plus the children this process
            # reaped: the command's tree, counted once, without meter's own polling.
            try:
                procs = psutil.Process().children(recursive=True)
            except psutil.Error:
                procs = []
            t = os.times()
            return _tree_cpu_s(procs) + t.children_user + t.children_system
        try:
            root = psutil.Process(self._pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            procs = []
        return _tree_cpu_s(procs)

    def _cpu_j(self) -> float:
        # CPU time only grows; a process dying between reads must not make energy go backwards.
        secs = self._cpu_seconds()
        if secs > self._peak_cpu_s:
            self._peak_cpu_s = secs
        return self._peak_cpu_s * self.w_per_thread

    def _ram_w(self) -> float:
        # Resident memory moves slowly; reading it (a /proc parse) at most every RSS_EVERY_S keeps
        # the sampler's ticks cheap. The sampler integrates the held value, like any power reading.
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
            elif self._pid == "children":
                rss = sum(c.memory_info().rss for c in psutil.Process().children(recursive=True))
            else:
                root = psutil.Process(self._pid)
                rss = root.memory_info().rss + sum(
                    c.memory_info().rss for c in root.children(recursive=True)
                )
        except psutil.Error:
            rss = 0
        return rss / BYTES_PER_GB * RAM_W_PER_GB

    def read(self) -> tuple:
        return tuple(_call(r) for r in self._readers)

    def read_edge(self) -> tuple:
        """A span edge of ``meter run``'s estimate: the command tree's CPU time now; RAM (resident
        memory moves slowly) is left to the sampler thread."""
        return tuple(_call(r) if r == self._cpu_j else None for r in self._readers)

    def close(self) -> None:
        pass


def _call(reader):
    try:
        return reader()
    except OSError as exc:
        return Fault(f"estimate read failed: {exc}")
