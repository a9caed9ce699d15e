"""Counter arithmetic: wrap correction, and learning when a coarse counter publishes updates.

Both are pure and tested on their own; the sampler calls them.
"""

from __future__ import annotations

from collections import deque

#: A change seen within this long after a read that still showed the old value pins the moment
#: the counter updated (to within this much).
TIGHT_S = 0.003


def counter_delta(prev: float, value: float, wrap: float | None) -> tuple[float, str | None]:
    """Energy between two readings of a cumulative counter, and what happened.

    A counter that went backwards wrapped (add its range back, ``"wrap"``) if it has a range, or
    was reset (a driver reload: its new value is the energy since, ``"reset"``) if it has none.
    One wrap per pair of readings; the sampler reads often enough for that to hold.
    """
    delta = value - prev
    if delta >= 0:
        return delta, None
    if wrap:
        return delta + wrap, "wrap"
    return value, "reset"


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
        self.period: float | None = None
        self.anchor: float | None = None

    def observe(self, t_prev: float, t: float, period_hint: float) -> bool:
        """A change seen at ``t`` whose previous read (old value) was at ``t_prev``. Returns
        whether it pinned a grid point."""
        if t - t_prev > TIGHT_S or period_hint <= 0:
            return False
        self.points.append((t_prev + t) / 2)
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
        return True

    @property
    def ready(self) -> bool:
        """Enough points, over a long enough baseline, for the period to be trusted."""
        if self.period is None or len(self.points) < 4:
            return False
        return self.points[-1] - self.points[0] >= 5 * self.period

    def age(self, t: float) -> float:
        """Seconds since the last update at or before ``t``."""
        return (t - self.anchor) % self.period
