"""The span tree: names, nesting through a ContextVar, boundary reads, counts, results.

Entry and exit are on the user's hot path: each reads the sensors once (through the sampler) and
appends to a queue. Everything else (energy arithmetic, warnings, the record) is computed lazily
from the two snapshots, on first access or on the sampler thread when the record is written.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any, Mapping, NamedTuple

from .clock import utc_iso
from .errors import ConfigError
from .sensors import COMPONENTS, COUNTER, ESTIMATED

SCHEMA_VERSION = 1
COUNT_NAMES = ("samples", "tokens", "output_tokens", "flops")

_current: ContextVar["Span | None"] = ContextVar("meter_current_span", default=None)
_ids = itertools.count(1)


def current_span() -> "Span | None":
    """The innermost open span in this context, or None."""
    span = _current.get()
    while span is not None and span.closed:  # e.g. left open and then closed by Meter.close()
        span = span.parent
    return span


class DeviceEnergy(NamedTuple):
    """Energy of one channel over a span (a NamedTuple: cheap to build on every span close)."""

    key: str
    component: str
    label: str
    energy_j: float
    provenance: str
    scope: str
    shared: bool
    corrected: bool = False


class ComponentEnergy(NamedTuple):
    """Energy of one component (gpu, cpu, dram) over a span; ``float()`` gives joules."""

    energy_j: float
    provenance: str  # counter | power-integrated | estimated | mixed
    devices: tuple[str, ...] = ()

    def __float__(self) -> float:
        return self.energy_j


@dataclass(frozen=True)
class Measurement:
    """Everything known about one closed span. Immutable and versioned (``schema_version``)."""

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (hand-built: ``dataclasses.asdict`` deep-copies and is 20x slower)."""
        d = {f: getattr(self, f) for f in _MEASUREMENT_FIELDS}
        d["energy_by_component"] = {
            k: {"energy_j": v.energy_j, "provenance": v.provenance, "devices": list(v.devices)}
            for k, v in self.energy_by_component.items()
        }
        # Per device only what varies per span; labels and scopes are in run.json's channels.
        d["devices"] = {x.key: {"energy_j": x.energy_j, "provenance": x.provenance, "corrected": x.corrected} for x in self.devices}
        d["peak_power_by_component_w"] = dict(self.peak_power_by_component_w)
        d["counts"] = dict(self.counts)
        d["tags"] = dict(self.tags)
        d["warnings"] = list(self.warnings)
        return d


#: A coarse counter's delta is used (with its edge lags added back) for spans of at least this
#: many update periods; shorter spans take their energy from power at the edges, since one
#: misplaced update would be a large error.
GRID_MIN_PERIODS = 1.5

_MEASUREMENT_FIELDS = tuple(f.name for f in fields(Measurement))


