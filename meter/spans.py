"""The span tree: names, nesting through a ContextVar, counts, and results.

A span's entry and exit are on the user's hot path: each asks its owner (the Meter) for one
synchronous read of the sensors and nothing else. The result is computed from inputs captured
at exit (two snapshots, the peak power seen, the counts), by a pure function, so it is the same
whenever and on whichever thread it is first read. This module imports nothing from the Meter:
a span talks to its owner through the small :class:`SpanOwner` protocol.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import threading
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Mapping, ParamSpec, Protocol, Sequence, TypeVar, overload

from .clock import utc_iso
from .energy import Plan, span_energy
from .errors import ConfigError, SpanStateError
from .measurement import COUNT_NAMES, ComponentEnergy, Measurement, measurement_html

log = logging.getLogger("meter")
P = ParamSpec("P")  # the decorator keeps the wrapped function's signature for type checkers
R = TypeVar("R")

_current: ContextVar["Span | None"] = ContextVar("meter_current_span", default=None)
_ids = itertools.count(1)


@dataclass(frozen=True)
class RunContext:
    """What every span of one measuring run shares: how to turn snapshots into energy."""

    plan: Plan
    faults: Sequence  # the odometer's append-only fault list; snapshots say how much of it to read
    run_id: str | None
    interval_s: float


class SpanOwner(Protocol):
    """What a span needs from the Meter that measures it."""

    def _enter_span(self, span: "Span") -> None: ...

    def _exit_span(self, span: "Span") -> None: ...

    def _snapshot_span(self, span: "Span") -> Measurement: ...

    def _span_emissions_g(self, span: "Span", result: Measurement) -> float | None: ...

    @property
    def accepting(self) -> bool: ...


def current_span() -> "Span | None":
    """The innermost open span in this context (thread or asyncio task), or None."""
    span = _current.get()
    while span is not None and span.closed:  # e.g. left open and then closed by Meter.close()
        span = span.parent
    return span


def check_counts(counts: Mapping[str, Any]) -> dict[str, float]:
    """Validate counts: known names, finite, non-negative; number-likes (0-d tensors, numpy
    scalars: anything with ``__index__`` or ``__float__``) are converted."""
    out = {}
    for k, v in counts.items():
        if k not in COUNT_NAMES:
            from .config import suggest

            raise ConfigError(f"unknown count {k!r}{suggest(k, COUNT_NAMES)} (counts are {', '.join(COUNT_NAMES)}; "
                              "put other labels in tags=)")
        if v is None:
            continue
        if isinstance(v, bool):
            raise ConfigError(f"{k}={v!r}: counts must be non-negative numbers, not booleans")
        if not isinstance(v, (int, float)):
            try:
                v = v.__index__() if hasattr(v, "__index__") else float(v)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(f"{k}={v!r}: counts must be non-negative numbers") from None
        if not (v >= 0 and v - v == 0):
            raise ConfigError(f"{k}={v!r}: counts must be finite, non-negative numbers")
        out[k] = v
    return out


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"span name {name!r}: use a non-empty string without '/' (nesting builds the path)")
    return name


class Span:
    """One use of ``track``: open between entry and exit, then a :class:`Measurement`.

    While open, ``energy_j``, ``duration_s`` and the other figures give the figures so far
    (see :meth:`snapshot`); after exit they are the frozen :attr:`result`'s.
    """

    __slots__ = (
        "meter", "name", "path", "span_id", "parent", "parent_id", "depth", "thread", "counts", "tags",
        "inert", "ctx", "_start", "_end", "_peak", "_result", "_token", "_track", "_lock", "_status",
        "_notes", "__weakref__",
    )

    def __init__(self, owner: SpanOwner, name: str, parent: "Span | None", counts: dict, tags: dict,
                 track: "Track | None" = None):
        self.meter = owner
        self.name = name
        self.parent = parent
        self.parent_id = parent.span_id if parent is not None else None
        self.path = f"{parent.path}/{name}" if parent is not None else name
        self.depth = parent.depth + 1 if parent is not None else 0
        self.span_id = next(_ids)
        self.thread = threading.current_thread().name
        self.counts = counts
        self.tags = tags
        self.inert = False
        self.ctx: RunContext | None = None
        self._start: Any = None
        self._end: Any = None
        self._peak: dict[str, float] = {}
        self._result: Measurement | None = None
        self._token = None
        self._track = track
        self._lock = threading.Lock()
        self._status = "complete"
        self._notes: tuple[str, ...] = ()

    # -- counts and names ----------------------------------------------------------------------
    def add(self, samples: Any = None, tokens: Any = None, flops: Any = None, output_tokens: Any = None) -> None:
        """Add to this span's counts (each may be omitted). Thread-safe. ``tokens`` are input
        tokens (non-padding), ``output_tokens`` generated tokens. Counts are frozen at exit: a
        later ``add`` changes nothing and logs one warning."""
        new = check_counts({"samples": samples, "tokens": tokens, "output_tokens": output_tokens, "flops": flops})
        with self._lock:
            if self._end is not None:
                log.warning("meter: span %r is closed; counts added after its exit are ignored", self.path)
                return
            for k, v in new.items():
                self.counts[k] = self.counts.get(k, 0) + v

    def rename(self, name: str) -> None:
        """Change an open span's name (for stages whose kind is known only later, such as a
        Trainer evaluation that turns out to be ``predict``). Child paths opened before are kept."""
        if self._end is not None:
            raise SpanStateError(f"span {self.path!r} is closed; rename it before it exits")
        self.name = _check_name(name)
        self.path = f"{self.parent.path}/{name}" if self.parent is not None else name

    # -- results -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._end is not None

    @property
    def result(self) -> Measurement:
        """The frozen record, after exit. Raises :class:`~meter.errors.SpanStateError` while the span
        is open (use :meth:`snapshot` for the figures so far)."""
        r = self._result
        if r is None:
            if self._end is None:
                raise SpanStateError(f"span {self.path!r} is still open; its result exists after the with-block exits "
                                 "(span.snapshot() gives the figures so far)")
            r = self._result = build_measurement(self, self._end, self._peak, self._status, self._notes)
        return r

    def snapshot(self) -> Measurement:
        """The figures so far (status ``"open"``) for an open span; the result once closed.
        Never raises, also after the Meter closed."""
        if self._end is not None:
            return self.result
        return self.meter._snapshot_span(self)

    def _figures(self) -> Measurement:
        return self.result if self._end is not None else self.snapshot()

    @property
    def energy_j(self) -> float | None:
        """Joules, all components (so far, while open); None when no sensor could be read."""
        return self._figures().energy_j

    @property
    def duration_s(self) -> float:
        return self._figures().duration_s

    @property
    def energy_by_component(self) -> Mapping[str, ComponentEnergy]:
        return self._figures().energy_by_component

    @property
    def avg_power_w(self) -> float | None:
        return self._figures().avg_power_w

    @property
    def peak_power_w(self) -> float | None:
        return self._figures().peak_power_w

    @property
    def warnings(self) -> tuple[str, ...]:
        return self._figures().warnings

    @property
    def emissions_g(self) -> float | None:
        """gCO2eq with the Meter's region and PUE (so far, while open). Never waits on the
        network: a live provider's figures come from the Meter's background cache."""
        return self.meter._span_emissions_g(self, self._figures())

    def __repr__(self) -> str:
        r = self._figures()
        e = "n/a" if r.energy_j is None else f"{r.energy_j:.3f} J"
        state = "" if self._end is not None else " open"
        return f"<Span {self.path!r}{state} {r.duration_s:.3f} s {e}>"

    def _repr_html_(self) -> str:
        return measurement_html(self._figures())


def build_measurement(span: Span, end: Any, peak: Mapping[str, float], status: str, notes: Sequence[str] = ()) -> Measurement:
    """A span's Measurement between its start snapshot and ``end``: pure in its inputs."""
    ctx = span.ctx
    if span.inert or ctx is None:
        t0, w0 = span._start
        t1, w1 = end
        return Measurement(
            name=span.name, path=span.path, span_id=span.span_id, parent_id=span.parent_id, depth=span.depth,
            run_id=ctx.run_id if ctx else None, start_utc=utc_iso(w0), end_utc=utc_iso(w1), duration_s=t1 - t0,
            energy_j=None, measured_energy_j=None, estimated_energy_j=None, energy_by_component={}, devices=(),
            avg_power_w=None, peak_power_w=None, peak_power_by_component_w={}, counts=dict(span.counts),
            tags=dict(span.tags), interval_s=ctx.interval_s if ctx else 0.0, warnings=tuple(notes), thread=span.thread,
            status="not-measured",
        )
    s = span._start
    f = span_energy(s, end, ctx.plan, ctx.faults, peak)
    return Measurement(
        name=span.name, path=span.path, span_id=span.span_id, parent_id=span.parent_id, depth=span.depth,
        run_id=ctx.run_id, start_utc=utc_iso(s.wall), end_utc=utc_iso(end.wall), duration_s=f.duration_s,
        energy_j=f.energy_j, measured_energy_j=f.measured_energy_j, estimated_energy_j=f.estimated_energy_j,
        energy_by_component=f.energy_by_component, devices=f.devices, avg_power_w=f.avg_power_w,
        peak_power_w=f.peak_power_w, peak_power_by_component_w=f.peak_power_by_component_w,
        counts=dict(span.counts), tags=dict(span.tags), interval_s=ctx.interval_s,
        warnings=tuple(notes) + f.warnings, thread=span.thread, status=status,
    )


