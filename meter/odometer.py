"""Readings become cumulative joules per channel: the *odometers*.

Energy counters add their deltas (wraps and resets corrected in :mod:`meter.counters`); power
channels add the trapezoid between consecutive readings; estimated channels follow the same
rules. A span's energy is then the difference of two snapshots read at its edges. Coarse
counters (NVML's energy counter moves about every 100 ms) learn their update period and grid,
and have their instantaneous power polled and integrated, so that the energy a reading lags
behind can be added back (see :mod:`meter.energy`).

All state is behind one lock, taken by span boundaries (user threads) and the sampler thread.
Sensor faults are recorded once per cause and never raise.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from .counters import TIGHT_S, PeriodLearner, PowerIntegral, UpdateGrid, counter_delta
from .sensors import COUNTER, POWER_INTEGRATED, Channel, Fault

log = logging.getLogger("meter")

#: A counter's power is its rate over its last this-many changes, so the jitter between an
#: update and our first sight of it averages out (about 1 s at NVML's 100 ms period).
POWER_WINDOW_CHANGES = 10
#: Counters whose learned update period is at least this long (NVML's ~100 ms) also have their
#: instantaneous power read, to correct spans shorter than one update.
AUX_POWER_MIN_PERIOD_S = 0.005
#: A coarse counter that has not moved for FROZEN_PERIODS update periods (at least
#: FROZEN_MIN_S) while its device draws more than IDLE_W is frozen: a fault, not zero power.
FROZEN_PERIODS = 20
FROZEN_MIN_S = 2.0
IDLE_W = 1.0
#: Plausibility: a counter moves at most max power x (PLAUSIBLE_FACTOR x time between reads +
#: SLACK_S), the slack covering a coarse counter's update (NVML: <= 100 ms) arriving at once.
PLAUSIBLE_FACTOR = 2.0
SLACK_S = 0.25
#: A full read (a tick) reads coarse counters' instantaneous power only when the last poll is
#: older than this. Span edges never read it: they are resolved against the sampler's polls.
EDGE_FRESH_S = 0.005
#: Probe reads (every 1 ms) poll instantaneous power this often only.
PROBE_POWER_S = 0.005
#: The probe sleeps through the flat middle of each update period (see Odometer.probe_wake)
#: only for counters whose flat stretches are at least this long; faster ones are read densely
#: for the few reads they need.
PROBE_WINDOWED_MIN_S = 0.02
#: While no span comes or goes, ticks poll coarse counters' instantaneous power this often only
#: (it changes no answer then; the first edge after a quiet stretch pokes the sampler to poll).
QUIET_POWER_S = 1.0
#: A span edge extends a sensor it does not read (the CPU and RAM estimates) from the sampler
#: thread's last reading at its last rate, but only over this long: after a quiet stretch (sparse
#: ticks) the edge reads that sensor itself, so work that stopped or started since is not
#: extrapolated across the gap. Above the default tick interval, so back-to-back spans never pay.
EXTEND_MAX_S = 0.15
#: Polled-power points kept per coarse counter: at ~20 ms, about two update periods of history.
PINT_HISTORY = 16
#: The coarse energy timeline (for time-resolved emissions in-process) keeps one point this often.
TIMELINE_STEP_S = 60.0
TIMELINE_POINTS = 7 * 24 * 60


class Snapshot:
    """Odometer state at one instant; per-channel tuples follow ``Odometer.channels``.

    ``lag_j`` and ``pint_j`` of a span edge's snapshot are resolved after the edge, from the
    instantaneous-power polls around it (see :meth:`Odometer.read_edge_locked`): the sampler thread
    resolves them at its next poll, or the first reader does (polling then if none came yet).
    """

    __slots__ = ("t", "wall", "energy_j", "power_w", "n_faults", "_lag", "_pint", "period_s", "_ages", "_odo")

    def __init__(self, t: float, wall: float, energy_j: tuple, power_w: tuple, n_faults: int,
                 lag_j: tuple | None = None, pint_j: tuple | None = None, period_s: tuple = (), *,
                 ages: tuple | None = None, odo: "Odometer | None" = None):
        self.t = t  # monotonic seconds
        self.wall = wall  # UTC epoch seconds
        self.energy_j = energy_j
        self.power_w = power_w
        self.n_faults = n_faults
        self._lag = lag_j
        self._pint = pint_j
        # Per channel: the counter's update period as known at this instant (0.0: unknown/continuous).
        self.period_s = period_s
        self._ages = ages  # per channel: how old a coarse counter's reading was at ``t`` (None: no grid)
        self._odo = odo  # set while lag_j/pint_j wait for the polls around ``t``

    @property
    def lag_j(self) -> tuple | None:
        """Per channel: joules the counter's reading lags ``t`` by (energy since its last update,
        for coarse counters with a learned grid), else None. None when no channel has one."""
        if self._odo is not None:
            self._odo.resolve(self)
        return self._lag

    @property
    def pint_j(self) -> tuple | None:
        """Per channel: joules integrated from polled instantaneous power (coarse counters), else None."""
        if self._odo is not None:
            self._odo.resolve(self)
        return self._pint

    @property
    def resolved(self) -> bool:
        return self._odo is None

    def __repr__(self) -> str:
        return f"Snapshot(t={self.t!r}, energy_j={self.energy_j!r}, resolved={self.resolved})"


@dataclass(frozen=True)
class FaultRecord:
    """A sensor fault, recorded once per (channel, reason)."""

    t: float
    wall: float
    key: str
    reason: str
    hint: str
    permanent: bool


class _Chan:
    """Per-channel state of one odometer."""

    __slots__ = ("raw", "odo", "power", "seen_t", "last_t", "before_t", "tight_t", "loose_n", "changes", "alive",
                 "learner", "grid", "pint", "declared", "wrap", "is_energy", "learns", "max_w", "suspect", "suspect_t", "frozen_s")

    def __init__(self, ch: Channel):
        self.raw = None
        self.odo = 0.0
        self.power = 0.0
        self.seen_t = 0.0  # when the current counter value was first seen
        self.last_t = 0.0  # when the counter was last read
        self.before_t = 0.0  # the last read that still showed the previous value
        self.tight_t = 0.0  # the last update seen within TIGHT_S (0: none yet)
        self.loose_n = 0  # changes seen since then, each not within TIGHT_S
        self.changes: deque = deque(maxlen=POWER_WINDOW_CHANGES)
        self.alive = True
        self.is_energy = ch.mode == "energy"
        self.declared = ch.details.get("update_period_s")
        # Periods are learned for hardware counters only: an estimate's CPU-time input has a
        # known 10 ms tick and flat stretches that mean "idle".
        self.learns = self.is_energy and ch.provenance == COUNTER and self.declared is None
        self.learner = PeriodLearner() if self.learns else None
        self.grid: UpdateGrid | None = None
        self.pint: PowerIntegral | None = None
        self.wrap = ch.wrap_j or 0.0
        self.max_w = ch.details.get("max_power_w")  # None: no plausibility bound (estimates, fakes)
        self.suspect: float | None = None  # an implausible reading, kept to see if the next agrees
        self.suspect_t = 0.0
        self.frozen_s = float("inf")  # flat this long while drawing power: frozen (see Odometer._set_periods)

    def bound_j(self, dt: float) -> float:
        """The most energy the device can plausibly use in ``dt`` seconds between reads."""
        if not self.max_w:
            return float("inf")
        return self.max_w * (PLAUSIBLE_FACTOR * max(dt, 0.0) + SLACK_S)

    @property
    def learning(self) -> bool:
        """Its update period, or the grid of its updates, is still being learned."""
        return self.learns and self.alive and (not self.learner.known or (self.grid is not None and not self.grid.ready))

    @property
    def period_s(self) -> float:
        """The update period: declared, else the pinned grid's once it is ready (a least-squares
        fit over seconds of updates), else the longest flat stretch seen (a lower bound that
        sparse reads, 20 ms apart at span edges, pull down by up to a read gap)."""
        if self.declared is not None:
            return float(self.declared)
        g = self.grid
        if g is not None and g.ready:
            return g.period
        return self.learner.period_s if self.learner is not None else 0.0

    def age_s(self, t: float) -> float | None:
        """How long a coarse counter's reading lags ``t``: from its update grid, kept consistent
        with what the reads saw (the value last changed between ``before_t`` and ``seen_t``), so a
        small phase error near an update never shifts a span by a whole update."""
        g = self.grid
        if g is None or not g.ready:
            return None
        age = g.age(t)
        lo, hi = t - self.seen_t, t - self.before_t
        while age < lo:
            age += g.period
        while age > hi and age - g.period >= 0.0:
            age -= g.period
        return age


class Odometer:
    """Cumulative joules per channel of ``sensors``, read under one lock."""

    def __init__(self, sensors: Sequence, clock):
        # Re-entrant: a snapshot resolved lazily (Snapshot.lag_j) takes it again if its reader holds it.
        self.lock = threading.RLock()
        self.clock = clock
        self._monotonic, self._wall = clock.monotonic, clock.wall
        self._sensors = tuple(sensors)
        chans: list[Channel] = []
        starts = []
        for s in self._sensors:
            starts.append(len(chans))
            chans.extend(s.channels)
        self.channels: tuple[Channel, ...] = tuple(chans)
        self._starts = tuple(starts)
        self._c = [_Chan(c) for c in self.channels]
        self._fast = tuple((i, s) for i, s in enumerate(self._sensors)
                           if any(c.mode == "power" and c.provenance == POWER_INTEGRATED for c in s.channels))
        self._learning = tuple((i, s) for i, s in enumerate(self._sensors)
                               if any(self._c[self._starts[i] + k].learns for k in range(len(s.channels))))
        # Counters that learn their period are presumed coarse until proven otherwise: their
        # instantaneous power is polled and integrated from the start (sensor index -> channels).
        self._aux: dict[int, list[int]] = {}
        self._aux_t = -1e18  # when instantaneous power was last polled
        for si, sensor in enumerate(self._sensors):
            if hasattr(sensor, "read_power"):
                for k in range(len(sensor.channels)):
                    c = self._c[self._starts[si] + k]
                    if c.learns:
                        c.grid, c.pint = UpdateGrid(), PowerIntegral(PINT_HISTORY)
                        self._aux.setdefault(si, []).append(self._starts[si] + k)
        self._aux_list = [i for idx in self._aux.values() for i in idx]
        self._set_periods()
        # What a span edge reads on the user's thread: each sensor's ``read_edge`` (its counters;
        # None for a channel it leaves to the sampler thread), else its ``read``.
        # A sensor with ``reads_at_edges = False`` is not called at all: its channels are extended.
        self._edge = tuple((self._starts[si], getattr(s, "read_edge", s.read), s) for si, s in enumerate(self._sensors)
                           if getattr(s, "reads_at_edges", True))
        self._edge_skipped = tuple(self._starts[si] + k for si, s in enumerate(self._sensors)
                                   if not getattr(s, "reads_at_edges", True) for k in range(len(s.channels)))
        # Those sensors, read at an edge only when their last reading is older than EXTEND_MAX_S.
        self._stale = tuple((self._starts[si], s) for si, s in enumerate(self._sensors)
                            if not getattr(s, "reads_at_edges", True))
        self._stale_t = -1e18  # when they were last read
        self._pending: list[Snapshot] = []  # edge snapshots whose lag_j/pint_j wait for a poll
        self.faults: list[FaultRecord] = []
        self._fault_keys: set[tuple[str, str]] = set()
        self.wraps = [0] * len(self.channels)
        self.timeline: deque = deque(maxlen=TIMELINE_POINTS)  # (wall, total joules), one a minute

    # -- what the sampler needs to know ----------------------------------------------------
    @property
    def has_fast(self) -> bool:
        """Power-only channels or coarse counters' power, polled between full ticks."""
        return bool(self._fast or self._aux)

    @property
    def power_only(self) -> bool:
        """Some channel has no counter: its power must be polled fast all the time."""
        return bool(self._fast)

    @property
    def learning(self) -> bool:
        """Some counter's update period (or grid) is still being learned."""
        return any(c.learning for c in self._c)

    def probe_wake(self, now: float, lead_s: float) -> float | None:
        """When the probe must next read the learning counters: ``lead_s`` before the earliest
        update any of them can publish (the last update seen within :data:`TIGHT_S`, plus the
        longest flat stretch seen so far, a lower bound of its period, once for each update
        since), so that the flat middle of every period is slept through. None, or a time not
        after ``now``: read now (a counter without two flat stretches or a tight update yet,
        or a continuous one)."""
        wake = None
        for c in self._c:
            if not c.learning:
                continue
            p = c.learner.provisional_s
            if p < PROBE_WINDOWED_MIN_S or c.tight_t <= 0.0 or c.loose_n > 2:
                return None  # dense reads until an update is pinned (again)
            # From the last update pinned tightly, each update since (seen late: the window opened
            # after it, the thread having overslept on a busy machine) at least ``p`` later: the
            # next one cannot come before this. Early is safe (the reads go on until it moves);
            # without the count, one late window meant dense reads for a whole period. Three late
            # windows in a row: ``p`` may be too long, so the reads are dense until one is pinned.
            w = c.tight_t + (c.loose_n + 1) * p - lead_s
            if wake is None or w < wake:
                wake = w
        return wake

    def counters_moved(self, first: list) -> bool:
        return [c.raw for c in self._c if c.learns] != first

    def learning_values(self) -> list:
        return [c.raw for c in self._c if c.learns]

    def grid_points(self) -> dict[int, int]:
        return {i: c.grid.pins for i, c in enumerate(self._c) if c.grid is not None and c.alive}

    def period_s(self, i: int) -> float:
        return self._c[i].period_s

    def next_update(self, after: float) -> float | None:
        """The earliest update at or after ``after`` that the learned grids predict (re-pinning
        reads only around it), or None without a ready grid."""
        best = None
        for c in self._c:
            g = c.grid
            if g is not None and g.ready and c.alive:
                k = -((g.anchor - after) // g.period)  # ceil((after - anchor) / period)
                u = g.anchor + k * g.period
                if best is None or u < best:
                    best = u
        return best

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> Snapshot:
        with self.lock:
            return self.read_locked()

    def read_locked(self, quiet: bool = False) -> Snapshot:
        """Read every sensor now. The caller holds :attr:`lock`. A ``quiet`` read (a tick while
        no span comes or goes) polls instantaneous power only when the last poll is older than
        QUIET_POWER_S, and resolves its own lag and integral lazily, like an edge."""
        t = self.clock.monotonic()
        wall = self.clock.wall()
        for si, s in enumerate(self._sensors):
            self._update(t, wall, _read(s), self._starts[si])
        self._stale_t = t
        if self._aux and t - self._aux_t > (QUIET_POWER_S if quiet else EDGE_FRESH_S):
            # Instantaneous power is read only when the last poll is stale; otherwise the polled
            # integral is extended to now at the last polled power.
            self._read_aux(t)
        c = self._c
        snap = Snapshot(t, wall, tuple([x.odo for x in c]), tuple([x.power for x in c]), len(self.faults), None, None,
                        self._periods)
        if self._aux:
            snap._ages = tuple([x.age_s(t) if x.pint is not None else None for x in c])
            if quiet and t > self._aux_t:
                snap._odo = self
                self._pending.append(snap)
            else:
                self._resolve(snap)
        return snap

    def read_edge_locked(self) -> Snapshot:
        """A span edge (the caller holds :attr:`lock`): only what the span needs, on the user's
        thread. Energy counters are read (one call per device); channels a sensor leaves to the
        sampler thread (power polls, estimates) are extended from their last reading at their
        last power; the instantaneous-power integral and coarse counters' lags are resolved later
        from the polls around this moment (:meth:`resolve_pending`)."""
        t = self._monotonic()
        wall = self._wall()
        c = self._c
        skipped = self._edge_skipped
        if skipped and t - self._stale_t > EXTEND_MAX_S:
            # After a quiet stretch: read the estimates now rather than extend them over the gap.
            for base, s in self._stale:
                self._update(t, wall, _read(s), base)
            self._stale_t = t
            skipped = ()
        for base, reader, s in self._edge:
            try:
                values = reader()
            except Exception as exc:  # noqa: BLE001 - a broken sensor must not break training
                values = (Fault(f"{s.name} sensor raised {type(exc).__name__}: {exc}"),) * len(s.channels)
            k = base
            for v in values:
                x = c[k]
                if v is None:
                    skipped = skipped + (k,)
                elif v.__class__ is float and v == x.raw and x.alive and t - x.seen_t <= x.frozen_s:
                    # The common case at an edge: a coarse counter that has not moved since.
                    x.last_t = t
                    if x.learns and x.power > 0:
                        x.learner.unchanged(t - x.seen_t)
                else:
                    self._update(t, wall, (v,), k)
                k += 1
        energy = [x.odo for x in c]
        for i in skipped:  # not read now: extended from its last reading at its last power
            x = c[i]
            if x.raw is not None and x.alive:
                energy[i] += x.power * max(0.0, t - (x.last_t if x.is_energy else x.seen_t))
        snap = Snapshot(t, wall, tuple(energy), tuple([x.power for x in c]), len(self.faults), None, None,
                        self._periods)
        if self._aux:
            ages = [None] * len(c)
            for i in self._aux_list:
                x = c[i]
                if x.grid is not None and x.grid.ready:
                    ages[i] = x.age_s(t)
            snap._ages = tuple(ages)
            snap._odo = self
            self._pending.append(snap)
        return snap

    def resolve(self, snap: Snapshot) -> None:
        """Resolve an edge snapshot's lag_j/pint_j now: polls instantaneous power first when
        no poll since its moment has come yet (any thread)."""
        with self.lock:
            if snap._odo is None:
                return
            if snap.t > self._aux_t:
                self._read_aux(max(self.clock.monotonic(), snap.t))
            self.resolve_pending()
            if snap._odo is not None:  # no longer pending (the polls failed): as far as known
                self._resolve(snap)

    def resolve_pending(self) -> None:
        """Resolve every pending edge snapshot that a poll has followed (caller holds the lock)."""
        pend = self._pending
        if not pend:
            return
        keep = []
        for snap in pend:
            if snap.t <= self._aux_t:
                self._resolve(snap)
            elif snap._odo is not None:
                keep.append(snap)
        self._pending = keep

    def _resolve(self, snap: Snapshot) -> None:
        t, ages, power = snap.t, snap._ages, snap.power_w
        lag, pint = [], []
        for i, c in enumerate(self._c):
            pi = c.pint
            if pi is None or ages is None:
                lag.append(None)
                pint.append(0.0)
                continue
            pint.append(pi.at(t))
            age = ages[i]
            lag.append(None if age is None else pi.since(t - age, t, power[i]))
        snap._lag, snap._pint, snap._odo = tuple(lag), tuple(pint), None

    def check_sensors(self) -> None:
        """Per tick (caller holds the lock): sensors' own health checks (RAPL zones that vanished)."""
        wall = self.clock.wall()
        t = self.clock.monotonic()
        for si, s in enumerate(self._sensors):
            check = getattr(s, "check", None)
            if check is None:
                continue
            try:
                faults = check()
            except Exception:  # noqa: BLE001 - a failing health check is not a failing sensor
                continue
            for k, f in enumerate(faults):
                if f is not None and self._c[self._starts[si] + k].alive:
                    self._fault(t, wall, self._starts[si] + k, f)

    def note_timeline(self, snap: Snapshot) -> None:
        """Keep one (wall, total J) point a minute, for emissions of long spans in-process."""
        tl = self.timeline
        if not tl or snap.wall - tl[-1][0] >= TIMELINE_STEP_S:
            tl.append((snap.wall, sum(snap.energy_j)))

    def read_fast(self) -> None:
        """Between full ticks: power-only sensors, and coarse counters' instantaneous power."""
        with self.lock:
            t = self.clock.monotonic()
            wall = self.clock.wall()
            for si, s in self._fast:
                self._update(t, wall, _read(s), self._starts[si])
            if self._aux:
                self._read_aux(t)

    def read_counters(self) -> None:
        """Probe: read the sensors whose counters are learning their update period, and the
        instantaneous power that short spans take their energy from meanwhile."""
        with self.lock:
            t = self.clock.monotonic()
            wall = self.clock.wall()
            for si, s in self._learning:
                self._update(t, wall, _read(s), self._starts[si])
            if self._aux and t - self._aux_t >= PROBE_POWER_S:
                self._read_aux(t)

    def _update(self, t: float, wall: float, values, base: int) -> None:
        for i, v in enumerate(values, base):
            c = self._c[i]
            if v is None or not c.alive:  # None: not read this time (left to the sampler thread)
                continue
            if isinstance(v, Fault):
                self._fault(t, wall, i, v)
                continue
            if not isinstance(v, (int, float)) or not (v - v == 0.0):  # NaN, infinity, garbage
                self._fault(t, wall, i, Fault(f"{self.channels[i].key}: sensor returned {v!r}; reading ignored"))
                continue
            if c.is_energy:
                self._energy(t, wall, i, c, v)
            else:
                # Trapezoid from this channel's own last good reading (a transient fault leaves a gap).
                if c.raw is not None:
                    c.odo += (c.raw + v) * 0.5 * (t - c.seen_t)
                c.raw = v
                c.seen_t = t
                c.power = v

    def _energy(self, t: float, wall: float, i: int, c: _Chan, v: float) -> None:
        prev = c.raw
        last_t, c.last_t = c.last_t, t
        if prev is None:
            c.raw = v
            c.seen_t = t
            c.changes.append((t, 0.0))
            return
        if v == prev:
            flat = t - c.seen_t
            if c.learns and c.power > 0:
                c.learner.unchanged(flat)
            if flat > c.frozen_s and c.power > IDLE_W:
                self._fault(t, wall, i, Fault(
                    f"{self.channels[i].key}: energy counter stopped moving while the device draws power; "
                    "energy after that point is missing", "check the driver (`nvidia-smi -q -d POWER`)"))
            return
        delta, event = counter_delta(prev, v, c.wrap, c.bound_j(t - last_t))
        if event in ("backwards", "jump", "range"):
            self._implausible(t, wall, i, c, v, event, prev)
            return
        c.raw = v
        c.suspect = None
        if event == "wrap":
            self.wraps[i] += 1
        elif event == "reset":
            self._fault(t, wall, i, Fault(
                f"{self.channels[i].key}: counter restarted far below its old value (driver reload?); "
                "counting its new value as the energy since",
                "avoid reloading the GPU driver during a measured run",
            ))
        c.odo += delta
        if c.learns:
            if c.learner.changed(t - last_t):
                self._set_periods()
                self._learned(i, c)
            if c.grid is not None:
                c.grid.observe(last_t, t, c.period_s)
            if c.learner.known and c.period_s != self._periods[i]:
                self._set_periods()
            c.before_t = last_t
            if t - last_t <= TIGHT_S:
                c.tight_t, c.loose_n = 0.5 * (last_t + t), 0
            else:
                c.loose_n += 1
        c.changes.append((t, c.odo))
        t0, e0 = c.changes[0]
        if t > t0 and c.pint is None:  # coarse counters take their power from the instant reading
            c.power = (c.odo - e0) / (t - t0)
        c.seen_t = t

    def _implausible(self, t: float, wall: float, i: int, c: _Chan, v: float, event: str, prev: float) -> None:
        """A reading that cannot be energy: 0 J for it, a fault once per cause. When the next
        reading agrees with it, the counter really moved there: it becomes the new baseline."""
        key = self.channels[i].key
        if c.suspect is not None and event != "range":
            _d, again = counter_delta(c.suspect, v, c.wrap, c.bound_j(t - c.suspect_t))
            if again in (None, "wrap"):
                c.raw, c.suspect, c.seen_t = v, None, t
                return
        c.suspect, c.suspect_t = v, t
        why = {"backwards": "went backwards a little (a glitch, not a reset)",
               "jump": "jumped by more than the device's maximum power allows",
               "range": "returned a value outside its range"}[event]
        self._fault(t, wall, i, Fault(f"{key}: energy counter {why}; that reading counts 0 J",
                                      f"first seen: {prev!r} -> {v!r}"))

    def _set_periods(self) -> None:
        self._periods = tuple(c.period_s for c in self._c)
        for c in self._c:
            c.frozen_s = max(FROZEN_MIN_S, FROZEN_PERIODS * c.period_s) if c.pint is not None else float("inf")

    def _learned(self, i: int, c: _Chan) -> None:
        """The period became known: a counter that turned out continuous needs no instant power."""
        if c.period_s >= AUX_POWER_MIN_PERIOD_S or c.pint is None:
            return
        c.pint = c.grid = None
        for idx in self._aux.values():
            if i in idx:
                idx.remove(i)
        self._aux = {k: v for k, v in self._aux.items() if v}
        self._aux_list = [i for idx in self._aux.values() for i in idx]
        self._set_periods()

    def _read_aux(self, t: float) -> None:
        """Instantaneous power of coarse counters replaces the rate derived from the counter and
        is integrated into a power odometer for spans too short for the counter."""
        self._aux_t = t
        for si, idx in self._aux.items():
            try:
                p = self._sensors[si].read_power()
            except Exception:  # noqa: BLE001 - a refinement only: the derived rate stays in place
                continue
            base = self._starts[si]
            for i in idx:
                v = p[i - base]
                c = self._c[i]
                if isinstance(v, float) and c.alive:
                    c.power = v
                    c.pint.add(t, v)
        if self._pending:
            self.resolve_pending()

    def _fault(self, t: float, wall: float, i: int, fault: Fault) -> None:
        c = self._c[i]
        if fault.permanent:
            c.alive = False
            c.power = 0.0
        key = self.channels[i].key
        ident = (key, fault.reason)
        if ident in self._fault_keys:
            return
        self._fault_keys.add(ident)
        rec = FaultRecord(t, wall, key, fault.reason, fault.hint, fault.permanent)
        self.faults.append(rec)
        log.warning("meter: %s%s", fault.reason, f" ({fault.hint})" if fault.hint else "")

    def close(self) -> None:
        """Close every sensor (NVML shutdown, RAPL descriptors). Never raises."""
        for s in self._sensors:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - closing a broken sensor is best effort
                log.debug("meter: closing sensor %s failed", getattr(s, "name", s), exc_info=True)


def _read(sensor) -> tuple:
    try:
        return sensor.read()
    except Exception as exc:  # noqa: BLE001 - a broken sensor must not break training
        return (Fault(f"{sensor.name} sensor raised {type(exc).__name__}: {exc}"),) * len(sensor.channels)
