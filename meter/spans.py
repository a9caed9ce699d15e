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
import math
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


def _device_tensor(v: Any) -> bool:
    """A one-element tensor on an accelerator (``mask.sum()`` on CUDA): reading it now would
    wait for the GPU, so :meth:`Span.add` keeps it and reads it at the span's exit, after the
    exit's own synchronisation."""
    t = getattr(getattr(v, "device", None), "type", None)
    return isinstance(t, str) and t not in ("cpu", "meta") and callable(getattr(v, "numel", None))


def _bool_or_complex(v: Any) -> bool:
    """numpy and torch booleans and complex numbers (their dtype says so): not counts."""
    dt = getattr(v, "dtype", None)
    if dt is None:
        return False
    kind = getattr(dt, "kind", None)  # numpy
    if kind is not None:
        return kind in "bc"
    return bool(getattr(dt, "is_complex", False)) or str(dt) == "torch.bool"


def add_count(k: str, total: Any, v: int | float) -> int | float:
    """``total + v`` for count ``k``, refused when the sum leaves the float range."""
    s = (total or 0) + v
    try:
        ok = math.isfinite(s)
    except OverflowError:
        ok = False
    if not ok:
        raise ConfigError(f"{k}: the span's total would be {'inf' if isinstance(s, float) else 'beyond 1.8e308'}; "
                          "a count must stay below 1.8e308 (count in larger units, e.g. FLOPs as GFLOPs)")
    return s


def count_value(k: str, v: Any) -> int | float:
    """One count as a Python number: ints stay exact; number-likes (0-d tensors, numpy
    scalars: anything with ``__index__`` or ``__float__``) are converted. Raises ConfigError
    naming the count for text, booleans, sequences, negatives, NaN, infinity and numbers too
    large to be a float."""
    if isinstance(v, (bool, str, bytes, complex)) or _bool_or_complex(v):
        raise ConfigError(f"{k}={v!r}: counts must be non-negative numbers (an int, a float, a 0-d tensor or "
                          f"a numpy scalar), not {type(v).__name__}")
    if getattr(v, "ndim", 0) not in (0, None):
        raise ConfigError(f"{k}={v!r}: a count is one number; this has {v.ndim} dimensions (give e.g. int(mask.sum()))")
    if not isinstance(v, (int, float)):
        x = None
        for conv in ("__index__", "__float__"):
            if hasattr(v, conv):
                try:
                    x = getattr(v, conv)()
                    break
                except (TypeError, ValueError, RuntimeError):
                    continue
        if x is None or isinstance(x, bool):
            raise ConfigError(f"{k}={v!r}: counts must be non-negative numbers (an int, a float, a 0-d tensor or "
                              "a numpy scalar); give one number, e.g. int(mask.sum())")
        v = x
    try:
        ok = v >= 0 and math.isfinite(v)
    except OverflowError:  # an int beyond the float range: no figure could use it
        ok = False
    if not ok:
        raise ConfigError(f"{k}={v!r}: counts must be finite, non-negative numbers below 1.8e308")
    return v


def check_counts(counts: Mapping[str, Any]) -> dict[str, float]:
    """Validate counts: known names, each a finite non-negative number (see :func:`count_value`)."""
    out = {}
    for k, v in counts.items():
        if k not in COUNT_NAMES:
            from .config import suggest

            raise ConfigError(f"unknown count {k!r}{suggest(k, COUNT_NAMES)} (counts are {', '.join(COUNT_NAMES)}; "
                              "put other labels in tags=)")
        if v is not None:
            out[k] = count_value(k, v)
    return out


_TAG_SCALARS = (str, int, float, bool, type(None))


def _tag_value(key: str, v: Any, depth: int = 0) -> Any:
    if type(v) is int and v.bit_length() > 1000:
        try:
            float(v)
        except OverflowError:
            raise ConfigError(f"tags[{key!r}]: an integer beyond 1.8e308 cannot be recorded; give it as text "
                              "or in larger units") from None
    if type(v) in _TAG_SCALARS:
        return v
    if isinstance(v, str):  # a str subclass (an Enum member): its text
        return str(v)
    if depth < 4 and isinstance(v, (list, tuple)):
        return [_tag_value(key, x, depth + 1) for x in v]
    if depth < 4 and isinstance(v, Mapping):
        return {str(k): _tag_value(key, x, depth + 1) for k, x in v.items()}
    for conv in ("__index__", "__float__"):  # numpy scalars, 0-d tensors, Decimal
        if hasattr(v, conv):
            try:
                return getattr(v, conv)()
            except (TypeError, ValueError, RuntimeError):
                continue
    try:
        return str(v)  # anything else is recorded as its text
    except Exception:  # noqa: BLE001 - a label whose text raises is no reason to fail the stage
        return f"<unprintable {type(v).__name__}>"