def open_view(span: Span, end: Any, peak: Mapping[str, float]) -> Measurement:
    """An open span's figures up to ``end`` (status ``"open"``)."""
    with span._lock:
        counts = dict(span.counts)
    view = build_measurement(span, end, peak, "open")
    return replace(view, counts=counts)


class Track:
    """What ``track(...)`` returns: a context manager and a decorator. Every use gets a fresh
    Span; uses from several threads or asyncio tasks at once each keep their own."""

    __slots__ = ("_owner", "_resolve", "_name", "_counts", "_tags", "_open")

    def __init__(self, owner: SpanOwner | None, name: str, counts: Mapping[str, Any], tags: Any,
                 resolve: Callable[[], SpanOwner] | None = None):
        self._counts = check_counts(counts)
        self._name = _check_name(name)
        if tags is not None and not isinstance(tags, Mapping):
            raise ConfigError(f"tags={tags!r}: give a dict of labels, e.g. tags={{'model': 'bert-base'}}")
        self._tags = dict(tags or {})
        self._owner = owner
        self._resolve = resolve
        self._open: list[Span] = []

    def _owner_now(self) -> SpanOwner:
        if self._owner is not None:
            return self._owner
        cur = current_span()  # module-level track nests under the current span's Meter (in a forked
        if cur is not None:  # child that Meter is inert: the parent measures the child's work)
            return cur.meter
        return self._resolve()

    def __enter__(self) -> Span:
        owner = self._owner if self._owner is not None else self._owner_now()
        parent = _current.get()  # the innermost open span of this owner in this context
        while parent is not None and (parent.meter is not owner or parent._end is not None):
            parent = parent.parent
        span = Span(owner, self._name, parent, dict(self._counts), dict(self._tags), self)
        owner._enter_span(span)
        span._token = _current.set(span)
        self._open.append(span)
        return span

    def _find(self) -> Span:
        s = _current.get()
        while s is not None:
            if s._track is self and s._end is None:
                return s
            s = s.parent
        return self._open[-1]  # exited in another context (a generator resumed elsewhere)

    def __exit__(self, exc_type, exc, tb) -> bool:
        span = self._find()
        try:
            self._open.remove(span)
        except ValueError:
            pass
        if exc_type is not None:
            span.tags.setdefault("exception", exc_type.__name__)
            span._status = "incomplete"
            span._notes = (f"incomplete: the stage ended with {exc_type.__name__}",)
        span.meter._exit_span(span)
        try:
            _current.reset(span._token)
        except ValueError:  # closed in another context; restore the nearest open ancestor
            parent = span.parent
            while parent is not None and parent.closed:
                parent = parent.parent
            _current.set(parent)
        return False

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn):
        # Each call enters this Track afresh; concurrent calls keep their spans apart (ContextVar).
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args, **kwargs):
                with self:
                    return await fn(*args, **kwargs)

            return awrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)

        return wrapper
