"""Counter arithmetic: wrap and reset correction, learning a coarse counter's update period and
grid, and integrating polled power. Pure and tested on their own; the odometer calls them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

#: A change seen within this long after a read that still showed the old value pins the moment
#: the counter updated (to within this much).
TIGHT_S = 0.003


#: A reset (driver reload) is a value far below the old one: under this fraction of it.
RESET_FRACTION = 0.5


def counter_delta(prev: float, value: float, wrap: float | None, bound_j: float = float("inf")) -> tuple[float, str | None]:
    """Energy between two readings of a cumulative counter, and what happened.

    ``bound_j`` is the most energy the device can plausibly have used between the two reads
    (its maximum power times the time between them, with margin). Events:

    - ``None``: the counter moved forward by a plausible amount.
    - ``"wrap"``: it went backwards and has a range (RAPL): the range is added back, when that
      gives a plausible delta.
    - ``"reset"``: it went far below the old value (``< RESET_FRACTION``) to a value that is
      itself plausible as the energy since a restart (a driver reload): the new value counts.
    - ``"backwards"``: a small step back (a glitch): 0 J.
    - ``"jump"``: more than ``bound_j`` forward, or a wrap that would be: 0 J.
    - ``"range"``: a negative value, or one above the counter's range: 0 J.
    """
    if value < 0 or (wrap and value > wrap):
        return 0.0, "range"
    delta = value - prev
    if delta >= 0:
        return (delta, None) if delta <= bound_j else (0.0, "jump")
    if wrap:
        # A previous reading above the range (garbage the sensor gave first) cannot wrap to here.
        return (delta + wrap, "wrap") if 0.0 <= delta + wrap <= bound_j else (0.0, "backwards")
    if value < RESET_FRACTION * prev and value <= bound_j:
        return value, "reset"
    return 0.0, "backwards"


class UpdateGrid:
    """When a coarse counter (NVML: about every 100 ms) publishes its updates.

    Updates come on a regular grid ``u_k = anchor + k * period``. Each change observed within
    :data:`TIGHT_S` of a read that still showed the old value pins one grid point; the period is
    refined over the longest baseline of such points, and the anchor moves to the newest. With
    the grid known, a reading at time ``t`` lags the truth by ``age(t) = t - u(t)`` seconds of
    power, which the span arithmetic adds back from instantaneous power.
    """

    def __init__(self, keep: int = 32):
        self.points: deque[float] = deque(maxlen=keep)
        self.pins = 0  # grid points pinned so far (the deque keeps only the last ``keep``)
        self.period: float | None = None
        self.anchor: float | None = None
        self.ready = False  # enough points, over a long enough baseline, for the period to be trusted

    def observe(self, t_prev: float, t: float, period_hint: float) -> bool:
        """A change seen at ``t`` whose previous read (old value) was at ``t_prev``. Returns
        whether it pinned a grid point."""
        if t - t_prev > TIGHT_S or period_hint <= 0:
            return False
        self.points.append((t_prev + t) / 2)
        self.pins += 1
        base = self.period or period_hint
        u0 = self.points[0]
        ks = [round((u - u0) / base) for u in self.points]
        n = len(ks)
        if n >= 2 and ks[-1] > 0:
            # Least squares over every pinned point: u_i = u0 + k_i * period.
            km, um = sum(ks) / n, sum(self.points) / n
            var = sum((k - km) ** 2 for k in ks)
            if var > 0:
                self.period = sum((k - km) * (u - um) for k, u in zip(ks, self.points, strict=True)) / var
        self.anchor = self.points[-1]
        # Enough points, over a long enough baseline, for the period to be trusted.
        self.ready = (self.period is not None and len(self.points) >= 4
                      and self.points[-1] - self.points[0] >= 5 * self.period)
        return True

    def age(self, t: float) -> float:
        """Seconds since the last update at or before ``t``."""
        return (t - self.anchor) % self.period


class PeriodLearner:
    """A coarse counter's update period: the longest stretch it was seen not to move while
    drawing power, over its last ``window`` changes, trusted after ``min_changes`` of them.

    Flat stretches longer than ``max_period_s`` mean an idle device, not a coarse counter."""

    __slots__ = ("flats", "min_changes", "max_period_s", "_flat")

    def __init__(self, window: int = 16, min_changes: int = 8, max_period_s: float = 1.0):
        self.flats: deque[float] = deque(maxlen=window)
        self.min_changes = min_changes
        self.max_period_s = max_period_s
        self._flat = 0.0

    def unchanged(self, flat_s: float) -> None:
        """The value has now been seen unchanged for ``flat_s`` while the device drew power."""
        self._flat = flat_s

    def changed(self, gap_s: float | None = None) -> bool:
        """The value changed, ``gap_s`` after the previous read. Returns True when this change
        made the period known. A change seen without any flat read before it, within
        :data:`TIGHT_S` of the previous read (itself a change), bounds the period by that gap:
        a continuous counter is learned as such rather than presumed coarse for ever."""
        known_before = self.known
        if 0.0 < self._flat <= self.max_period_s:
            self.flats.append(self._flat)
        elif self._flat == 0.0 and gap_s is not None and 0.0 < gap_s <= TIGHT_S:
            self.flats.append(gap_s)
        self._flat = 0.0
        return self.known and not known_before

    @property
    def known(self) -> bool:
        return len(self.flats) >= self.min_changes

    @property
    def provisional_s(self) -> float:
        """The longest flat stretch so far once two were seen (a lower bound of the period, for
        sleeping through the part of a period where the counter cannot move), else 0.0."""
        return max(self.flats) if len(self.flats) >= 2 else 0.0

    @property
    def period_s(self) -> float:
        """The learned period, 0.0 until it is known."""
        return max(self.flats) if self.known else 0.0


class PowerIntegral:
    """Trapezoid integral (J) of polled instantaneous power, with the recent polls kept as
    ``(t, joules, watts)`` so that the integral at any recent moment can be read back, also
    after later polls: between two polls by the trapezoid (power linear between them), after
    the newest poll extended at its power for at most ``extend_s``.

    Polls older than ``keep_s`` before the newest are dropped (at least ``min_points`` are kept):
    a span edge is resolved against the polls around it soon after it happened (see
    :meth:`meter.odometer.Odometer.resolve_pending`).
    """

    __slots__ = ("value", "t", "p", "ts", "es", "ps", "keep_s", "min_points", "first_t")

    def __init__(self, keep: int = 16, keep_s: float = 1.0):
        self.value = 0.0
        self.t: float | None = None
        self.p: float | None = None
        self.ts: list[float] = []
        self.es: list[float] = []
        self.ps: list[float] = []
        self.keep_s = keep_s
        self.min_points = keep
        self.first_t: float | None = None  # the first poll ever (not only the oldest kept)

    def add(self, t: float, power_w: float) -> None:
        if self.t is not None and self.p is not None:
            if t <= self.t:
                return  # an older or simultaneous poll (another thread read first) adds nothing
            self.value += (self.p + power_w) * 0.5 * (t - self.t)
        self.t, self.p = t, power_w
        if self.first_t is None:
            self.first_t = t
        ts = self.ts
        ts.append(t)
        self.es.append(self.value)
        self.ps.append(power_w)
        n = len(ts)
        if n > 2 * self.min_points and t - ts[n // 2] > self.keep_s:
            k = n // 2  # drop the older half at once: amortised O(1)
            del ts[:k], self.es[:k], self.ps[:k]

    def polled_after(self, t: float) -> bool:
        """Whether a poll at or after ``t`` is in the history."""
        return self.t is not None and self.t >= t

    def at(self, t: float, extend_s: float = 0.05) -> float:
        """The integral at ``t``: between the polls around it by the trapezoid; after the newest
        poll, extended at its power for at most ``extend_s`` (an older poll says nothing about
        now); before the oldest kept poll, that poll's value, except before the very first poll
        (a span that closed before the sampler's first poll, on a loaded machine): extended back
        at the first poll's power, so such a span gets that power times its length, not 0 J."""
        ts = self.ts
        if not ts:
            return self.value
        k = bisect_right(ts, t) - 1
        if k < 0:
            if ts[0] == self.first_t:
                return self.es[0] - self.ps[0] * (ts[0] - t)
            return self.es[0]
        t0, e0, p0 = ts[k], self.es[k], self.ps[k]
        if k + 1 < len(ts):
            t1, p1 = ts[k + 1], self.ps[k + 1]
            pt = p0 + (p1 - p0) * (t - t0) / (t1 - t0)
            return e0 + (p0 + pt) * 0.5 * (t - t0)
        return e0 + p0 * min(t - t0, extend_s)

    def since(self, u: float, now: float, fallback_w: float) -> float:
        """Joules from moment ``u`` to ``now``: from the history where it reaches back that far,
        else ``fallback_w`` times ``now - u``."""
        ts = self.ts
        if len(ts) >= 2 and ts[0] <= u:
            return self.at(now) - self.at(u)
        return fallback_w * max(0.0, now - u)
