"""The sensor protocol and its values: channels, faults, what was unavailable, provenance labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

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


