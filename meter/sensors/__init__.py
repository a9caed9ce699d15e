"""Reading hardware, and nothing else.

A sensor owns a few *channels* (one per device or zone). ``Sensor.read()`` returns one value per
channel, in channel order: cumulative joules for ``mode="energy"`` channels, watts for
``mode="power"`` channels, or a :class:`Fault` when that channel could not be read this time.
Sensors never raise from ``read()`` for hardware trouble; they interpret their own errors into a
``Fault`` with a reason and a hint. Turning values into energy is the sampler's job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

log = logging.getLogger("meter")

#: Provenance labels, strongest first.
COUNTER = "counter"
POWER_INTEGRATED = "power-integrated"
ESTIMATED = "estimated"

COMPONENTS = ("gpu", "cpu", "dram")


@dataclass(frozen=True)
class Channel:
    """One energy source: a GPU, a RAPL zone, or an estimated component.

    ``key`` is unique within a run (``gpu:0``, ``cpu:package-0``, ``dram:package-0``,
    ``cpu:estimate``). ``wrap_j`` is the counter range for counters that wrap (RAPL),
    ``None`` for counters that do not. ``scope`` says what physical thing the reading covers.
    """

    key: str
    component: str
    label: str
    mode: str  # "energy" (cumulative J) or "power" (W)
    provenance: str  # COUNTER, POWER_INTEGRATED or ESTIMATED
    scope: str = "device"
    wrap_j: float | None = None
    shared: bool = False  # reading covers more than this job (MIG slice, whole socket)
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "component": self.component,
            "label": self.label,
            "mode": self.mode,
            "provenance": self.provenance,
            "scope": self.scope,
            "shared": self.shared,
        }
        if self.wrap_j is not None:
            out["wrap_j"] = self.wrap_j
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class Fault:
    """A channel that could not be read. ``permanent`` faults disable the channel for the run."""

    reason: str
    hint: str = ""
    permanent: bool = False


@dataclass(frozen=True)
class Unavailable:
    """A sensor, or a device in it, that was not used, with why and how to fix it."""

    sensor: str
    reason: str
    hint: str = ""
    kind: str = "missing"  # "missing", "permission", "error", "not-needed"

    def describe(self) -> dict[str, str]:
        return {"sensor": self.sensor, "reason": self.reason, "hint": self.hint, "kind": self.kind}


@runtime_checkable
class Sensor(Protocol):
    """A backend: a name, its channels, and one ``read()`` returning a value or Fault per channel."""

    name: str
    channels: Sequence[Channel]

    def read(self) -> tuple: ...

    def close(self) -> None: ...


@dataclass
class Discovery:
    """What :func:`discover` found: sensors to use, and what was not available and why."""

    sensors: list = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> list[Channel]:
        return [c for s in self.sensors for c in s.channels]


def discover(
    *,
    gpus: Any = "visible",
    rapl_root: str = "/sys/class/powercap",
    nvml: Any = None,
    estimate: bool = True,
    cpu_tdp_w: float | None = None,
    pid: int | None = None,
    environ: dict[str, str] | None = None,
    host_owner: bool = True,
    ranks: tuple[int, int] | None = None,
) -> Discovery:
    """Find every readable sensor. Never raises for hardware trouble: problems become
    :class:`Unavailable` entries. Raises :class:`~meter.errors.ConfigError` only for a bad
    ``gpus`` selection, which is the caller's input.

    CPU and DRAM are estimated only when RAPL gives no package counter; the estimate is always
    labelled ``estimated``. In a distributed job, ``host_owner=False`` (every rank but local rank
    0) leaves whole-socket RAPL counters to the owner, and ``ranks`` (local rank, local world size) pairs ranks with GPUs.
    """
    from . import nvml as nvml_mod
    from . import rapl as rapl_mod

    found = Discovery()
    if gpus == ():
        found.unavailable.append(Unavailable("nvml", "GPU measurement disabled (gpus='none')", "", "not-needed"))
    else:
        gpu_sensor, gpu_unavail, gpu_notes = nvml_mod.open_nvml(gpus=gpus, binding=nvml, environ=environ, ranks=ranks)
        if gpu_sensor is not None:
            found.sensors.append(gpu_sensor)
        found.unavailable.extend(gpu_unavail)
        found.notes.extend(gpu_notes)

    rapl_sensor, rapl_unavail, rapl_notes = rapl_mod.open_rapl(rapl_root)
    found.unavailable.extend(rapl_unavail)
    found.notes.extend(rapl_notes)
    have_cpu = False
    have_dram = False
    if rapl_sensor is not None and not host_owner:
        # The node's local rank 0 reads these whole-socket counters; they already contain this
        # process, so it neither reads nor estimates what they cover.
        have_cpu = any(c.component == "cpu" for c in rapl_sensor.channels)
        have_dram = any(c.component == "dram" for c in rapl_sensor.channels)
        rapl_sensor.close()
        rapl_sensor = None
        found.notes.append("RAPL counters are read by local rank 0 of this node (they cover the whole socket)")
    if rapl_sensor is not None:
        found.sensors.append(rapl_sensor)
        have_cpu = any(c.component == "cpu" for c in rapl_sensor.channels)
        have_dram = any(c.component == "dram" for c in rapl_sensor.channels)

    if estimate and not (have_cpu and have_dram):
        from . import estimate as est_mod

        est = est_mod.EstimateSensor(cpu=not have_cpu, ram=not have_dram, cpu_tdp_w=cpu_tdp_w, pid=pid)
        found.sensors.append(est)
        for comp in ("cpu", "dram"):
            if any(c.component == comp for c in est.channels):
                found.notes.append(
                    f"{comp} energy is estimated ({est.assumptions_text(comp)}); "
                    "no hardware counter was readable for it"
                )
    return found