def _check_counts(counts: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in counts.items():
        if k not in COUNT_NAMES:
            from .config import suggest

            raise ConfigError(f"unknown count {k!r}{suggest(k, COUNT_NAMES)} (counts are {', '.join(COUNT_NAMES)}; put other labels in tags=)")
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
            raise ConfigError(f"{k}={v!r}: counts must be non-negative numbers")
        out[k] = v
    return out


class Span:
    """One use of ``track``: open between entry and exit, then a :class:`Measurement`."""

    __slots__ = (
        "meter", "name", "path", "span_id", "parent", "parent_id", "depth", "thread", "counts",
        "tags", "_start", "_end", "_peak", "_result", "_token", "_lock", "inert", "__weakref__",
    )

    def __init__(self, meter, name: str, parent: "Span | None", counts: dict, tags: dict, inert: bool = False):
        self.meter = meter
        self.name = name
        self.parent = parent
        self.parent_id = parent.span_id if parent is not None else None
        self.path = f"{parent.path}/{name}" if parent is not None else name
        self.depth = parent.depth + 1 if parent is not None else 0
        self.span_id = next(_ids)
        self.thread = threading.current_thread().name
        self.counts = counts
        self.tags = tags
        self._start = None
        self._end = None
        self._peak: dict[str, float] = {}
        self._result: Measurement | None = None
        self._token = None
        self._lock = threading.Lock()
        self.inert = inert

    def add(self, samples: float | None = None, tokens: float | None = None, flops: float | None = None,
            output_tokens: float | None = None) -> None:
        """Add to this span's counts (each may be omitted). Thread-safe. ``tokens`` are input
        tokens (non-padding), ``output_tokens`` generated tokens."""
        new = _check_counts({"samples": samples, "tokens": tokens, "output_tokens": output_tokens, "flops": flops})
        with self._lock:
            for k, v in new.items():
                self.counts[k] = self.counts.get(k, 0) + v

    def snapshot(self) -> Measurement:
        """Figures so far for an open span (status "open"); the result itself once closed."""
        return self.meter._snapshot(self)

    def rename(self, name: str) -> None:
        """Change an open span's name (for stages whose kind is known only later, such as a
        Trainer evaluation that turns out to be ``predict``). Child paths opened before are kept."""
        if self._end is not None:
            raise RuntimeError(f"span {self.path!r} is closed; rename it before it exits")
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"span name {name!r}: use a non-empty string without '/'")
        self.name = name
        self.path = f"{self.parent.path}/{name}" if self.parent is not None else name

    @property
    def closed(self) -> bool:
        return self._end is not None

    @property
    def result(self) -> Measurement:
        """The frozen record (after exit). Raises RuntimeError while the span is open."""
        if self._result is None:
            if self._end is None:
                raise RuntimeError(f"span {self.path!r} is still open; its result exists after the with-block exits")
            self._result = self.meter._measure(self)
        return self._result

    # Convenience mirrors of the result (DESIGN.md public API).
    @property
    def energy_j(self) -> float | None:
        return self.result.energy_j

    @property
    def duration_s(self) -> float:
        return self.result.duration_s

    @property
    def energy_by_component(self) -> Mapping[str, ComponentEnergy]:
        return self.result.energy_by_component

    @property
    def avg_power_w(self) -> float | None:
        return self.result.avg_power_w

    @property
    def peak_power_w(self) -> float | None:
        return self.result.peak_power_w

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.result.warnings

    @property
    def emissions_g(self) -> float | None:
        """gCO2eq for this span with the meter's region and PUE (see meter.carbon)."""
        return self.meter._emissions_g(self)

    def __repr__(self) -> str:
        if self._result is None and self._end is None:
            return f"<Span {self.path!r} open>"
        r = self.result
        e = "n/a" if r.energy_j is None else f"{r.energy_j:.3f} J"
        return f"<Span {self.path!r} {r.duration_s:.3f} s {e}>"


class Track:
    """What ``track(...)`` returns: a context manager and a decorator; every use gets a fresh Span."""

    __slots__ = ("_meter", "_name", "_counts", "_tags", "_local")

    def __init__(self, meter, name: str, counts: dict, tags: dict):
        counts = _check_counts(counts)
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"span name {name!r}: use a non-empty string without '/' (nesting builds the path)")
        self._meter = meter
        self._name = name
        self._counts = counts
        self._tags = tags
        self._local = threading.local()

    def __enter__(self) -> Span:
        meter = self._meter
        if meter is None:  # module-level meter.track: the default Meter, created on first use
            from .core import default_meter

            meter = default_meter()
        span = meter._open(self._name, dict(self._counts), dict(self._tags))
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        stack.append(span)
        return span

    def __exit__(self, exc_type, exc, tb) -> bool:
        span = self._local.stack.pop()
        span.meter._close(span, exc_type)
        return False

    def __call__(self, fn):
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args, **kwargs):
                with Track(self._meter, self._name, self._counts, self._tags):
                    return await fn(*args, **kwargs)

            return awrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with Track(self._meter, self._name, self._counts, self._tags):
                return fn(*args, **kwargs)

        return wrapper


def _channel_plan(sampler) -> tuple:
    """Per-channel constants for :func:`measure`, computed once per sampler."""
    plan = getattr(sampler, "_measure_plan", None)
    if plan is None:
        chans = sampler.channels
        order = sorted({c.component for c in chans}, key=lambda c: (COMPONENTS.index(c) if c in COMPONENTS else 99, c))
        groups = []
        for comp in order:
            idx = tuple(i for i, c in enumerate(chans) if c.component == comp)
            provs = {chans[i].provenance for i in idx}
            groups.append((comp, idx, provs.pop() if len(provs) == 1 else "mixed", tuple(chans[i].key for i in idx)))
        counters = tuple(i for i, c in enumerate(chans) if c.mode == "energy" and c.provenance == COUNTER)
        estimated = tuple(i for i, c in enumerate(chans) if c.provenance == ESTIMATED)
        est_note = ""
        if estimated:
            comps = sorted({chans[i].component for i in estimated})
            est_note = f"{', '.join(comps)} energy is estimated from a model, not measured"
        notes = tuple(f"{c.key}: {c.details.get('mig', 'reading covers the whole GPU')}" for c in chans if c.shared and c.component == "gpu")
        plan = (tuple(groups), counters, frozenset(estimated), est_note, notes)
        sampler._measure_plan = plan
    return plan


