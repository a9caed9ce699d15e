"""What a span measured: read-only, versioned records, to and from plain dicts.

A :class:`Measurement` is deeply immutable: its mappings are read-only views over private
copies and its sequences are tuples, so a result handed to user code, a callback or a card can
never change under another reader. It is deliberately not hashable (it holds mappings); use
``(run_id, span_id)`` as a key.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

#: Version of every record meter writes (spans, samples header, run.json, heartbeat, job).
SCHEMA_VERSION = 1

#: Counts a span may carry: examples seen, input tokens (non-padding), generated tokens, FLOPs.
COUNT_NAMES = ("samples", "tokens", "output_tokens", "flops")

#: Span status values: closed normally; closed by an exception, a Meter closing while it was
#: open, or a process that died (rebuilt from the heartbeat); open (a snapshot); not measured
#: (opened in a forked child or after close).
STATUSES = ("complete", "incomplete", "open", "not-measured")


class DeviceEnergy(NamedTuple):
    """Energy of one channel (a GPU, a RAPL zone, an estimate) over a span."""

    key: str
    component: str
    label: str
    energy_j: float
    provenance: str  # counter | power-integrated | estimated
    scope: str
    shared: bool
    corrected: bool = False  # a short span corrected from instantaneous power


class ComponentEnergy(NamedTuple):
    """Energy of one component (gpu, cpu, dram) over a span; ``float()`` gives joules."""

    energy_j: float
    provenance: str  # counter | power-integrated | estimated | mixed
    devices: tuple[str, ...] = ()

    def __float__(self) -> float:
        return self.energy_j


def freeze(value: Any, depth: int = 0) -> Any:
    """A read-only deep copy: dicts become read-only mappings, lists and sets tuples. Containers
    nested deeper than 16 (a tag list that holds itself) are cut with a marker."""
    if isinstance(value, Mapping):
        if depth > 16:
            return "<nested too deep>"
        return MappingProxyType({k: freeze(v, depth + 1) for k, v in value.items()})
    if isinstance(value, (list, tuple, set, frozenset)) and not hasattr(value, "_fields"):
        if depth > 16:
            return "<nested too deep>"
        return tuple(freeze(v, depth + 1) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain JSON-ready containers from :func:`freeze`'s output."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return [thaw(v) for v in value]
    return value


_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True, eq=True)
class Measurement:
    """Everything known about one span. Immutable and versioned (``schema_version``).

    Energies in joules, powers in watts, durations in seconds. ``energy_j`` is the total of all
    components, measured and estimated (``measured_energy_j`` + ``estimated_energy_j``); it is
    None when no sensor could be read, never a silent zero.
    """

    name: str
    path: str
    span_id: int
    parent_id: int | None
    depth: int
    run_id: str | None
    start_utc: str
    end_utc: str
    duration_s: float
    energy_j: float | None
    measured_energy_j: float | None
    estimated_energy_j: float | None
    energy_by_component: Mapping[str, ComponentEnergy]
    devices: tuple[DeviceEnergy, ...]
    avg_power_w: float | None
    peak_power_w: float | None
    peak_power_by_component_w: Mapping[str, float]
    counts: Mapping[str, float]
    tags: Mapping[str, Any]
    interval_s: float
    warnings: tuple[str, ...]
    thread: str
    status: str = "complete"
    schema_version: int = SCHEMA_VERSION

    __hash__ = None  # type: ignore[assignment]  # holds mappings; key by (run_id, span_id)

    def __post_init__(self) -> None:
        for name in ("energy_by_component", "peak_power_by_component_w", "counts", "tags"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, freeze(value or {}))
        for name in ("devices", "warnings"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (hand-built: ``dataclasses.asdict`` deep-copies and is 20x slower).
        Per device only what varies per span; labels and scopes are in run.json's channels."""
        d = {f: getattr(self, f) for f in _FIELDS}
        d["energy_by_component"] = {
            k: {"energy_j": v.energy_j, "provenance": v.provenance, "devices": list(v.devices)}
            for k, v in self.energy_by_component.items()
        }
        d["devices"] = {x.key: {"energy_j": x.energy_j, "provenance": x.provenance, "corrected": x.corrected}
                        for x in self.devices}
        d["peak_power_by_component_w"] = dict(self.peak_power_by_component_w)
        d["counts"] = dict(self.counts)
        d["tags"] = thaw(self.tags)
        d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], channels: Mapping[str, Mapping[str, Any]] | None = None) -> "Measurement":
        """The inverse of :meth:`to_dict`. ``channels`` (run.json's, by key) restores device labels."""
        channels = channels or {}
        by_comp = {k: ComponentEnergy(float(v.get("energy_j") or 0.0), str(v.get("provenance")), tuple(v.get("devices") or ()))
                   for k, v in (d.get("energy_by_component") or {}).items()}
        devices = []
        for key, v in (d.get("devices") or {}).items():
            ch = channels.get(key, {})
            devices.append(DeviceEnergy(key, str(ch.get("component", key.split(":")[0])), str(ch.get("label", key)),
                                        float(v.get("energy_j") or 0.0), str(v.get("provenance")),
                                        str(ch.get("scope", "device")), bool(ch.get("shared", False)),
                                        bool(v.get("corrected", False))))
        kw = {f: d.get(f) for f in _FIELDS}
        kw.update(energy_by_component=by_comp, devices=tuple(devices),
                  peak_power_by_component_w=d.get("peak_power_by_component_w") or {},
                  counts=d.get("counts") or {}, tags=d.get("tags") or {}, warnings=tuple(d.get("warnings") or ()),
                  status=d.get("status") or "complete", schema_version=d.get("schema_version") or SCHEMA_VERSION)
        return cls(**kw)

    def _repr_html_(self) -> str:
        return measurement_html(self)


_FIELDS = tuple(f.name for f in fields(Measurement))


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g} {unit}"


def measurement_html(r: Measurement) -> str:
    """A small HTML table of one result, for notebooks. Every name is escaped."""
    e = html.escape
    rows = [("status", e(r.status)), ("duration", _fmt(r.duration_s, "s")), ("energy", _fmt(r.energy_j, "J")),
            ("avg power", _fmt(r.avg_power_w, "W")), ("peak power", _fmt(r.peak_power_w, "W"))]
    for comp, ce in r.energy_by_component.items():
        rows.append((e(comp), f"{_fmt(ce.energy_j, 'J')} <small>({e(ce.provenance)})</small>"))
    for k, v in r.counts.items():
        rows.append((e(k), f"{v:.4g}"))
    body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows)
    notes = "".join(f"<li>{e(w)}</li>" for w in r.warnings)
    return (f"<div><b>{e(r.path)}</b><table>{body}</table>"
            + (f"<ul style='font-size:smaller'>{notes}</ul>" if notes else "") + "</div>")


__all__ = ["SCHEMA_VERSION", "COUNT_NAMES", "STATUSES", "DeviceEnergy", "ComponentEnergy", "Measurement", "freeze", "thaw"]