def check_tags(tags: Any) -> dict[str, Any]:
    """Tags as a plain dict of JSON values. Keys must be non-empty strings; scalars stay as they
    are (NaN and infinity are written as null), lists and dicts are kept, number-likes converted,
    anything else recorded as its ``str()``."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ConfigError(f"tags={tags!r}: give a dict of labels, e.g. tags={{'model': 'bert-base'}}")
    out = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"tags key {k!r}: tag names must be non-empty strings, e.g. tags={{'seq_len': 512}}")
        out[k] = _tag_value(k, v)
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
        "_notes", "_pending", "_open_children", "_counted", "__weakref__",
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
        self._pending: list | None = None  # (count, accelerator tensor) added while open, read at exit
        self._open_children = 0  # children of this Meter still open (exits out of order)
        self._counted = False  # this span is counted in its parent's _open_children

    # -- counts and names ----------------------------------------------------------------------
    def add(self, samples: Any = None, tokens: Any = None, flops: Any = None, output_tokens: Any = None,
            **unknown: Any) -> None:
        """Add to this span's counts (each may be omitted). Thread-safe. ``tokens`` are input
        tokens (non-padding), ``output_tokens`` generated tokens. Counts are frozen at exit: a
        later ``add`` changes nothing and logs one warning."""
        if unknown:
            check_counts(unknown)  # raises with the names counts have
        given = {"samples": samples, "tokens": tokens, "output_tokens": output_tokens, "flops": flops}
        later = [(k, v) for k, v in given.items() if v is not None and _device_tensor(v)]
        for k, v in later:
            given[k] = None
            if v.numel() != 1:
                raise ConfigError(f"{k}: a tensor of {v.numel()} elements; give one number, e.g. {k}=mask.sum()")
        new = check_counts(given)
        with self._lock:
            if self._end is not None:
                log.warning("meter: span %r is closed; counts added after its exit are ignored", self.path)
                return
            sums = {k: add_count(k, self.counts.get(k), v) for k, v in new.items()}
            self.counts.update(sums)
            if later:
                self._pending = (self._pending or []) + later

    def _read_pending(self) -> None:
        """Fold accelerator tensors given to :meth:`add` into the counts (at exit, after the
        synchronisation, or for a snapshot). A bad value is dropped with a warning on the record."""
        with self._lock:
            pending, self._pending = self._pending, None
            for k, v in pending or ():
                try:
                    self.counts[k] = add_count(k, self.counts.get(k), count_value(k, v))
                except ConfigError as exc:
                    self._notes = self._notes + (f"count dropped: {exc}",)
                    log.warning("meter: span %r: %s", self.path, exc)

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
        if self._pending:
            self._read_pending()
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


def release_parent(span: Span) -> None:
    """``span`` is closed: it no longer counts among its parent's open children."""
    parent = span.parent
    if span._counted and parent is not None:
        with parent._lock:
            if span._counted:
                span._counted = False
                parent._open_children -= 1


def open_descendants(span: Span, open_spans) -> list[Span]:
    """The spans among ``open_spans`` below ``span`` in its tree, deepest first."""
    out = []
    for s in open_spans:
        p = s.parent
        while p is not None and p is not span:
            p = p.parent
        if p is span and s._end is None:
            out.append(s)
    out.sort(key=lambda s: -s.depth)
    return out


class Track:
    """What ``track(...)`` returns: a context manager and a decorator. Every use gets a fresh
    Span; uses from several threads or asyncio tasks at once each keep their own."""

    __slots__ = ("_owner", "_resolve", "_name", "_counts", "_tags", "_open")

    def __init__(self, owner: SpanOwner | None, name: str, counts: Mapping[str, Any], tags: Any,
                 resolve: Callable[[], SpanOwner] | None = None):
        self._counts = check_counts(counts)
        self._name = _check_name(name)
        self._tags = check_tags(tags)
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
        if parent is not None:
            with parent._lock:
                parent._open_children += 1
            span._counted = True
        span._token = _current.set(span)
        self._open.append(span)
        return span

    def _find(self) -> Span | None:
        s = _current.get()
        while s is not None:
            if s._track is self and s._end is None:
                return s
            s = s.parent
        # Exited in another context of this thread (a generator resumed elsewhere): its newest
        # span opened on this thread. Never another thread's: that one is still in use there.
        me = threading.current_thread().name
        for s in reversed(self._open):
            if s.thread == me:
                return s
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        span = self._find()
        if span is None:
            log.warning("meter: %r exited with no span of it open on this thread; that exit is ignored "
                        "(each with-block exits once, on the thread that entered it)", self._name)
            return False
        try:
            self._open.remove(span)
        except ValueError:
            pass
        if exc_type is not None:
            span.tags.setdefault("exception", exc_type.__name__)
            span._status = "incomplete"
            span._notes = (f"incomplete: the stage ended with {exc_type.__name__}",)
        span.meter._exit_span(span)
        release_parent(span)
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
