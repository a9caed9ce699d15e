"""The one background thread: when to read, never what a reading means or where it goes.

Every ``interval_s`` (further apart, up to ``quiet_interval_s``, while no span enters or exits:
see QUIET_RAMP) it runs a full *tick* (the callback given to it: read every sensor, write
the run log). Between ticks it polls what needs polling more often: power-only GPUs and coarse
counters' instantaneous power (every ~20 ms, jittered so a periodic load cannot alias), and,
interleaved with ticks from the very first one, 1 ms probe reads that learn a coarse counter's
update period and grid. ``request_tick`` (``Meter.flush``) wakes it for a tick now and waits, with
a timeout; nothing else ever ticks. On stop it runs one final tick, and a join never waits
longer than the timeout given, so a hung driver call cannot hang the interpreter's exit.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import traceback
from typing import Callable

from .threads import start_daemon

log = logging.getLogger("meter")

#: Power-only channels are polled this often, with random jitter (at 10 Hz a 4 Hz square wave
#: is misread by ~10%); so is coarse counters' instantaneous power, but only while spans come
#: and go (within ACTIVE_S of a span's exit, or OPEN_SHORT_S of an entry: see Recorder.active),
#: where it corrects short spans.
FAST_POWER_INTERVAL_S = 0.02
ACTIVE_S = 1.0
#: For up to PROBE_S after start the thread reads learning counters every PROBE_INTERVAL_S (as
#: Zeus does): at 10 Hz a 10 Hz counter never looks flat. It stops early once every period is
#: known, or after PROBE_IDLE_S if no counter moved at all (an idle device teaches nothing).
PROBE_S = 1.5
PROBE_INTERVAL_S = 0.002
PROBE_IDLE_S = 0.3
#: Once a coarse counter showed two flat stretches, the probe sleeps through the part of each
#: period where it cannot move (its last update plus the longest flat stretch so far, a lower
#: bound of the period) and reads every PROBE_INTERVAL_S from PROBE_LEAD_S before that until it
#: moves: a few reads per 100 ms period instead of 50. Each wake costs the user's threads, on a
#: small machine (a 2-core VM with torch on both cores), more than its own CPU time.
PROBE_LEAD_S = 0.004
#: Coarse counters' update grids are re-pinned (1 ms reads until each shows one update) after
#: 2 s, then 4, 8, ... up to every REANCHOR_S, so that drift in the learned period never builds up;
#: only while spans come and go (the grid changes no answer otherwise: a re-pin that falls due
#: meanwhile runs at the next span edge). The 1 ms reads are made only within REPIN_WINDOW_S of
#: the update the grid predicts (the window doubling at each update missed), for up to
#: REPIN_PERIODS update periods.
REANCHOR_S = 30.0
REPIN_WINDOW_S = 0.004
REPIN_PERIODS = 8
#: While no span enters or exits, ticks spread out: the gap between them is QUIET_RAMP x the
#: time since the last span edge (or the start), at least ``interval_s`` and at most
#: ``quiet_interval_s``. Nothing a span reports depends on it (its edges are read synchronously
#: and counters are cumulative); what spreads out is the samples.csv timeline, the peak power of
#: long spans and, on SIGKILL, the unwritten tail of a span left open (at most 10% of the quiet
#: time, and at most ``quiet_interval_s``). The first span edge after a quiet stretch wakes the
#: thread, and ticks are back at ``interval_s`` at once.
QUIET_RAMP = 0.1


class Sampler:
    """Schedules reads of ``odometer`` and calls ``tick`` every ``interval_s`` on its thread."""

    def __init__(self, odometer, interval_s: float, tick: Callable[[], None], on_first_error: Callable[[], None] | None = None,
                 active: Callable[[], bool] | None = None, quiet_interval_s: float | None = None,
                 last_edge: Callable[[], float] | None = None):
        self.odometer = odometer
        self._active = active  # whether fast polling changes an answer now (spans coming and going)
        self.interval_s = interval_s
        #: The longest gap between ticks while no span edge happens; None: always ``interval_s``.
        self.quiet_interval_s = quiet_interval_s if quiet_interval_s is not None and last_edge is not None else None
        self._last_edge = last_edge  # time.monotonic() of the last span entry or exit
        self._started = time.monotonic()
        self._stretched = False  # sleeping past the next ``interval_s`` tick (a quiet stretch)
        self._tick_fn = tick
        self._on_first_error = on_first_error
        self.fast_interval_s: float | None = None  # override of FAST_POWER_INTERVAL_S (tests, benchmarks)
        self._wake = threading.Event()
        self._cv = threading.Condition()
        self._requested = 0
        self._done = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._slow = False  # sleeping until the next tick, without polling power in between
        self.ticks = 0
        self.repins = 0  # re-pin bursts that pinned every grid again
        self.burst_reads = 0  # 1 ms reads made by re-pin bursts
        self.probe_reads = 0  # reads made by the start-up probe
        self.tick_errors = 0
        self.first_error: str | None = None

    # -- control (any thread) ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive() and self._pid == os.getpid()

    def start(self) -> None:
        if self.running:
            return
        self._pid = os.getpid()
        self._stopping = False
        self._thread = start_daemon(self._run, "meter-sampler")

    def request_tick(self, wait: bool = True, timeout: float = 10.0) -> bool:
        """Ask the thread for a tick now; with ``wait``, block until it ran (True) or the timeout
        passed (False). Never ticks on the caller's thread."""
        if not self.running or threading.current_thread() is self._thread:
            return False
        with self._cv:
            self._requested += 1
            target = self._requested
        self._wake.set()
        if not wait:
            return True
        with self._cv:
            return self._cv.wait_for(lambda: self._done >= target or not self.running, timeout) and self._done >= target

    def poke(self) -> None:
        """A span edge happened: if the thread is sleeping through a quiet stretch, wake it so
        that ticks are back at ``interval_s`` (a closed span is written within one interval);
        if it sleeps until its next tick with coarse counters to poll, wake it for a power poll
        now (the edge is resolved against it) and the fast polling that follows edges. Costs
        two attribute reads when the thread already ticks and polls at its fast cadence."""
        if self._stretched or (self._slow and self.odometer.has_fast):
            self._slow = self._stretched = False
            self._wake.set()

    def _power_poll_s(self, scale: float = 1.0) -> float | None:
        """The wait until the next fast power poll (jittered), or None when none is needed now."""
        odo = self.odometer
        if not (odo.has_fast and (odo.power_only or self._active is None or self._active())):
            return None
        base = self.fast_interval_s or min(self.interval_s, FAST_POWER_INTERVAL_S)
        return scale * base * random.uniform(0.5, 1.5)

    def gap_s(self, now: float) -> float:
        """The time between the last tick and the next one, as of ``now``."""
        q = self.quiet_interval_s
        if q is None or q <= self.interval_s:
            return self.interval_s
        since = now - max(self._last_edge(), self._started)
        return min(q, max(self.interval_s, QUIET_RAMP * since))

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop after one final tick. True when the thread ended within ``timeout``."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return True
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("meter: the sampler thread did not stop within %.1f s (a sensor call hangs?); "
                        "closing without it", timeout)
            return False
        self._thread = None
        return True

    def forget_thread(self) -> None:
        """In a forked child: the thread does not exist here."""
        self._thread = None
        self._cv = threading.Condition()

    # -- the thread ----------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self._tick_fn()
            self.ticks += 1
        except Exception:  # noqa: BLE001 - losing one tick's bookkeeping beats killing the thread
            self.tick_errors += 1
            if self.tick_errors == 1:
                self.first_error = traceback.format_exc(limit=8)
                log.exception("meter: sampler tick failed; measurement continues")
                if self._on_first_error is not None:
                    try:
                        self._on_first_error()
                    except Exception:  # noqa: BLE001
                        log.debug("meter: recording the tick error failed", exc_info=True)

    def _serve(self) -> None:
        with self._cv:
            target = self._requested
        self._tick()
        with self._cv:
            self._done = max(self._done, target)
            self._cv.notify_all()

    def _run(self) -> None:
        odo = self.odometer
        now = time.monotonic()
        probe_until = now + PROBE_S if odo.learning else 0.0
        probe_start, probe_first = now, odo.learning_values()
        anchor_every, next_anchor = 2.0, now + 2.0
        pins: dict[int, int] | None = None  # grid points when a re-pin burst started
        burst_until, window, target = 0.0, REPIN_WINDOW_S, None
        last_full = now  # when the last full tick was due
        try:
            while not self._stopping:
                now = time.monotonic()
                probing = probe_until > 0.0 and now < probe_until and odo.learning and (
                    now - probe_start < PROBE_IDLE_S or odo.counters_moved(probe_first))
                if not probing:
                    probe_until = 0.0
                bursting = pins is not None and now < burst_until
                if pins is not None and (not bursting or _repinned(odo.grid_points(), pins)):
                    self.repins += bursting
                    pins, bursting = None, False
                if bursting:
                    # 1 ms reads only around the update the grid predicts; sleep until then.
                    if target is None or now > target + window:
                        if target is not None:  # that update was not pinned: a wider window
                            window = min(2 * window, 0.5 * max(odo.period_s(i) for i in odo.grid_points()))
                        target = odo.next_update(now)
                    if target is not None and now < target - window:
                        fast = target - window - now
                    else:
                        fast = PROBE_INTERVAL_S
                elif probing:
                    wake = odo.probe_wake(now, PROBE_LEAD_S)
                    fast = PROBE_INTERVAL_S if wake is None or wake <= now else max(PROBE_INTERVAL_S, wake - now)
                    if fast > PROBE_INTERVAL_S:
                        # Power polls go on meanwhile, twice as often as later: until the grid is
                        # learned, a short span's energy is all integrated power.
                        poll = self._power_poll_s(0.5)
                        fast = fast if poll is None else min(fast, poll)
                else:
                    fast = self._power_poll_s()
                self._stretched = True  # before the edge time is read: an edge from now on wakes it
                gap = self.gap_s(now)
                self._stretched = gap > self.interval_s
                next_full = last_full + gap
                remaining = max(0.0, next_full - now)
                self._slow = fast is None
                woke = self._wake.wait(remaining if fast is None else min(fast, remaining))
                self._slow = self._stretched = False
                if self._stopping:
                    break
                if woke:
                    self._wake.clear()
                    if self._requested > self._done:
                        self._serve()
                    elif odo.has_fast:
                        odo.read_fast()  # poked by a span edge
                    continue
                now = time.monotonic()
                next_full = last_full + self.gap_s(now)  # an edge during the wait shortens it
                if now >= next_full:
                    self._serve()
                    last_full = max(next_full, now - 0.5 * self.interval_s)
                    if now >= next_anchor and pins is None and (self._active is None or self._active()) and (
                            odo.grid_points()):
                        period = max(0.1, max(odo.period_s(i) for i in odo.grid_points()))
                        pins, burst_until = odo.grid_points(), now + REPIN_PERIODS * period
                        window, target = REPIN_WINDOW_S, None
                        anchor_every = min(2 * anchor_every, REANCHOR_S)
                        next_anchor = now + anchor_every
                elif probing or bursting:
                    odo.read_counters()
                    self.burst_reads += bursting
                    self.probe_reads += probing
                else:
                    odo.read_fast()
        finally:
            # The final tick, and every flush still waiting is answered.
            self._serve()


def _repinned(now: dict[int, int], before: dict[int, int]) -> bool:
    return all(i not in now or now[i] != n for i, n in before.items())
