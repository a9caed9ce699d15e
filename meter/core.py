"""``Meter``: configuration, sensors, the sampler and the run log, tied together.

The only global is the lazily created default Meter behind ``meter.track``.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import weakref
from collections import deque
from typing import Any

from . import config as config_mod
from .clock import SystemClock, utc_iso
from .distributed import describe as describe_rank
from .distributed import rank_info
from .errors import ConfigError
from .sensors import ESTIMATED, Discovery
from .spans import Measurement, Span, Track, _current, measure

log = logging.getLogger("meter")

RESULTS_KEPT = 10_000
_meters: "weakref.WeakSet[Meter]" = weakref.WeakSet()
_hooks_installed = False
_default: "Meter | None" = None
_default_lock = threading.Lock()


def _install_process_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_child)


def _close_all() -> None:
    for m in list(_meters):
        try:
            m.close()
        except Exception:  # noqa: BLE001 - at exit, one meter's trouble must not stop the others
            log.exception("meter: closing a Meter at exit failed")


def _before_fork() -> None:
    for m in list(_meters):
        m._flush_files()


def _after_fork_child() -> None:
    for m in list(_meters):
        m._become_fork_child()


def default_meter() -> "Meter":
    """The Meter behind ``meter.track``, created on first use from environment and pyproject."""
    global _default
    m = _default
    if m is None or m._closed:
        with _default_lock:
            if _default is None or _default._closed:
                _default = Meter()
            m = _default
    return m


class Meter:
    """Measures energy per stage. See DESIGN.md for the public contract.

    Arguments override ``METER_*`` environment variables, which override ``[tool.meter]`` in the
    nearest pyproject.toml, which override the defaults (region None = world average with a
    warning; pue 1.0; interval_s 0.1; output_dir "meter-runs"; gpus "visible";
    rapl_root "/sys/class/powercap").

    ``write=False`` keeps everything in memory (no run directory). ``sensors=`` replaces sensor
    discovery (tests, custom hardware); ``nvml=`` is a pynvml-compatible binding; ``clock=``
    provides ``monotonic()`` and ``wall()``; ``cpu_tdp_w`` overrides the TDP table for the CPU
    estimate; ``pid`` attributes the CPU/RAM estimate to another process tree (``meter run``).
    """

    def __init__(
        self,
        region: str | None = None,
        pue: float | None = None,
        interval_s: float | None = None,
        output_dir: str | None = None,
        gpus: Any = None,
        rapl_root: str | None = None,
        *,
        carbon: str | None = None,
        run_name: str | None = None,
        write: bool = True,
        sensors: list | None = None,
        nvml: Any = None,
        clock: Any = None,
        cpu_tdp_w: float | None = None,
        pid: int | None = None,
        sync_cuda: bool = True,
        distributed: bool = True,
        environ: dict | None = None,
        pyproject: str | None = None,
        **unknown: Any,
    ):
        if unknown:
            k = next(iter(unknown))
            raise ConfigError(f"Meter() got an unknown argument {k!r}{config_mod.suggest(k, _ARG_NAMES)}")
        self.config = config_mod.resolve(
            {"region": region, "pue": pue, "interval_s": interval_s, "output_dir": output_dir, "gpus": gpus, "rapl_root": rapl_root, "carbon": carbon},
            environ,
            pyproject,
        )
        if cpu_tdp_w is not None and not (isinstance(cpu_tdp_w, (int, float)) and cpu_tdp_w > 0):
            raise ConfigError(f"cpu_tdp_w={cpu_tdp_w!r}: give the CPU's TDP in watts, > 0")
        self._environ = os.environ if environ is None else environ
        self.clock = clock or SystemClock()
        self._write = write
        self._given_sensors = sensors
        self._nvml = nvml
        self._cpu_tdp_w = cpu_tdp_w
        self._pid = pid
        self._sync_cuda = sync_cuda
        self.run_name = run_name
        self._lock = threading.RLock()
        self._started = False
        self._closed = False
        self._forked = False
        self._events: deque = deque()
        self._open_spans: dict[int, Span] = {}
        self._heartbeat_dirty = False
        # The most recent closed spans, in memory; every span is on disk in spans.jsonl.
        self.results: deque[Measurement] = deque(maxlen=RESULTS_KEPT)
        self.discovery: Discovery | None = None
        self.sampler = None
        self.writer = None
        self.run_id: str | None = None
        self.run_dir: str | None = None
        self._carbon = None
        # In a torchrun or Slurm job: which devices this rank owns (see meter.distributed).
        self.rank = rank_info(self._environ) if distributed else None
        if write:
            from .runlog import check_writable

            check_writable(self.config.output_dir)
        if self.config.region is not None:
            from . import carbon

            carbon.check_region(self.config.region)
        _meters.add(self)
        _install_process_hooks()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Meter":
        """Discover sensors, write run.json and start the sampler. Called by the first span."""
        with self._lock:
            if self._started:
                return self
            if self._closed:
                raise RuntimeError("this Meter is closed; create a new one")
            from .sampler import Sampler

            if self._given_sensors is not None:
                self.discovery = Discovery(sensors=list(self._given_sensors))
            else:
                from .sensors import discover

                r = self.rank
                self.discovery = discover(
                    gpus=self.config.gpus, rapl_root=self.config.rapl_root, nvml=self._nvml,
                    cpu_tdp_w=self._cpu_tdp_w, pid=self._pid, environ=self._environ,
                    host_owner=r is None or r.owns_host, ranks=None if r is None else (r.local_rank, r.local_world_size),
                )
            est = sorted({c.component for c in self.discovery.channels if c.provenance == ESTIMATED})
            if est:
                why = [u.reason for u in self.discovery.unavailable if u.sensor == "rapl"] or ["RAPL has no zone for it"]
                log.warning("meter: %s energy will be estimated, not measured (%s); run `python -m meter` for why and how to fix",
                            " and ".join(est), "; ".join(why))
            interval = self._safe_interval()
            self.sampler = Sampler(self.discovery.sensors, self.clock, interval, on_tick=self._on_tick)
            self.run_id = self._make_run_id()
            self._started_utc = utc_iso(self.clock.wall())
            if self._write:
                from .runlog import RunWriter

                self.run_dir = os.path.join(self.config.output_dir, self.run_id)
                self.writer = RunWriter(self.run_dir, self.sampler.channels)
                self.writer.write_run(self._run_info())
            first = self.sampler.read_now()
            if self.writer is not None:
                self.writer.append_sample(first)
            self.sampler.start()
            self._started = True
        return self

    def _safe_interval(self) -> float:
        interval = self.config.interval_s
        for s in self.discovery.sensors:
            wrap = getattr(s, "wrap_period_s", lambda: None)()
            if wrap is not None and interval > wrap / 4:
                safe = wrap / 4
                self.discovery.notes.append(
                    f"interval_s={interval:g} s is too long for RAPL counters that can wrap every "
                    f"{wrap:.3g} s at full power; sampling every {safe:.3g} s instead"
                )
                log.warning("meter: %s", self.discovery.notes[-1])
                interval = safe
        return interval

    def _make_run_id(self) -> str:
        stamp = utc_iso(self.clock.wall()).replace("-", "").replace(":", "").split(".")[0]
        host = socket.gethostname().split(".")[0] or "host"
        base = f"{stamp}Z-{host}-{os.getpid()}"
        if self.run_name:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in self.run_name)
            base = f"{safe}-{base}"
        if self.rank is not None:
            base = f"{base}-rank{self.rank.rank}"
        return base

    def _run_info(self) -> dict[str, Any]:
        from .hardware import describe_host

        return {
            "run_id": self.run_id,
            "run_name": self.run_name,
            "started_utc": self._started_utc,
            "config": self.config.describe(),
            "channels": [c.describe() for c in self.sampler.channels],
            "unavailable": [u.describe() for u in self.discovery.unavailable],
            "notes": list(self.discovery.notes),
            "interval_s": self.sampler.interval_s,
            "host": describe_host(self.discovery),
            "pid": os.getpid(),
            "argv": list(sys.argv),
            "distributed": describe_rank(self.rank),
        }

    def close(self) -> None:
        """Stop the sampler, write every pending record and the final run.json. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._started or self._forked:
                return
            self.sampler.close()  # final tick drains the queue and writes
            self._close_open_spans()
            if self.writer is not None:
                info = self._run_info()
                info["ended_utc"] = utc_iso(self.clock.wall())
                info["faults"] = [f.__dict__ for f in self.sampler.faults]
                info["wraps"] = dict(zip([c.key for c in self.sampler.channels], self.sampler.wraps, strict=False))
                info["learned_update_period_s"] = {
                    c.key: self.sampler.update_period_s(i) for i, c in enumerate(self.sampler.channels) if c.mode == "energy"
                }
                self.writer.write_run(info)
                self.writer.close()

    def _close_open_spans(self) -> None:
        """Spans still open at close are recorded up to now, marked incomplete, never dropped."""
        if not self._open_spans:
            return
        from dataclasses import replace

        final = self.sampler.read_now()
        records = []
        for span in list(self._open_spans.values()):
            log.warning("meter: span %r was still open at close; recorded as incomplete", span.path)
            span._end = final
            r = span.result
            span._result = replace(r, status="incomplete",
                                   warnings=r.warnings + ("incomplete: the Meter closed while this span was open",))
            records.append(span._result)
        self._open_spans.clear()
        self.results.extend(records)
        if self.writer is not None:
            self.writer.append_spans(records)

    def flush(self) -> None:
        """Write every closed span and a sample row to the run log now (normally the sampler
        does this at its next tick). A no-op before the first span and after close."""
        with self._lock:
            if self._started and not self._closed and not self._forked:
                self.sampler.tick()

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _flush_files(self) -> None:
        if self.writer is not None and not self._forked:
            with self._lock:
                self.writer.flush()

    def _become_fork_child(self) -> None:
        # The sampler thread was not copied; the files belong to the parent.
        self._forked = True
        self._lock = threading.RLock()
        if self.sampler is not None:
            self.sampler.forget_thread()
        if self.writer is not None:
            self.writer.abandon()
        self.writer = None

    # -- spans ---------------------------------------------------------------------------------
    def track(self, name: str, *, samples: float | None = None, tokens: float | None = None,
              flops: float | None = None, output_tokens: float | None = None, tags: dict | None = None,
              **unknown: Any) -> Track:
        """A stage to measure: ``with m.track("train"):`` or ``@m.track("eval")``.

        ``samples``, ``tokens`` and ``flops`` may be given up front or added with ``span.add``;
        ``tags`` are free-form labels (model, seq_len, batch size) carried into the record.
        """
        return Track(self, name, {"samples": samples, "tokens": tokens, "output_tokens": output_tokens, "flops": flops, **unknown}, dict(tags or {}))

    def _open(self, name: str, counts: dict, tags: dict) -> Span:
        parent = _current.get()
        while parent is not None and (parent.meter is not self or parent.closed):
            parent = parent.parent
        if self._forked or self._closed:
            span = Span(self, name, parent, counts, tags, inert=True)
            span._start = (self.clock.monotonic(), self.clock.wall())
        else:
            if not self._started:
                self.start()
            if self._sync_cuda:
                _sync_cuda()  # work queued before the span belongs to the stage before it
            span = Span(self, name, parent, counts, tags)
            span._start = self.sampler.read_now()
            self._events.append((0, span))
        span._token = _current.set(span)
        return span

    def _close(self, span: Span, exc_type=None) -> None:
        if self._sync_cuda and not span.inert:
            _sync_cuda()
        if span.inert:
            span._end = (self.clock.monotonic(), self.clock.wall())
        else:
            span._end = self.sampler.read_now()
            self._events.append((1, span))
        if exc_type is not None:
            span.tags.setdefault("exception", exc_type.__name__)
        try:
            _current.reset(span._token)
        except ValueError:  # closed in another context (e.g. a generator); restore the parent
            _current.set(span.parent)

    def _on_tick(self, snap) -> None:
        """Sampler thread: track open spans' peak power, write closed spans and samples."""
        events = self._events
        closed = []
        while events:
            kind, span = events.popleft()
            if kind == 0:
                if span._end is None:
                    self._open_spans[span.span_id] = span
                    self._heartbeat_dirty = True
            else:
                if self._open_spans.pop(span.span_id, None) is not None:
                    self._heartbeat_dirty = True
                closed.append(span)
        if self._open_spans:
            comp_power: dict[str, float] = {}
            total = 0.0
            for ch, p in zip(self.sampler.channels, snap.power_w, strict=False):
                comp_power[ch.component] = comp_power.get(ch.component, 0.0) + p
                total += p
            comp_power["total"] = total
            for span in self._open_spans.values():
                if snap.t < span._start.t:
                    continue
                peak = span._peak
                for k, p in comp_power.items():
                    if p > peak.get(k, -1.0):
                        peak[k] = p
        records = []
        for span in closed:
            r = span.result
            self.results.append(r)
            records.append(r)
        if self.writer is not None:
            self.writer.append_sample(snap)
            if records:
                self.writer.append_spans(records)
            if self._heartbeat_dirty:
                self.writer.heartbeat(self._open_state(), snap)
                self._heartbeat_dirty = False
            self.writer.flush()

    def _open_state(self) -> list[dict]:
        out = []
        for s in list(self._open_spans.values()):
            out.append({
                "span_id": s.span_id, "name": s.name, "path": s.path, "parent_id": s.parent_id,
                "depth": s.depth, "thread": s.thread, "start_utc": utc_iso(s._start.wall),
                "start_t": s._start.t, "start_energy_j": list(s._start.energy_j),
                "counts": dict(s.counts), "tags": dict(s.tags),
            })
        return out

    # -- results -------------------------------------------------------------------------------
    def _measure(self, span: Span) -> Measurement:
        if span.inert:
            t0, w0 = span._start
            t1, w1 = span._end
            return Measurement(
                name=span.name, path=span.path, span_id=span.span_id, parent_id=span.parent_id,
                depth=span.depth, run_id=self.run_id, start_utc=utc_iso(w0), end_utc=utc_iso(w1),
                duration_s=t1 - t0, energy_j=None, measured_energy_j=None, estimated_energy_j=None,
                energy_by_component={}, devices=(), avg_power_w=None, peak_power_w=None,
                peak_power_by_component_w={}, counts=dict(span.counts), tags=dict(span.tags),
                interval_s=self.config.interval_s,
                warnings=(
                    f"not measured: opened in a forked child (pid {os.getpid()}) of the measuring "
                    "process, or after the Meter was closed; the parent's spans include this work"
                    if self._forked else "not measured: the Meter was already closed",
                ),
                thread=span.thread, status="not-measured",
            )
        return measure(span, self.sampler, self.run_id)

    def intensity(self, start_s: float | None = None, end_s: float | None = None):
        """Carbon intensity for this meter's region (and live provider, if configured) over a
        UTC window. Offline figures are resolved once; live ones are fetched per window."""
        from . import carbon

        if self._carbon is None:
            self._carbon = carbon.resolve(self.config.region)
        provider, _, zone = self.config.carbon.partition(":")
        if provider == "offline":
            return self._carbon
        from .carbon.live import with_fallback

        now = self.clock.wall()
        start = now - 3600 if start_s is None else start_s
        end = now if end_s is None else end_s
        return with_fallback(provider, zone or self._carbon.zone, start, end, self._carbon)

    def _snapshot(self, span: Span) -> Measurement:
        """A span's figures so far, without closing it (status "open")."""
        from dataclasses import replace

        if span.inert or span._end is not None:
            return span.result
        view = Span.__new__(Span)
        for slot in ("meter", "name", "path", "span_id", "parent", "parent_id", "depth", "thread", "tags", "inert"):
            setattr(view, slot, getattr(span, slot))
        view.counts = dict(span.counts)
        view._start, view._end, view._peak = span._start, self.sampler.read_now(), dict(span._peak)
        return replace(measure(view, self.sampler, self.run_id), status="open")

    def _emissions_g(self, span: Span) -> float | None:
        """gCO2eq of a span, time-resolved over the sampler timeline when intensity varies."""
        result = span.result
        if result.energy_j is None:
            return None
        from . import carbon

        s0, s1 = span._start, span._end
        inten = self.intensity(s0.wall, s1.wall)
        if not inten.series:
            return carbon.emissions_g(result.energy_j, inten, self.config.pue)
        # Odometer snapshots inside the span give its energy per interval; scale them so they
        # sum to the span's reported energy (which may include edge corrections).
        snaps = [s0] + [p for p in self.sampler.timeline if s0.t < p.t < s1.t] + [s1]
        cum = [sum(p.energy_j) - sum(s0.energy_j) for p in snaps]
        scale = result.energy_j / cum[-1] if cum[-1] > 0 else 0.0
        if scale == 0.0:
            return carbon.emissions_over([s0.wall, s1.wall], [0.0, result.energy_j], inten, self.config.pue)
        return carbon.emissions_over([p.wall for p in snaps], [c * scale for c in cum], inten, self.config.pue)

    def sensors_report(self) -> dict[str, Any]:
        """What was found, what was not and why (starts the meter if needed)."""
        self.start()
        return {
            "channels": [c.describe() for c in self.sampler.channels],
            "unavailable": [u.describe() for u in self.discovery.unavailable],
            "notes": list(self.discovery.notes),
        }


_ARG_NAMES = (
    "carbon", "region", "pue", "interval_s", "output_dir", "gpus", "rapl_root", "run_name", "write", "sensors",
    "nvml", "clock", "cpu_tdp_w", "pid", "sync_cuda", "distributed", "environ", "pyproject",
)


def _sync_cuda() -> None:
    """Wait for queued CUDA work so it is charged to the span that launched it (no-op without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - a sync failure must not break the user's stage exit
        pass


def track(name: str, *, samples: float | None = None, tokens: float | None = None,
          flops: float | None = None, output_tokens: float | None = None, tags: dict | None = None,
          **unknown: Any) -> Track:
    """Measure a stage with the default Meter: ``with meter.track("finetune"):`` or as a decorator.
    The default Meter is created on first use, configured from ``METER_*`` and pyproject.toml."""
    return Track(None, name, {"samples": samples, "tokens": tokens, "output_tokens": output_tokens, "flops": flops, **unknown}, dict(tags or {}))

