"""Time sources: monotonic seconds for durations, UTC wall time for records. Injectable."""

from __future__ import annotations

import time
from datetime import datetime


def _boot_clock():
    """Seconds that keep counting while the machine is suspended (Linux CLOCK_BOOTTIME), so that
    wall times after a laptop or VM resume are not behind; the monotonic clock elsewhere."""
    clk = getattr(time, "CLOCK_BOOTTIME", None)
    if clk is not None:
        try:
            time.clock_gettime(clk)
            return lambda: time.clock_gettime(clk)
        except OSError:
            pass
    return time.monotonic


_since_boot = _boot_clock()


class SystemClock:
    """The real clock. ``monotonic()`` for durations; ``wall()`` (UTC epoch seconds) for records,
    read from a clock that never goes back (CLOCK_BOOTTIME: it also counts suspended time)
    anchored to the system clock when this clock was made. So the
    times of one run never go backwards and never jump when the system clock is stepped (NTP, a
    manual change, a VM restored): durations are monotonic and end times never precede start
    times. :meth:`drift_s` says how far the system clock has moved from the anchor since."""

    monotonic = staticmethod(time.perf_counter)

    def __init__(self) -> None:
        self._t0 = _since_boot()
        self._w0 = time.time()

    def wall(self) -> float:
        return self._w0 + (_since_boot() - self._t0)

    def drift_s(self) -> float:
        """System clock minus this clock's wall time, in seconds (0 until the system clock is set)."""
        return time.time() - self.wall()


def utc_iso(epoch_s: float) -> str:
    """UTC ISO-8601 with milliseconds and a ``Z`` suffix, e.g. ``2026-11-21T23:30:00.000Z``."""
    whole = int(epoch_s // 1)
    ms = int((epoch_s - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def parse_utc_iso(text: str) -> float:
    """Inverse of :func:`utc_iso` (accepts any ISO-8601 form Python understands)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
