"""One measuring run of a Meter: sensors, odometer, recorder, sampler and run log, opened
together (undone together if any part fails) and closed together.

The span boundaries (user threads) do one locked read each and a queue append; the tick (the
sampler thread) does everything else: peaks, records, the heartbeat and every write.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack
from typing import Any

from .clock import utc_iso
from .energy import make_plan
from .errors import RunLogError
from .odometer import Odometer
from .recorder import Recorder
from .sampler import ACTIVE_S, Sampler
from .spans import RunContext, open_view

log = logging.getLogger("meter")

#: A closed span waits at most about one sampling interval to be written: each tick writes
#: every span closed before it. When the oldest has waited BEHIND_INTERVALS intervals (the
#: sampler is behind), or this many are queued (about 50 ms of record building), the thread that
#: closes a span waits (up to BACKPRESSURE_WAIT_S) for the sampler to write them.
BACKLOG_MAX_SPANS = 512
BEHIND_INTERVALS = 1.5
BACKPRESSURE_WAIT_S = 1.0
#: Records are built and written in chunks of this many spans, so each reaches the disk soon.
WRITE_CHUNK = 256


class Session:
    """The parts of one run. Built by :func:`open_session`."""

    def __init__(self, discovery, odometer: Odometer, interval_s: float, run_id: str, writer, info: dict,
                 quiet_interval_s: float | None = None):
        self.discovery = discovery
        self.odometer = odometer
        self.recorder = Recorder(odometer.channels)
        self.writer = writer
        self.run_id = run_id
        self.run_dir = writer.run_dir if writer is not None else None
        self.info = info
        self.interval_s = interval_s
        self.ctx = RunContext(make_plan(odometer.channels), odometer.faults, run_id, interval_s)
        rec = self.recorder
        self.sampler = Sampler(odometer, interval_s, self.tick, on_first_error=self._record_error,
                               active=lambda: rec.active(ACTIVE_S), quiet_interval_s=quiet_interval_s,
                               last_edge=lambda: rec.last_edge)
        self.last = odometer.read()
        self.dropped_records = 0
        self._behind_s = BEHIND_INTERVALS * interval_s
        self._poke = self.sampler.poke

    # -- span boundaries (user threads) --------------------------------------------------------
    def enter(self, span) -> None:
        span.ctx = self.ctx
        odo = self.odometer
        with odo.lock:
            span._start = odo.read_edge_locked()
            self.recorder.opened(span)
        self._poke()

    def exit(self, span) -> bool:
        """Close ``span`` with a read now. False if it was already closed (by ``close``)."""
        odo = self.odometer
        with odo.lock:
            if span._end is not None:
                return False
            end = odo.read_edge_locked()
            self.recorder.closed(span)  # its peak is final from here
            with span._lock:
                span._end = end
        if self.writer is not None:  # in memory (write=False) nothing waits to be written
            rec = self.recorder
            q = rec.queue(span)
            if len(q) > BACKLOG_MAX_SPANS or rec.backlog_age_s() > self._behind_s:
                # The sampler is behind: wait for it, so the backlog stays about one interval.
                self.sampler.request_tick(wait=True, timeout=BACKPRESSURE_WAIT_S)
        self._poke()
        return True

    def snapshot(self, span):
        odo = self.odometer
        if odo.lock.acquire(timeout=0.05):
            try:
                end = odo.read_edge_locked()  # as cheap as a span edge: a Trainer reads one per step
                peak = dict(span._peak)
            finally:
                odo.lock.release()
        else:  # the lock is held long (a hung sensor): the last tick's figures, never a hang
            end, peak = self.last, dict(span._peak)
        if end.t < span._start.t:
            end = span._start
        return open_view(span, end, peak)

    def timeline(self, t0: float, t1: float) -> tuple[list, list]:
        """(walls, cumulative joules) of the minute timeline inside [t0, t1], copied under the lock."""
        with self.odometer.lock:
            pts = [p for p in self.odometer.timeline if t0 < p[0] < t1]
        return [p[0] for p in pts], [p[1] for p in pts]

    # -- the sampler thread --------------------------------------------------------------------
    def tick(self) -> None:
        odo, rec = self.odometer, self.recorder
        with odo.lock:
            odo.check_sensors()
            snap = odo.read_locked(quiet=not rec.active(ACTIVE_S))
            rec.observe(snap)
            odo.note_timeline(snap)
            beat = None
            if rec.dirty and self.writer is not None:
                beat = rec.open_state()
                rec.dirty = False
        self.last = snap
        w = self.writer
        while True:
            closed = rec.take_closed(WRITE_CHUNK)
            if not closed:
                break
            if w is not None:
                w.append_spans(self._records(closed))
                w.write_pending()
            rec.written()
        if w is None:
            return
        w.append_sample(snap)
        w.write_pending()
        if beat is not None:  # after the spans it no longer lists are on disk
            w.heartbeat(beat, snap)

    def _records(self, spans) -> list[dict]:
        out = []
        for s in spans:
            try:
                out.append(s.result.to_dict())
            except Exception:  # noqa: BLE001 - one bad record must not cost the others
                self.dropped_records += 1
                if self.dropped_records == 1:
                    log.exception("meter: the record of span %r could not be built; it is not in the run log", s.path)
        return out

    def _record_error(self) -> None:
        if self.writer is not None:
            self.writer.write_run({**self.info, "tick_errors": self.sampler.tick_errors,
                                   "first_tick_error": self.sampler.first_error})

    # -- close ---------------------------------------------------------------------------------
    def close(self, timeout_s: float, extra_info: dict) -> None:
        """Stop the thread (its final tick writes what was queued), measure spans still open
        from a final read, write everything, then close the sensors. Never raises."""
        joined = self.sampler.stop(timeout_s)
        odo, rec = self.odometer, self.recorder
        got = odo.lock.acquire(timeout=timeout_s if joined else 0.2)
        try:
            final = odo.read_locked() if got else self.last
            left_open = rec.open_spans()
            for span in left_open:
                peak = rec.closed(span)
                with span._lock:
                    span._peak = peak
                    span._status = "incomplete"
                    span._notes = ("incomplete: the Meter closed while this span was open",)
                    span._end = final
        finally:
            if got:
                odo.lock.release()
        if left_open:
            log.warning("meter: %d span(s) still open at close recorded as incomplete: %s", len(left_open),
                        ", ".join(repr(s.path) for s in left_open[:5]))
        w = self.writer
        if w is not None:
            w.append_spans(self._records(rec.take_closed() + left_open))
            w.append_sample(final)
            info = {**self.info, **extra_info, "ended_utc": utc_iso(final.wall),
                    "faults": [f.__dict__ for f in odo.faults],
                    "wraps": dict(zip([c.key for c in odo.channels], odo.wraps, strict=True)),
                    "learned_update_period_s": {c.key: odo.period_s(i) for i, c in enumerate(odo.channels) if c.mode == "energy"},
                    "ticks": self.sampler.ticks, "tick_errors": self.sampler.tick_errors,
                    "first_tick_error": self.sampler.first_error, "records_dropped": self.dropped_records}
            w.write_pending(force=True)
            if w.fault is not None:
                info["disk_fault"] = w.fault
            w.write_run(info)
            w.close(remove_heartbeat=w.pending_bytes == 0)
        if joined:
            odo.close()

    def after_fork_child(self) -> None:
        self.sampler.forget_thread()
        import threading

        self.odometer.lock = threading.RLock()
        if self.writer is not None:
            self.writer.abandon()
            self.writer = None


def run_info(session_parts: dict[str, Any]) -> dict[str, Any]:
    """What run.json says first: identity, configuration, channels, what was not available."""
    from .hardware import describe_host

    d = session_parts["discovery"]
    odo = session_parts["odometer"]
    return {
        "run_id": session_parts["run_id"], "run_name": session_parts["run_name"],
        "started_utc": session_parts["started_utc"], "config": session_parts["config"].describe(),
        "channels": [c.describe() for c in odo.channels], "unavailable": [u.describe() for u in d.unavailable],
        "notes": list(d.notes), "interval_s": session_parts["interval_s"],
        "quiet_interval_s": session_parts.get("quiet_interval_s"), "host": describe_host(d),
        "pid": os.getpid(), "argv": list(sys.argv if session_parts.get("argv") is None else session_parts["argv"]),
        "distributed": session_parts["distributed"],
    }


def open_session(*, config, clock, discovery_fn, write: bool, run_id: str, run_name: str | None,
                 interval_fn, distributed: dict | None, argv: list | None = None) -> Session:
    """Open sensors, the odometer and the run log, write run.json and the first sample, start
    the thread. On any failure everything opened so far is closed again and the error raised."""
    from .runlog import RunWriter, make_run_dir

    with ExitStack() as stack:
        discovery = discovery_fn()
        for s in discovery.sensors:
            stack.callback(_close_quietly, s)
        odometer = Odometer(discovery.sensors, clock)
        interval, quiet = interval_fn(discovery)
        writer = None
        started = utc_iso(clock.wall())
        if write:
            try:
                run_dir = make_run_dir(config.output_dir, run_id)
                run_id = os.path.basename(run_dir)
                writer = RunWriter(run_dir, odometer.channels)
            except OSError as exc:
                raise RunLogError(f"cannot start the run log in {os.path.abspath(config.output_dir)!r} "
                                  f"({exc.strerror or exc}); pass output_dir= or set METER_OUTPUT_DIR to a "
                                  "writable directory") from exc
            stack.callback(writer.close, remove_heartbeat=False)
        info = run_info({"discovery": discovery, "odometer": odometer, "run_id": run_id, "run_name": run_name,
                         "started_utc": started, "config": config, "interval_s": interval, "quiet_interval_s": quiet,
                         "distributed": distributed,
                         "argv": argv})
        session = Session(discovery, odometer, interval, run_id, writer, info, quiet_interval_s=quiet)
        if writer is not None:
            writer.write_run(info)
            writer.append_sample(session.last)
            writer.write_pending()
        session.sampler.start()
        stack.pop_all()
    return session


def discover_sensors(config, *, given, nvml, cpu_tdp_w, pid, environ, owner=None):
    """The sensors of a run: ``given`` ones, or what :func:`meter.sensors.discover` finds (one
    warning when CPU or DRAM energy will be estimated). ``owner`` (a
    :class:`meter.distributed.Ownership`) decides, with the job's other ranks, which devices
    this rank measures."""
    from .sensors import ESTIMATED, Discovery, discover

    if given is not None:
        if owner is not None:
            owner.resolve([])  # the other ranks still wait for this rank's answer
        return Discovery(sensors=list(given))
    d = discover(gpus=config.gpus, rapl_root=config.rapl_root, nvml=nvml, cpu_tdp_w=cpu_tdp_w,
                 cpu_power_w=config.cpu_power_w, pid=pid, environ=environ, owner=owner)
    est = sorted({c.component for c in d.channels if c.provenance == ESTIMATED})
    if est:
        why = [u.reason for u in d.unavailable if u.sensor == "rapl"] or ["RAPL has no zone for it"]
        log.warning("meter: %s energy will be estimated, not measured (%s); run `python -m meter` for why and "
                    "how to fix", " and ".join(est), "; ".join(why))
    return d


def safe_interval(interval: float, discovery, name: str = "interval_s") -> float:
    """A sampling interval, shortened so that no RAPL counter can wrap twice between ticks."""
    for s in discovery.sensors:
        wrap = getattr(s, "wrap_period_s", lambda: None)()
        if wrap is not None and interval > wrap / 4:
            safe = wrap / 4
            discovery.notes.append(f"{name}={interval:g} s is too long for RAPL counters that can wrap every "
                                   f"{wrap:.3g} s at full power; sampling every {safe:.3g} s instead")
            log.warning("meter: %s", discovery.notes[-1])
            interval = safe
    return interval


def make_run_id(clock, run_name: str | None, rank) -> str:
    """``[name-]YYYYMMDDTHHMMSSZ-host-pid[-rankN]``, one safe path component."""
    import socket

    from .runlog import safe_component

    stamp = utc_iso(clock.wall()).replace("-", "").replace(":", "").split(".")[0]
    host = socket.gethostname().split(".")[0] or "host"
    base = f"{stamp}Z-{host}-{os.getpid()}"
    if run_name:
        base = f"{run_name}-{base}"
    if rank is not None:
        base = f"{base}-rank{rank.rank}"
    return safe_component(base, "run")


def _close_quietly(sensor) -> None:
    try:
        sensor.close()
    except Exception:  # noqa: BLE001 - undoing a failed start is best effort
        log.debug("meter: closing sensor %s failed", getattr(sensor, "name", sensor), exc_info=True)