def measure(span: Span, sampler, run_id: str | None) -> Measurement:
    """Energy, power and warnings of a closed span from its two odometer snapshots.

    Counter channels whose span is shorter than their learned update period (or that did not
    move while drawing power) are corrected from the power at the span's edges and say so.
    """
    s, e = span._start, span._end
    d = e.t - s.t
    chans = sampler.channels
    groups, counters, estimated_idx, est_note, notes = _channel_plan(sampler)
    dj = [b - a for a, b in zip(s.energy_j, e.energy_j, strict=True)]
    corrected = set()
    warnings: list[str] = list(notes)
    if d > 0:
        for i in counters:
            period = sampler.update_period_s(i)
            if (d >= GRID_MIN_PERIODS * period and s.lag_j is not None and e.lag_j is not None
                    and s.lag_j[i] is not None and e.lag_j[i] is not None):
                # A coarse counter with a known update grid: each reading lags its read time by the
                # energy since the counter's last update; add that back at both edges.
                dj[i] += e.lag_j[i] - s.lag_j[i]
                continue
            if period == 0.0 and dj[i] != 0:
                continue
            if (d < GRID_MIN_PERIODS * period and s.pint_j is not None and e.pint_j is not None
                    and e.pint_j[i] > s.pint_j[i]):
                # Too short for the counter: integrate the instantaneous power polled meanwhile.
                dj[i] = e.pint_j[i] - s.pint_j[i]
                corrected.add(i)
                warnings.append(
                    f"{chans[i].key}: span ({d * 1e3:.1f} ms) too short for the counter, which updates every "
                    f"{period * 1e3:.0f} ms; energy integrated from instantaneous power"
                )
                continue
            edge_w = (s.power_w[i] + e.power_w[i]) * 0.5
            if edge_w > 0 and (dj[i] == 0 or d < GRID_MIN_PERIODS * period):
                dj[i] = edge_w * d
                corrected.add(i)
                warnings.append(
                    f"{chans[i].key}: span ({d * 1e3:.1f} ms) too short for the counter, which updates every "
                    f"{period * 1e3:.0f} ms; energy from power at the span's edges ({edge_w:.1f} W)"
                )
            elif period > 0 and dj[i] > 0 and edge_w * period / dj[i] >= 0.01:
                warnings.append(
                    f"{chans[i].key}: counter updates every {period * 1e3:.0f} ms; this {d * 1e3:.0f} ms span "
                    f"may be off by up to one update (~{100.0 * edge_w * period / dj[i]:.0f}%)"
                )
    if sampler.faults:
        for f in sampler.faults[: e.n_faults]:
            if f.permanent and f.t <= e.t:
                warnings.append(f"{f.key} failed during or before this span ({f.reason}); energy after that point is missing")
        for f in sampler.faults[s.n_faults:e.n_faults]:
            if not f.permanent:
                warnings.append(f"{f.key}: {f.reason}")
    devices = tuple([
        DeviceEnergy(c.key, c.component, c.label, dj[i], c.provenance, c.scope, c.shared, i in corrected)
        for i, c in enumerate(chans)
    ])
    by_comp = {}
    for comp, idx, prov, keys in groups:
        e_comp = 0.0
        for i in idx:
            e_comp += dj[i]
        by_comp[comp] = ComponentEnergy(e_comp, prov, keys)
    estimated = 0.0
    for i in estimated_idx:
        estimated += dj[i]
    if est_note:
        warnings.append(est_note)
    if chans:
        total = sum(dj)
        measured = total - estimated
        avg = total / d if d > 0 else None
        peak = dict(span._peak)
        peak_total = max(v for v in (peak.pop("total", None), sum(s.power_w), sum(e.power_w), avg) if v is not None)
        if d > 0:
            for comp, ce in by_comp.items():
                peak[comp] = max(peak.get(comp, 0.0), ce.energy_j / d)
    else:
        total = measured = estimated = avg = peak_total = None
        peak = {}
        warnings.append("no energy sensor was available: energy not measured (run `python -m meter`)")
    return Measurement(
        name=span.name, path=span.path, span_id=span.span_id, parent_id=span.parent_id,
        depth=span.depth, run_id=run_id, start_utc=utc_iso(s.wall), end_utc=utc_iso(e.wall),
        duration_s=d, energy_j=total, measured_energy_j=measured, estimated_energy_j=estimated,
        energy_by_component=by_comp, devices=devices, avg_power_w=avg, peak_power_w=peak_total,
        peak_power_by_component_w=peak, counts=dict(span.counts), tags=dict(span.tags),
        interval_s=sampler.interval_s, warnings=tuple(dict.fromkeys(warnings)), thread=span.thread,
    )
