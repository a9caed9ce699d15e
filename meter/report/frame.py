"""Run logs on disk to a pandas DataFrame, one row per span, with carbon joined in.

Emissions are computed here, at report time: the run's region and PUE from run.json, offline
intensity by default, or the run's live provider (``carbon=`` in its config) over the run's
window, time-resolved per span from samples.csv when the intensity varies.
"""

from __future__ import annotations

from typing import Any

from .. import carbon
from ..clock import parse_utc_iso
from ..runlog import SPAN_COLUMNS, Run, span_rows
from ..runread import read_runs


def run_intensity(run: Run, *, live: bool = True, session: Any = None) -> carbon.Intensity:
    """The intensity a run's figures use: its region offline, or its live provider with fallback."""
    cfg = run.info.get("config") or {}
    region = cfg.get("region")
    if region and region.strip().lower() == "auto":
        base = _located_during_run(run)
    else:
        base = carbon.resolve(region) if region else carbon.world_default()
    provider, _, zone = str(cfg.get("carbon") or "offline").partition(":")
    if provider == "offline" or not live:
        return base
    from ..carbon.live import with_fallback

    times = [parse_utc_iso(s["start_utc"]) for s in run.spans if s.get("start_utc")]
    ends = [parse_utc_iso(s["end_utc"]) for s in run.spans if s.get("end_utc")]
    if not times:
        return base
    import os

    return with_fallback(provider, zone or base.zone, min(times), max(ends or times), base, session=session,
                         base_url=os.environ.get("METER_CARBON_URL") or None)


def _located_during_run(run: Run) -> carbon.Intensity:
    """``region="auto"``: the zone the run located (recorded in run.json's ``carbon`` block), never
    a new lookup from wherever the report is made; the world average, labelled, if it located none."""
    from dataclasses import replace

    from ..carbon import offline

    rec = run.info.get("carbon")
    rec = rec if isinstance(rec, dict) else {}
    zone, how = rec.get("zone"), rec.get("offline")
    located = isinstance(how, dict) and how.get("method") == "ip-geolocation"
    if located and isinstance(zone, str) and zone and offline.lookup(zone) is not None:
        found = carbon.resolve(zone)
        return replace(found, method="ip-geolocation",
                       note=f"region='auto': {zone} located by IP geolocation while the run measured")
    return replace(carbon.world_default(warn=False), method="region-unknown",
                   note="region='auto' located no zone during the run; world average used. Set region= to the "
                        "grid zone the machine ran in and report again")


def _span_emissions(row: dict, intensity: carbon.Intensity, pue: float, shape: tuple | None) -> float | None:
    """A span's gCO2eq through :func:`meter.carbon.span_emissions_g`, shaped by the run's samples."""
    e = row.get("energy_j")
    if e is None or not row.get("start_utc"):
        return None
    try:
        t0 = parse_utc_iso(row["start_utc"])
        t1 = parse_utc_iso(row["end_utc"]) if row.get("end_utc") else t0
    except (TypeError, ValueError):
        return None
    times, cum = shape if shape is not None else ((), ())
    return carbon.span_emissions_g(t0, t1, e, intensity, pue, times, cum)


def _shape(run: Run) -> tuple[list, list]:
    """(walls, total cumulative joules) of the run's samples."""
    from ..runread import read_samples

    header, rows = read_samples(run.run_dir, run.problems)
    if not header:
        return [], []
    cols = [i for i, h in enumerate(header) if h.endswith(":energy_j")]
    return [r[0] for r in rows], [sum(r[i] for i in cols) for r in rows]


def load(paths, *, live: bool = True, session: Any = None):
    """DataFrame, one row per span of every run under ``paths``, with carbon columns:
    ``pue``, ``facility_energy_j`` (IT energy x PUE), ``emissions_g`` (gCO2eq),
    ``intensity_g_per_kwh``, ``intensity_zone``, ``intensity_source``, ``intensity_year``,
    ``intensity_kind`` (average or marginal), ``intensity_factor`` (lifecycle, direct, ...),
    ``intensity_method`` (offline, live, fallback, region-unknown) and ``intensity_note``.
    ``df.attrs["problems"]`` lists corrupt records skipped; ``df.attrs["runs"]`` the run infos."""
    import pandas as pd

    rows, problems, runs = [], [], []
    for run in read_runs(paths, problems):
        d = run.run_dir
        runs.append(run.info)
        cfg = run.info.get("config") or {}
        pue = float(cfg.get("pue") or 1.0)
        try:
            inten = run_intensity(run, live=live, session=session)
        except carbon.CarbonError as exc:
            problems.append(f"{d}: no carbon intensity ({exc})")
            inten = None
        shape = _shape(run) if inten is not None and inten.series else None
        dist = run.info.get("distributed") or {}
        for row in span_rows(run):
            row["rank"] = dist.get("rank", 0)  # each rank's rows of a job; 0 for a single process
            row["node"] = dist.get("node", (run.info.get("host") or {}).get("hostname"))
            row["pue"] = pue
            e = row.get("energy_j")
            row["facility_energy_j"] = e * pue if e is not None else None
            if inten is not None:
                row["emissions_g"] = _span_emissions(row, inten, pue, shape)
                row["intensity_g_per_kwh"] = inten.g_per_kwh
                row["intensity_zone"] = inten.zone
                row["intensity_name"] = inten.name
                row["intensity_source"] = inten.source
                row["intensity_year"] = inten.year
                row["intensity_kind"] = inten.kind
                row["intensity_factor"] = inten.factor
                row["intensity_method"] = inten.method
                row["intensity_note"] = inten.note
            rows.append(row)
        problems.extend(run.problems)
    df = pd.DataFrame(rows)
    for col in SPAN_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df.attrs["problems"] = problems
    df.attrs["runs"] = runs
    return df
