"""Fakes at the hardware boundary, for meter's tests and yours.

- :class:`FakeClock`: a clock you advance by hand.
- :class:`FakeSensor`: a sensor whose channel values you set.
- :class:`FakeNVML`: a binding with pynvml's own function names that raises pynvml's own
  ``NVMLError`` codes, for GPUs whose energy and power you control. Pass it as ``Meter(nvml=...)``.
- :func:`write_rapl_tree`: a real powercap directory tree on disk whose counters you advance
  (and wrap) in place, as the kernel does. Pass its root as ``Meter(rapl_root=...)``.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

from .sensors import COUNTER, Channel, Fault
from .units import MJ_PER_J, MW_PER_W, UJ_PER_J, mj_to_j


class FakeClock:
    """Monotonic and wall time that move only when told (``advance``), thread-safe."""

    def __init__(self, start: float = 1000.0, wall: float = 1_790_000_000.0):
        self._t = start
        self._wall0 = wall - start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._t

    def wall(self) -> float:
        return self._t + self._wall0

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds


class FakeSensor:
    """A sensor with channels whose next values you set: ``values[key] = J or W or Fault``."""

    def __init__(self, channels: list[Channel], name: str = "fake"):
        self.name = name
        self.channels = tuple(channels)
        self.values: dict[str, object] = {c.key: 0.0 for c in channels}
        self.reads = 0
        self.closed = False
        self.raise_on_read: Exception | None = None

    @classmethod
    def counter(cls, key: str = "gpu:0", component: str = "gpu", wrap_j: float | None = None,
                update_period_s: float | None = 0.0, max_power_w: float | None = None) -> "FakeSensor":
        """One energy counter. By default it declares itself continuous (``update_period_s=0``):
        values set by hand are exact. Pass ``None`` to let the sampler learn a period, and
        ``max_power_w`` to have its deltas checked for plausibility as real sensors' are."""
        details = {} if update_period_s is None else {"update_period_s": update_period_s}
        if max_power_w is not None:
            details["max_power_w"] = max_power_w
        return cls([Channel(key, component, key, "energy", COUNTER, wrap_j=wrap_j, details=details)])

    def read(self) -> tuple:
        self.reads += 1
        if self.raise_on_read is not None:
            raise self.raise_on_read
        return tuple(self.values[c.key] for c in self.channels)

    def close(self) -> None:
        self.closed = True


# -- NVML --------------------------------------------------------------------------------------


@dataclass
class FakeGPU:
    """One fake GPU. ``power_w`` is a number or a function of the fake's time (seconds).

    Energy is the exact integral of power; with ``update_period_s`` the counter only moves at
    multiples of it, as real drivers do (~0.1 s). ``energy=False`` makes the energy call raise
    NOT_SUPPORTED (pre-Volta); ``instant=False`` makes field 186 unavailable.
    """

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    power_w: float | Callable[[float], float] = 100.0
    energy: bool = True
    instant: bool = True
    frozen: bool = False  # the energy counter stops moving (a stalled driver); power still reads
    update_period_s: float = 0.0
    mig_uuids: list[str] = field(default_factory=list)
    fail_code: int | None = None  # every call on this device raises this NVML error code
    start_energy_mj: int = 5_000_000
    max_power_w: float = 700.0  # the power limit NVML states (nvmlDeviceGetPowerManagementLimitConstraints)

    def power_at(self, t: float) -> float:
        return self.power_w(t) if callable(self.power_w) else float(self.power_w)


