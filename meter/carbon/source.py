"""A Meter's carbon intensity, never fetched on the caller's thread.

The offline figure for the Meter's region is resolved once. A live provider (``carbon=``) is
fetched by a background thread into an in-memory cache per (provider, zone, UTC hour), the
current hour included, through one HTTP session; past hours also go to the disk cache of
:mod:`meter.carbon.live`. A circuit breaker stops hammering a failing provider: after a failure
the offline figure is used (labelled ``fallback`` with the reason), one warning is logged, and
the fetch is retried later with a growing delay. ``region="auto"`` is geolocated the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from ..errors import CarbonError
from ..threads import start_daemon
from ..units import S_PER_HOUR

log = logging.getLogger("meter")

#: The live series is refreshed this often while the Meter runs.
REFRESH_S = 900.0
#: After a failure the next attempt waits this long, doubling up to RETRY_MAX_S.
RETRY_MIN_S = 30.0
RETRY_MAX_S = 1800.0
#: A window the cache does not cover asks the thread for a fetch, at most this often.
MIN_REFETCH_S = 10.0
#: How far back the background fetch reaches at first (Electricity Maps' history is 24 h).
HISTORY_S = 24 * S_PER_HOUR


class IntensitySource:
    """Intensity for windows of a run: ``for_window(start, end)`` answers from memory at once."""

    def __init__(self, region: str | None, carbon: str = "offline", *, session: Any = None,
                 base_url: str | None = None, geo_url: str | None = None, token: str | None = None,
                 cache_dir: str | None = "default", now: Callable[[], float] = time.time):
        from . import world_default

        provider, _, zone = (carbon or "offline").partition(":")
        self.provider = provider.lower()
        self.region = region
        self._auto = region is not None and region.lower() == "auto"
        if self._auto:
            self.offline = replace(world_default(warn=False), note="region='auto' not geolocated yet")
        elif region is None:
            self.offline = world_default()
        else:
            from . import resolve

            self.offline = resolve(region)
        self.zone = zone or (None if self._auto else self.offline.zone)
        import os

        # METER_CARBON_URL: the live provider's base URL (a proxy or mirror; tests' local servers).
        self._kw = {"token": token, "base_url": base_url or os.environ.get("METER_CARBON_URL") or None,
                    "cache_dir": cache_dir}
        self._geo_url = geo_url
        self._session = session
        self._now = now
        self._hours: dict[int, list] = {}  # UTC hour -> points [from, to, g, measured]
        self._meta: dict = {}
        self._error: str | None = None
        self._warned = False
        self._retry_s = RETRY_MIN_S
        self._fetched_at = -1e18  # time.monotonic() of the last fetch attempt
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def live(self) -> bool:
        return self.provider != "offline"

    def start(self) -> None:
        """Start the background fetch if a live provider or ``region="auto"`` needs one."""
        if (self.live or self._auto) and self._thread is None:
            self._thread = start_daemon(self._run, "meter-carbon")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- answers (any thread, from memory) -----------------------------------------------------
    def for_window(self, start_s: float, end_s: float):
        """The Intensity for energy spent between two UTC epoch seconds, from what is known now."""
        if not self.live:
            return self.offline
        with self._lock:
            pts = [p for h in range(int(start_s // S_PER_HOUR) - 1, int(end_s // S_PER_HOUR) + 2) for p in self._hours.get(h, ())
                   if p[1] > start_s and p[0] < end_s]
            error, meta = self._error, dict(self._meta)
        if not pts:
            why = error or "not fetched yet"
            return replace(self.offline, method="fallback",
                           note="; ".join(x for x in (self.offline.note, f"live {self.provider}: {why}; offline figure used") if x))
        from .live import intensity_from_points

        inten = intensity_from_points(sorted(pts), meta, self.zone or self.offline.zone, start_s, end_s)
        covered = max(p[1] for p in pts)
        if covered < end_s:
            self._wake_if_stale()
            gap = f"live series known up to {time.strftime('%H:%M', time.gmtime(covered))} UTC; energy after that at its mean"
            inten = replace(inten, note="; ".join(x for x in (inten.note, gap) if x))
        return inten

    def emissions_g(self, result, pue: float, timeline: Callable[[float, float], tuple] | None = None) -> float | None:
        """gCO2eq of a span's Measurement with what is known now; ``timeline(t0, t1)`` gives the
        run's (walls, cumulative joules) inside the span for time-resolved intensity."""
        if result.energy_j is None:
            return None
        from ..clock import parse_utc_iso
        from . import span_emissions_g

        t0, t1 = parse_utc_iso(result.start_utc), parse_utc_iso(result.end_utc)
        inten = self.for_window(t0, t1)
        times, cum = timeline(t0, t1) if inten.series and timeline is not None else ((), ())
        return span_emissions_g(t0, t1, result.energy_j, inten, pue, times, cum)

    def describe(self) -> dict[str, Any]:
        """For run.json: what the run's figures in-process were based on."""
        out = {"provider": self.provider, "zone": self.zone or self.offline.zone, "offline": self.offline.describe()}
        if self._error:
            out["last_error"] = self._error
        return out

    # -- the background thread -----------------------------------------------------------------
    def _wake_if_stale(self) -> None:
        if time.monotonic() - self._fetched_at >= MIN_REFETCH_S and self._error is None:
            self._wake.set()

    def _run(self) -> None:
        from .live import Client, geolocate, live_points
        from .offline import lookup

        client = Client(self._session, retries=1)
        while not self._stop.is_set():
            self._fetched_at = time.monotonic()
            try:
                if self._auto and self.zone is None:
                    zone, how = geolocate(url=self._geo_url, session=client.session)
                    z = lookup(zone)
                    from . import _from_zone

                    if z is not None:
                        self.offline = _from_zone(z, "ip-geolocation", how)
                    self.zone = zone
                if self.live:
                    now = self._now()
                    pts, meta = live_points(self.provider, self.zone, now - HISTORY_S, now, client=client, now=now,
                                            **self._kw)
                    with self._lock:
                        for p in pts:
                            self._hours.setdefault(int(p[0] // S_PER_HOUR), []).append(p)
                        for h, hp in self._hours.items():  # de-duplicate refreshed points
                            self._hours[h] = sorted({(a, b): [a, b, g, m] for a, b, g, m in hp}.values())
                        self._meta, self._error = meta, None
                self._retry_s = RETRY_MIN_S
                wait = REFRESH_S if self.live else None
            except CarbonError as exc:
                self._failed(str(exc))
                wait = self._retry_s
                self._retry_s = min(RETRY_MAX_S, 2 * self._retry_s)
            except Exception as exc:  # noqa: BLE001 - the carbon thread must never die silently
                self._failed(f"{type(exc).__name__}: {exc}")
                wait = self._retry_s
                self._retry_s = min(RETRY_MAX_S, 2 * self._retry_s)
            if wait is None:
                return
            self._wake.wait(wait)
            self._wake.clear()

    def _failed(self, why: str) -> None:
        from ..redact import env_secrets, redact

        why = redact(why, [self._kw.get("token"), *env_secrets()])  # run.json, notes and the log
        with self._lock:
            self._error = why
        if not self._warned:
            self._warned = True
            what = f"live carbon intensity from {self.provider}" if self.live else "region='auto' geolocation"
            log.warning("meter: %s failed (%s); using the offline figure for %s meanwhile and retrying in the "
                        "background", what, why, self.offline.zone)
        else:
            log.debug("meter: carbon fetch failed again: %s", why)
