"""Span bookkeeping: which spans are open (and the peak power seen while they are), which closed
spans wait to be written, and the records the sampler thread writes for them.

``opened``, ``closed`` and ``observe`` run under the odometer's lock (a span's boundary read and
the sampler's tick take it), so a span's peak is exactly the highest power of the ticks between
its two reads. Everything else runs on the sampler thread, except :meth:`queue`, a deque append.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Sequence

from .clock import utc_iso

#: A span entered this recently, with no span exiting since, may still be a short one (see
#: Recorder.active): fast power polling covers it.
OPEN_SHORT_S = 0.25


class Recorder:
    def __init__(self, channels: Sequence):
        comps: dict[str, list[int]] = {}
        for i, c in enumerate(channels):
            comps.setdefault(c.component, []).append(i)
        self._comps = tuple((k, tuple(v)) for k, v in comps.items())
        self._open: dict[int, Any] = {}
        self._closed: deque = deque()
        self._inflight_t: float | None = None  # close time of the oldest span taken, not yet written
        self.dirty = False
        self.last_edge = -1e18  # time.monotonic() of the last span entry or exit
        self.last_exit = -1e18  # time.monotonic() of the last span exit

    # -- under the odometer lock ---------------------------------------------------------------
    def opened(self, span) -> None:
        self._open[span.span_id] = span
        self.dirty = True
        self.last_edge = time.monotonic()

    def closed(self, span) -> dict[str, float]:
        """Forget an open span; its peak power so far, to freeze into its result."""
        self._open.pop(span.span_id, None)
        self.dirty = True
        self.last_edge = self.last_exit = time.monotonic()
        return span._peak  # no tick raises it any more: it is out of the open set

    def observe(self, snap) -> None:
        """A tick's snapshot: raise the peak power of every span open at its moment."""
        if not self._open:
            return
        power = snap.power_w
        comp = [(k, sum(power[i] for i in idx)) for k, idx in self._comps]
        total = sum(power)
        for span in self._open.values():
            if snap.t < span._start.t:
                continue
            peak = span._peak
            if total > peak.get("total", -1.0):
                peak["total"] = total
            for k, p in comp:
                if p > peak.get(k, -1.0):
                    peak[k] = p

    def open_state(self) -> list[dict]:
        """Heartbeat entries of the open spans (call under the lock; a shallow copy)."""
        out = []
        for s in list(self._open.values()):
            st = s._start
            out.append({
                "span_id": s.span_id, "name": s.name, "path": s.path, "parent_id": s.parent_id, "depth": s.depth,
                "thread": s.thread, "start_utc": utc_iso(st.wall), "start_t": st.t, "start_energy_j": list(st.energy_j),
                "counts": dict(s.counts), "tags": dict(s.tags),
            })
        return out

    def active(self, within_s: float) -> bool:
        """Short spans may be running: one closed within the last ``within_s`` seconds, or one
        opened within the last :data:`OPEN_SHORT_S` (a span open longer, with none closing, is
        not short: a Trainer's training stage, once its first steps ran)."""
        now = time.monotonic()
        return now - self.last_exit < within_s or now - self.last_edge < min(within_s, OPEN_SHORT_S)

    def open_spans(self) -> list:
        return list(self._open.values())

    # -- any thread ----------------------------------------------------------------------------
    def queue(self, span) -> deque:
        """Queue a closed span for writing; returns the queue (its length is the backlog)."""
        q = self._closed
        q.append((span, time.monotonic()))
        return q

    def backlog_age_s(self) -> float:
        """How long the oldest closed span not yet on disk has waited (0 when none)."""
        t = self._inflight_t
        if t is None:
            try:
                t = self._closed[0][1]
            except IndexError:
                return 0.0
        return time.monotonic() - t

    @property
    def backlog(self) -> int:
        """Closed spans waiting to be taken by the writer."""
        return len(self._closed)

    # -- the sampler thread --------------------------------------------------------------------
    def take_closed(self, limit: int | None = None) -> list:
        """Closed spans queued so far, oldest first (at most ``limit``); call :meth:`written`
        once their records are on disk."""
        q = self._closed
        out = []
        while q and (limit is None or len(out) < limit):
            span, t = q.popleft()
            if self._inflight_t is None:
                self._inflight_t = t
            out.append(span)
        return out

    def written(self) -> None:
        self._inflight_t = None