class FakeNVML:
    """A pynvml-compatible binding over :class:`FakeGPU` objects, driven by ``clock``.

    Only constant power or piecewise functions are integrated exactly: energy is accumulated by
    :meth:`advance` (call it instead of advancing the clock yourself), by steps of ``dt``.
    """

    def __init__(self, gpus: list[FakeGPU], clock: FakeClock | None = None, init_error: int | None = None,
                 driver: str = "560.35.03"):
        import pynvml

        self.NVMLError = pynvml.NVMLError
        self._pynvml = pynvml
        self.gpus = list(gpus)
        self.clock = clock or FakeClock()
        self.init_error = init_error
        self.driver = driver
        self.initialised = 0
        self._energy_j = [mj_to_j(g.start_energy_mj) for g in self.gpus]
        self._t = self.clock.monotonic()
        self._latched = list(self._energy_j)
        self._frozen: dict[int, float] = {}
        self._next_update = [None if not g.update_period_s else (math.floor(self._t / g.update_period_s) + 1) * g.update_period_s
                             for g in self.gpus]

    # time ----------------------------------------------------------------------------------
    def advance(self, seconds: float, dt: float = 0.001) -> None:
        """Move the clock and integrate every GPU's power over the step (midpoint rule). A GPU
        with ``update_period_s`` latches the exact integral at each update boundary, as a driver
        publishes its counter."""
        remaining = seconds
        while remaining > 1e-12:
            step = min(dt, remaining)
            for nxt in self._next_update:
                if nxt is not None and nxt - self._t > 1e-12:
                    step = min(step, nxt - self._t)
            mid = self._t + step / 2
            for i, g in enumerate(self.gpus):
                self._energy_j[i] += g.power_at(mid) * step
            self._t += step
            self.clock.advance(step)
            remaining -= step
            for i, g in enumerate(self.gpus):
                nxt = self._next_update[i]
                if nxt is not None and self._t >= nxt - 1e-12:
                    self._latched[i] = self._energy_j[i]
                    self._next_update[i] = nxt + g.update_period_s

    def true_energy_j(self, index: int) -> float:
        return self._energy_j[index]

    # pynvml API ----------------------------------------------------------------------------
    def _err(self, code: int):
        return self.NVMLError(code)

    def _dev(self, handle) -> FakeGPU:
        g = self.gpus[handle]
        if g.fail_code is not None:
            raise self._err(g.fail_code)
        return g

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self._err(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise self._err(self._pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetUUID(self, handle) -> str:
        if isinstance(handle, tuple):
            return self.gpus[handle[0]].mig_uuids[handle[1]]
        return self._dev(handle).uuid

    def nvmlDeviceGetName(self, handle) -> str:
        return self._dev(handle).name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        g = self._dev(handle)
        if not g.energy:
            raise self._err(self._pynvml.NVML_ERROR_NOT_SUPPORTED)
        # A driver publishes the integral as of its last update (exact here).
        e = self._latched[handle] if g.update_period_s else self._energy_j[handle]
        if g.frozen:
            e = self._frozen.setdefault(handle, e)
        return int(e * MJ_PER_J)

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        g = self._dev(handle)
        return int(round(g.power_at(self._t) * MW_PER_W))

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle) -> tuple[int, int]:
        g = self._dev(handle)
        return int(g.max_power_w * MW_PER_W * 0.2), int(g.max_power_w * MW_PER_W)

    def nvmlDeviceGetFieldValues(self, handle, field_ids):
        g = self._dev(handle)
        arr = (self._pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for i, fid in enumerate(field_ids):
            arr[i].fieldId = fid
            if fid == 186 and g.instant:
                arr[i].nvmlReturn = 0
                arr[i].valueType = 1  # unsigned int, mW
                arr[i].value.uiVal = int(round(g.power_at(self._t) * MW_PER_W))
            else:
                arr[i].nvmlReturn = self._pynvml.NVML_ERROR_NOT_SUPPORTED
        return arr

    def nvmlDeviceGetMigMode(self, handle):
        g = self._dev(handle)
        if not g.mig_uuids:
            return (0, 0)
        return (1, 1)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle) -> int:
        return len(self._dev(handle).mig_uuids)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        g = self._dev(handle)
        if index >= len(g.mig_uuids):
            raise self._err(self._pynvml.NVML_ERROR_NOT_FOUND)
        return (handle, index)


# -- RAPL --------------------------------------------------------------------------------------


class RaplTree:
    """A powercap tree on disk. ``add(zone, joules)`` advances a counter in place, wrapping."""

    def __init__(self, root: str, zones: dict[str, dict]):
        self.root = root
        self.zones = zones

    def path(self, zone: str) -> str:
        parent = zone.rsplit(":", 1)[0] if zone.count(":") == 2 else None
        if parent:
            return os.path.join(self.root, "intel-rapl", parent, zone)
        return os.path.join(self.root, "intel-rapl", zone)

    def read_uj(self, zone: str) -> int:
        with open(os.path.join(self.path(zone), "energy_uj")) as f:
            return int(f.read())

    def set_uj(self, zone: str, value: int) -> None:
        # In place, same inode, one fixed-width write: like sysfs, a reader holding the file open
        # sees either the old or the new number, never a torn one.
        fd = os.open(os.path.join(self.path(zone), "energy_uj"), os.O_WRONLY)
        try:
            os.pwrite(fd, (str(int(value)).ljust(20) + "\n").encode(), 0)
        finally:
            os.close(fd)

    def add(self, zone: str, joules: float) -> None:
        z = self.zones[zone]
        rng = z.get("max_energy_range_uj", 262143328850)
        self.set_uj(zone, (self.read_uj(zone) + int(round(joules * UJ_PER_J))) % rng)


def write_rapl_tree(root: str, zones: dict[str, dict] | None = None) -> RaplTree:
    """Write a powercap tree under ``root`` (``root/intel-rapl/intel-rapl:0/...`` plus the
    top-level symlinks the kernel makes). ``zones`` maps zone ids to attributes, e.g.
    ``{"intel-rapl:0": {"name": "package-0", "energy_uj": 1000}, "intel-rapl:0:0": {"name": "dram"}}``.
    An attribute set to ``None`` is left out (a zone missing ``energy_uj``, say).
    """
    if zones is None:
        zones = {
            "intel-rapl:0": {"name": "package-0"},
            "intel-rapl:0:0": {"name": "core"},
            "intel-rapl:0:1": {"name": "dram"},
            "intel-rapl:1": {"name": "package-1"},
            "intel-rapl:1:0": {"name": "dram"},
        }
    tree = RaplTree(root, zones)
    os.makedirs(os.path.join(root, "intel-rapl"), exist_ok=True)
    for zone in sorted(zones, key=lambda z: z.count(":")):
        attrs = {"energy_uj": 1_000_000, "max_energy_range_uj": 262143328850, "enabled": 1, **zones[zone]}
        d = tree.path(zone)
        os.makedirs(d, exist_ok=True)
        for k, v in attrs.items():
            if v is None:
                continue
            with open(os.path.join(d, k), "w") as f:
                f.write(f"{v}".ljust(20) + "\n" if k == "energy_uj" else f"{v}\n")
        if zone.count(":") == 1:
            link = os.path.join(root, zone)
            if not os.path.lexists(link):
                os.symlink(d, link)
    return tree


__all__ = ["FakeClock", "FakeSensor", "FakeGPU", "FakeNVML", "RaplTree", "write_rapl_tree", "Fault"]
