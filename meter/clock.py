"""Time sources: monotonic seconds for durations, UTC wall time for records. Injectable."""

from __future__ import annotations

import time
from datetime import datetime


class SystemClock:
    """The real clock. ``monotonic()`` for durations, ``wall()`` (UTC epoch seconds) for records."""

    monotonic = staticmethod(time.perf_counter)
    wall = staticmethod(time.time)


def utc_iso(epoch_s: float) -> str:
    """UTC ISO-8601 with milliseconds and a ``Z`` suffix, e.g. ``2026-11-21T23:30:00.000Z``."""
    whole = int(epoch_s // 1)
    ms = int((epoch_s - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def parse_utc_iso(text: str) -> float:
    """Inverse of :func:`utc_iso` (accepts any ISO-8601 form Python understands)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
