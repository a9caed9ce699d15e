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
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .errors import ConfigError
from .sensors import COUNTER, ESTIMATED, POWER_INTEGRATED

SCHEMA_VERSION = 1
COUNT_NAMES = ("samples", "tokens", "flops")
_PROV_RANK = {COUNTER: 0, POWER_INTEGRATED: 1, ESTIMATED: 2}

_current: ContextVar["Span | None"] = ContextVar("meter_current_span", default=None)
_ids = itertools.count(1)


def current_span() -> "Span | None":
    """The innermost open span in this context, or None."""
    span = _current.get()
    while span is not None and span.closed:  # e.g. left open and then closed by Meter.close()
        span = span.parent
    return span


@dataclass(frozen=True)
class DeviceEnergy:
    """Energy of one channel over a span."""

    key: str
    component: str
    label: str
    energy_j: float
    provenance: str
    scope: str
    shared: bool
    corrected: bool = False


@dataclass(frozen=True)
class ComponentEnergy:
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
        d = asdict(self)
        d["energy_by_component"] = {k: asdict(v) for k, v in self.energy_by_component.items()}
        d["devices"] = [asdict(x) for x in self.devices]
        d["warnings"] = list(self.warnings)
        return d


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

    def add(self, samples: float | None = None, tokens: float | None = None, flops: float | None = None) -> None:
        """Add to this span's counts (each may be omitted). Thread-safe."""
        new = _check_counts({"samples": samples, "tokens": tokens, "flops": flops})
        with self._lock:
            for k, v in new.items():
                self.counts[k] = self.counts.get(k, 0) + v

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


@dataclass
class _Acc:
    energy: float = 0.0
    provs: set = field(default_factory=set)
    devices: list = field(default_factory=list)
