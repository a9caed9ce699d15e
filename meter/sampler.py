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
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from .sensors import COUNTER, Channel, Fault

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


@dataclass(frozen=True)
class Snapshot:
    """Odometer state at one instant. ``energy_j`` and ``power_w`` follow ``Sampler.channels``."""

    t: float  # monotonic seconds
    wall: float  # UTC epoch seconds
    energy_j: tuple
    power_w: tuple
    n_faults: int


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
        self.clock = clock
        self.interval_s = interval_s
        self.on_tick = on_tick
        n = len(self.channels)
        self._is_energy = tuple(c.mode == "energy" for c in self.channels)
        # Update periods are learned, and short spans corrected, for hardware counters only: an
        # estimate's CPU-time input has a known 10 ms tick and flat stretches that mean "idle".
        self._learn = tuple(c.mode == "energy" and c.provenance == COUNTER for c in self.channels)
        self._changes = [deque(maxlen=POWER_WINDOW_CHANGES) for _ in self.channels]
        self._wrap = tuple(c.wrap_j or 0.0 for c in self.channels)
        self._raw: list = [None] * n
        self._odo = [0.0] * n
        self._power = [0.0] * n
        self._seen_t = [0.0] * n  # when the current counter value was first seen
        self._flat = [0.0] * n  # how long the current counter value has been seen unchanged
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
                try:
                    values.extend(s.read())
                except Exception as exc:  # noqa: BLE001 - a broken sensor must not break training
                    values.extend([Fault(f"{s.name} sensor raised {type(exc).__name__}: {exc}")] * len(s.channels))
            self._update(t, wall, values)
            return Snapshot(t, wall, tuple(self._odo), tuple(self._power), len(self.faults))

    def _update(self, t: float, wall: float, values: list) -> None:
        raw, odo, power = self._raw, self._odo, self._power
        for i, v in enumerate(values):
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
                if prev is None:
                    self._seen_t[i] = t
                    self._changes[i].append((t, 0.0))
                    continue
                if v == prev:
                    if power[i] > 0 and self._learn[i]:
                        self._flat[i] = t - self._seen_t[i]
                    continue
                delta = v - prev
                if delta < 0:
                    if self._wrap[i]:
                        delta += self._wrap[i]
                        self.wraps[i] += 1
                    else:
                        delta = v
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
                    self._flat[i] = 0.0
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

    def update_period_s(self, i: int) -> float:
        """Learned update period of counter channel ``i``: the longest stretch it was seen not to
        move while drawing power, over its last changes. 0.0 until seen often enough to trust."""
        flats = self._flats[i]
        return max(flats) if len(flats) >= PERIOD_MIN_CHANGES else 0.0

    def alive(self, i: int) -> bool:
        return self._alive[i]

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

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

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
