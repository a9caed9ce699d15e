"""The one background thread, and the one place where readings become cumulative joules.

Every channel becomes an *odometer*: joules since the sampler started. Energy counters add their
deltas (a counter that went backwards wrapped, and its range is added back; one with no range was
reset, e.g. by a driver reload, and its new value is the energy since); power channels add the
trapezoid between consecutive readings; estimated channels follow the same rules. A span's energy
is then the difference of two odometer snapshots, read synchronously at its edges.

The sampler also learns each counter's update period (the longest stretch over which it was
seen not to move while drawing power), keeps a bounded timeline of power, records sensor
faults, and survives any of them.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from .counters import UpdateGrid, counter_delta
from .sensors import COUNTER, POWER_INTEGRATED, Channel, Fault

log = logging.getLogger("meter")

#: Upper bound on a learned counter update period; longer flat stretches mean an idle device.
MAX_UPDATE_PERIOD_S = 1.0
#: A counter's power is estimated over its last this-many changes, so that the jitter between a
#: counter's update and our first sight of it averages out (about 1 s at NVML's 100 ms period).
POWER_WINDOW_CHANGES = 10
#: The update period is the longest flat stretch over this many recent changes, trusted only
#: after this many were seen (a counter poked by hand in a test has no period to learn).
PERIOD_WINDOW = 16
PERIOD_MIN_CHANGES = 8
#: Power-only hardware channels (pre-Volta GPUs) are polled this often, with random jitter so a
#: periodic load cannot alias with the polling: at 10 Hz a 4 Hz square wave is misread by ~10%.
FAST_POWER_INTERVAL_S = 0.02
#: Counters whose learned update period is at least this long (NVML's ~100 ms) also have their
#: instantaneous power read, to correct spans shorter than one update.
AUX_POWER_MIN_PERIOD_S = 0.005
#: At start the sampler thread reads counters every PROBE_INTERVAL_S for up to PROBE_S seconds to
#: learn their update periods (as Zeus does): at 10 Hz a 10 Hz counter never looks flat.
PROBE_S = 1.5
PROBE_INTERVAL_S = 0.001
PROBE_IDLE_S = 0.3
#: Polled-power samples kept per coarse counter: at ~20 ms, about two update periods of history.
PINT_HISTORY = 16
#: Every REANCHOR_S the thread re-reads coarse counters every millisecond until each shows one
#: update, re-pinning their update grids so that drift in the learned period never accumulates.
REANCHOR_S = 30.0


@dataclass(frozen=True)
class Snapshot:
    """Odometer state at one instant. ``energy_j`` and ``power_w`` follow ``Sampler.channels``."""

    t: float  # monotonic seconds
    wall: float  # UTC epoch seconds
    energy_j: tuple
    power_w: tuple
    n_faults: int
    # Per channel: joules the counter's reading lags ``t`` by (the energy since its last update,
    # for coarse counters with a learned update grid), else None. None when no channel has one.
    lag_j: tuple | None = None
    # Per channel: joules integrated from instantaneous power polled between the counter's coarse
    # updates (for spans too short for the counter), else None.
    pint_j: tuple | None = None


@dataclass(frozen=True)
class FaultRecord:
    t: float
    wall: float
    key: str
    reason: str
    hint: str
    permanent: bool


class Sampler:
    """Reads sensors on a daemon thread every ``interval_s`` and on demand via :meth:`read_now`."""

    def __init__(
        self,
        sensors: Sequence,
        clock,
        interval_s: float = 0.1,
        *,
        timeline_len: int = 36_000,
        on_tick: Callable[[Snapshot], None] | None = None,
    ):
        self._sensors = tuple(sensors)
        self.channels: tuple[Channel, ...] = tuple(c for s in self._sensors for c in s.channels)
        starts, k = [], 0
        for sensor in self._sensors:
            starts.append(k)
            k += len(sensor.channels)
        self._starts = tuple(starts)
        self._fast = tuple(
            (i, sensor) for i, sensor in enumerate(self._sensors)
            if any(c.mode == "power" and c.provenance == POWER_INTEGRATED for c in sensor.channels)
        )
        self.fast_interval_s = min(interval_s, FAST_POWER_INTERVAL_S) if self._fast else None
        self._counter_sensors = tuple(
            (i, sensor) for i, sensor in enumerate(self._sensors)
            if any(c.mode == "energy" and c.provenance == COUNTER and "update_period_s" not in c.details for c in sensor.channels)
        )
        self._aux: dict[int, list[int]] = {}  # sensor index -> channel indices needing instant power
        self.clock = clock
        self.interval_s = interval_s
        self.on_tick = on_tick
        n = len(self.channels)
        self._is_energy = tuple(c.mode == "energy" for c in self.channels)
        # Update periods are learned, and short spans corrected, for hardware counters only: an
        # estimate's CPU-time input has a known 10 ms tick and flat stretches that mean "idle".
        # A sensor may declare its counter's update period (RAPL: ~1 ms; fakes: continuous).
        self._declared = tuple(c.details.get("update_period_s") for c in self.channels)
        self._learn = tuple(c.mode == "energy" and c.provenance == COUNTER and d is None
                            for c, d in zip(self.channels, self._declared, strict=True))
        self._changes = [deque(maxlen=POWER_WINDOW_CHANGES) for _ in self.channels]
        self._wrap = tuple(c.wrap_j or 0.0 for c in self.channels)
        self._raw: list = [None] * n
        self._odo = [0.0] * n
        self._power = [0.0] * n
        self._seen_t = [0.0] * n  # when the current counter value was first seen
        self._flat = [0.0] * n  # how long the current counter value has been seen unchanged
        self._last_t = [0.0] * n  # when each counter was last read
        self._before_t = [0.0] * n  # the last read that still showed the previous counter value
        self._pint = [0.0] * n  # power odometer of coarse counters (see _read_aux)
        self._pint_t: list = [None] * n
        self._pint_p: list = [None] * n
        self._pint_hist = [deque(maxlen=PINT_HISTORY) for _ in range(n)]
        self._grids: dict[int, UpdateGrid] = {}  # coarse counters' update grids
        self._flats = [deque(maxlen=PERIOD_WINDOW) for _ in range(n)]
        self._alive = [True] * n
        self.faults: list[FaultRecord] = []
        self._fault_keys: set[tuple[str, str]] = set()
        self.wraps = [0] * n
        self.resets = [0] * n
        self.timeline: deque = deque(maxlen=timeline_len)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.tick_errors = 0

    # -- reading -------------------------------------------------------------------------------
    def read_now(self) -> Snapshot:
        """Read every sensor now and return the odometers. Thread-safe; never raises for sensors."""
        with self._lock:
            t = self.clock.monotonic()
            wall = self.clock.wall()
            values: list = []
            for s in self._sensors:
                values.extend(self._read(s))
            self._update(t, wall, values, 0)
            lag = pint = None
            if self._aux:
                self._read_aux(t)
                lag = tuple(self._lag(i, t) for i in range(len(self._odo)))
                pint = tuple(self._pint)
            return Snapshot(t, wall, tuple(self._odo), tuple(self._power), len(self.faults), lag, pint)

    def _read(self, sensor) -> tuple:
        try:
            return sensor.read()
        except Exception as exc:  # noqa: BLE001 - a broken sensor must not break training
            return (Fault(f"{sensor.name} sensor raised {type(exc).__name__}: {exc}"),) * len(sensor.channels)

    def _age(self, i: int, t: float) -> float | None:
        """How long counter ``i``'s reading lags ``t``: from its update grid, kept consistent with
        what the reads saw (the value last changed between ``_before_t`` and ``_seen_t``), so a
        small phase error near an update never shifts a span by a whole update."""
        g = self._grids.get(i)
        if g is None or not g.ready:
            return None
        age = g.age(t)
        lo, hi = t - self._seen_t[i], t - self._before_t[i]
        while age < lo:
            age += g.period
        while age > hi and age - g.period >= 0.0:
            age -= g.period
        return age

    def _lag(self, i: int, t: float) -> float | None:
        """Energy since counter ``i``'s last update: the polled power integrated from the update
        to ``t`` where the history reaches back that far, else power x time since the update."""
        age = self._age(i, t)
        if age is None:
            return None
        u = t - age
        pts = self._pint_hist[i]
        if len(pts) >= 2 and pts[0][0] <= u:
            for k in range(len(pts) - 1, 0, -1):  # newest interval first; the last point is ``t``
                (t0, e0), (t1, e1) = pts[k - 1], pts[k]
                if t0 <= u:
                    frac = (u - t0) / (t1 - t0) if t1 > t0 else 0.0
                    return self._pint[i] - (e0 + (e1 - e0) * frac)
        return self._power[i] * age

    def _read_aux(self, t: float) -> None:
        """Instantaneous power of coarse counters: it replaces the rate derived from the counter,
        and is integrated (trapezoid) into a power odometer for spans too short for the counter."""
        for si, idx in self._aux.items():
            try:
                p = self._sensors[si].read_power()
            except Exception:  # noqa: BLE001 - the derived rate stays in place
                continue
            base = self._starts[si]
            for i in idx:
                v = p[i - base]
                if isinstance(v, float) and self._alive[i]:
                    self._power[i] = v
                    if self._pint_t[i] is not None:
                        self._pint[i] += (self._pint_p[i] + v) * 0.5 * (t - self._pint_t[i])
                    self._pint_t[i], self._pint_p[i] = t, v
                    self._pint_hist[i].append((t, self._pint[i]))

    def read_fast(self) -> None:
        """Between full ticks: sensors with power-only channels, and coarse counters' power."""
        self._read_some(self._fast)
        if self._aux:
            with self._lock:
                self._read_aux(self.clock.monotonic())

    def _read_some(self, sensors) -> None:
        with self._lock:
            t = self.clock.monotonic()
            wall = self.clock.wall()
            for si, sensor in sensors:
                self._update(t, wall, list(self._read(sensor)), self._starts[si])

    def _update(self, t: float, wall: float, values: list, base: int) -> None:
        raw, odo, power = self._raw, self._odo, self._power
        for i, v in enumerate(values, base):
            if not self._alive[i]:
                continue
            if isinstance(v, Fault):
                self._fault(t, wall, i, v)
                continue
            if not (v - v == 0.0):  # NaN or infinity from a confused driver
                self._fault(t, wall, i, Fault(f"{self.channels[i].key}: sensor returned {v!r}; reading ignored"))
                continue
            prev = raw[i]
            raw[i] = v
            if self._is_energy[i]:
                last_t, self._last_t[i] = self._last_t[i], t
                if prev is None:
                    self._seen_t[i] = t
                    self._changes[i].append((t, 0.0))
                    continue
                if v == prev:
                    if power[i] > 0 and self._learn[i]:
                        self._flat[i] = t - self._seen_t[i]
                    continue
                delta, event = counter_delta(prev, v, self._wrap[i])
                if event == "wrap":
                    self.wraps[i] += 1
                elif event == "reset":
                    self.resets[i] += 1
                    self._fault(t, wall, i, Fault(
                        f"{self.channels[i].key}: counter went backwards without a wrap range "
                        "(driver reload?); counting its new value as the energy since",
                        "avoid reloading the GPU driver during a measured run",
                    ))
                odo[i] += delta
                if self._learn[i]:
                    if 0.0 < self._flat[i] <= MAX_UPDATE_PERIOD_S:
                        self._flats[i].append(self._flat[i])
                        if len(self._flats[i]) == PERIOD_MIN_CHANGES:
                            self._maybe_aux(i)
                    self._flat[i] = 0.0
                    if i in self._grids:
                        self._grids[i].observe(last_t, t, self.update_period_s(i))
                    self._before_t[i] = last_t
                ring = self._changes[i]
                ring.append((t, odo[i]))
                t0, e0 = ring[0]
                if t > t0:
                    power[i] = (odo[i] - e0) / (t - t0)
                self._seen_t[i] = t
            else:
                # Trapezoid from this channel's own last good reading (a transient fault leaves a gap).
                if prev is not None:
                    odo[i] += (prev + v) * 0.5 * (t - self._seen_t[i])
                self._seen_t[i] = t
                power[i] = v

    def _fault(self, t: float, wall: float, i: int, fault: Fault) -> None:
        key = self.channels[i].key
        if fault.permanent:
            self._alive[i] = False
            self._power[i] = 0.0
        ident = (key, fault.reason)
        if ident in self._fault_keys:
            return
        self._fault_keys.add(ident)
        self.faults.append(FaultRecord(t, wall, key, fault.reason, fault.hint, fault.permanent))
        log.warning("meter: %s%s", fault.reason, f" ({fault.hint})" if fault.hint else "")

    def _maybe_aux(self, i: int) -> None:
        if self.update_period_s(i) < AUX_POWER_MIN_PERIOD_S:
            return
        self._grids[i] = UpdateGrid()
        for si, sensor in enumerate(self._sensors):
            base = self._starts[si]
            if base <= i < base + len(sensor.channels) and hasattr(sensor, "read_power"):
                self._aux.setdefault(si, []).append(i)

    def update_period_s(self, i: int) -> float:
        """Learned update period of counter channel ``i``: the longest stretch it was seen not to
        move while drawing power, over its last changes. 0.0 until seen often enough to trust."""
        if self._declared[i] is not None:
            return float(self._declared[i])
        flats = self._flats[i]
        return max(flats) if len(flats) >= PERIOD_MIN_CHANGES else 0.0

    # -- the thread ----------------------------------------------------------------------------
    def tick(self) -> Snapshot:
        """One background step: read, extend the timeline, hand the snapshot to ``on_tick``."""
        snap = self.read_now()
        self.timeline.append(snap)
        if self.on_tick is not None:
            try:
                self.on_tick(snap)
            except Exception:  # noqa: BLE001 - losing a tick's bookkeeping beats killing the thread
                self.tick_errors += 1
                if self.tick_errors == 1:
                    log.exception("meter: sampler tick failed; measurement continues")
        return snap

    def _probe(self) -> None:
        start = time.monotonic()
        deadline = start + PROBE_S
        learn = [i for i, flag in enumerate(self._learn) if flag]
        first = [self._raw[i] for i in learn]
        while time.monotonic() < deadline and not self._stop.is_set():
            if time.monotonic() - start > PROBE_IDLE_S and [self._raw[i] for i in learn] == first:
                return  # counters that do not move (an idle fake, a stalled driver) teach nothing
            if all(not self._alive[i] or (len(self._flats[i]) >= PERIOD_MIN_CHANGES
                                           and (i not in self._grids or self._grids[i].ready)) for i in learn):
                return
            self._read_some(self._counter_sensors)
            self._stop.wait(PROBE_INTERVAL_S)

    def _reanchor(self) -> None:
        if not self._grids:
            return
        pinned = {i: len(g.points) for i, g in self._grids.items()}
        deadline = time.monotonic() + 2 * max(g.period or 0.1 for g in self._grids.values())
        while time.monotonic() < deadline and not self._stop.is_set():
            self._read_some(self._counter_sensors)
            if all(len(g.points) != pinned[i] or not self._alive[i] for i, g in self._grids.items()):
                return
            self._stop.wait(PROBE_INTERVAL_S)

    def _run(self) -> None:
        if any(self._learn):
            self._probe()
        # Grids are re-pinned after 2 s, then 4, 8, ... up to every REANCHOR_S, as the baseline
        # behind their period estimate grows.
        anchor_every = 2.0
        next_anchor = time.monotonic() + anchor_every
        next_full = time.monotonic() + self.interval_s
        while True:
            # Power-only channels and coarse counters' power are polled at a jittered fast rate
            # between full ticks; without them the thread just ticks.
            fast = self.fast_interval_s if self.fast_interval_s is not None else (
                min(self.interval_s, FAST_POWER_INTERVAL_S) if self._aux else None)
            remaining = max(0.0, next_full - time.monotonic())
            wait = remaining if fast is None else min(fast * random.uniform(0.5, 1.5), remaining)
            if self._stop.wait(wait):
                return
            now = time.monotonic()
            if now >= next_full:
                self.tick()
                next_full = max(next_full + self.interval_s, now + 0.5 * self.interval_s)
                if self._grids and now >= next_anchor:
                    self._reanchor()
                    anchor_every = min(2 * anchor_every, REANCHOR_S)
                    next_anchor = time.monotonic() + anchor_every
            else:
                self.read_fast()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="meter-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one final tick. Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None and self._pid == os.getpid():
            self._stop.set()
            thread.join()
            self.tick()

    def forget_thread(self) -> None:
        """In a forked child: the thread does not exist here; drop it without joining."""
        self._thread = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.stop()
        for s in self._sensors:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass
