"""Energy to emissions. Runs at report time (or when a span's ``emissions_g`` is read), never on
the measuring hot path, and never reads sensors.

Offline by default (:mod:`meter.carbon.offline`); live providers (:mod:`meter.carbon.live`) only
when asked for. Every :class:`Intensity` says where its figure came from: zone, source, data
year, average or marginal, lifecycle or direct, and the method (offline, live, fallback, or
"region unknown").
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import replace
from typing import Any, Sequence

from ..errors import CarbonError
from ..units import j_to_kwh
from . import offline
from .intensity import Intensity

log = logging.getLogger("meter")
_warned: set[str] = set()

REGION_HINT = "set it with Meter(region=...), METER_REGION, or [tool.meter] region in pyproject.toml (see `meter regions`)"


def _from_zone(z: offline.Zone, method: str = "offline", note: str = "") -> Intensity:
    notes = "; ".join(n for n in (z.note, note) if n)
    return Intensity(z.key, z.name, z.g_per_kwh, z.source, z.year, z.kind, z.factor, method, notes)


def world_default(warn: bool = True) -> Intensity:
    """The world average, labelled "region unknown"; warns once with how to set the region
    (``warn=False`` when the caller says why itself)."""
    if warn and "region" not in _warned:
        _warned.add("region")
        log.warning("meter: no region given, so emissions use the world average (475 gCO2eq/kWh); %s", REGION_HINT)
    z = offline.zones()["WORLD"]
    return _from_zone(z, "region-unknown", "region unknown: " + REGION_HINT)


def check_region(region: str) -> None:
    """Raise CarbonError (listing close matches) unless ``region`` is a known zone or ``auto``."""
    if region.lower() == "auto":
        return
    if offline.lookup(region) is None:
        close = offline.close_matches(region)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CarbonError(f"region={region!r}: unknown grid zone{hint}. List zones with `meter regions QUERY` or "
                          "meter.carbon.regions(QUERY)")


def resolve(region: str | None, *, geo_url: str | None = None, session: Any = None) -> Intensity:
    """Offline intensity for ``region`` (None: world average, labelled; "auto": IP geolocation)."""
    if region is None:
        return world_default()
    if region.lower() == "auto":
        from .live import geolocate

        try:
            zone_key, how = geolocate(url=geo_url, session=session)
        except CarbonError as exc:
            log.warning("meter: region='auto' could not locate this machine (%s); emissions use the world average "
                        "(475 gCO2eq/kWh): %s", exc, REGION_HINT)
            return replace(world_default(warn=False), note=f"region='auto' failed: {exc}; {REGION_HINT}")
        z = offline.lookup(zone_key)
        if z is None:
            return replace(world_default(), note=f"IP geolocation gave {zone_key!r}, which has no offline data")
        return _from_zone(z, "ip-geolocation", how)
    z = offline.lookup(region)
    if z is None:
        check_region(region)  # raises with suggestions
    return _from_zone(z)


def regions(query: str | None = None) -> list[dict[str, Any]]:
    """Zones whose key or name contains ``query``, each with intensity, source, year and factor."""
    return [
        {"zone": z.key, "name": z.name, "g_per_kwh": round(z.g_per_kwh, 3), "year": z.year,
         "factor": z.factor, "source": z.source}
        for z in offline.search(query)
    ]


def emissions_g(energy_j: float, intensity: Intensity, pue: float = 1.0) -> float:
    """gCO2eq for ``energy_j`` of IT energy: kWh x PUE x intensity (static intensity)."""
    if pue < 1.0:
        raise CarbonError(f"pue={pue}: must be >= 1")
    return j_to_kwh(energy_j) * pue * intensity.g_per_kwh


def emissions_over(times_s: Sequence[float], energy_j: Sequence[float], intensity: Intensity, pue: float = 1.0) -> float:
    """Time-resolved gCO2eq of a cumulative-energy timeline (UTC epoch seconds, cumulative
    joules): each interval's energy, spread evenly over the interval, meets the intensity of each
    part of it (intervals are split where the intensity series changes), times PUE. With a static
    intensity this equals ``emissions_g(total energy)``."""
    if len(times_s) != len(energy_j):
        raise ValueError("times_s and energy_j must have the same length")
    if pue < 1.0:
        raise CarbonError(f"pue={pue}: must be >= 1")
    edges = sorted({x for a, b, _g in intensity.series for x in (a, b)})
    total = 0.0
    for i in range(1, len(times_s)):
        a, b = times_s[i - 1], times_s[i]
        de = energy_j[i] - energy_j[i - 1]
        if b <= a:
            total += j_to_kwh(de) * intensity.at(a)
            continue
        cuts = [a] + [x for x in edges[bisect.bisect_right(edges, a):bisect.bisect_left(edges, b)]] + [b]
        for u, v in zip(cuts, cuts[1:], strict=False):
            total += j_to_kwh(de * (v - u) / (b - a)) * intensity.at((u + v) / 2)
    return total * pue


def span_emissions_g(t0: float, t1: float, energy_j: float, intensity: Intensity, pue: float = 1.0,
                     times: Sequence[float] = (), cum_j: Sequence[float] = ()) -> float:
    """gCO2eq of ``energy_j`` (IT energy) spent between UTC epoch seconds ``t0`` and ``t1``.

    The one function behind ``span.emissions_g``, ``meter.load`` and the cards. With a static
    intensity it is kWh x PUE x intensity. Where intensity varies over time, the span's energy
    is spread over its window following the cumulative-energy points ``(times, cum_j)`` that
    fall inside it (the run's samples, or the Meter's minute timeline in-process): linear
    between them, at their average rate before the first and after the last, evenly when there
    are fewer than two; then each piece meets the intensity of its moment."""
    if not intensity.series:
        return emissions_g(energy_j, intensity, pue)
    pts = [(t, c) for t, c in zip(times, cum_j, strict=False) if t0 < t < t1]
    if len(pts) < 2 or pts[-1][1] <= pts[0][1] or pts[-1][0] <= pts[0][0]:
        return emissions_over([t0, t1], [0.0, energy_j], intensity, pue)
    ts = [t for t, _ in pts]
    cum = [c for _, c in pts]
    rate = (cum[-1] - cum[0]) / (ts[-1] - ts[0])
    head = rate * (ts[0] - t0)
    shape = [0.0] + [head + c - cum[0] for c in cum] + [head + cum[-1] - cum[0] + rate * (t1 - ts[-1])]
    scale = energy_j / shape[-1] if shape[-1] > 0 else 0.0
    return emissions_over([t0] + ts + [t1], [x * scale for x in shape], intensity, pue)


__all__ = ["Intensity", "span_emissions_g", "resolve", "check_region", "regions", "emissions_g", "emissions_over", "world_default", "CarbonError"]
