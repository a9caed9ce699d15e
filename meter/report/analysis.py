"""Run comparison (speedup, energy and emissions saved per stage, preparation as overhead) and
Pareto frontiers of quality against cost. Works on card models and load() DataFrames."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError


def _stage_map(run: dict) -> dict[str, dict]:
    return {s["path"]: s for s in run["stages"]}


def _as_run(run: Any, *, live: bool) -> dict:
    if isinstance(run, dict):
        return run
    if isinstance(run, (str, os.PathLike)):
        from .model import build

        runs = build(run, live=live)["runs"]
        if len(runs) != 1:
            raise ConfigError(f"{os.fspath(run)!r} holds {len(runs)} runs; compare() needs one run directory on each side")
        return runs[0]
    raise ConfigError(f"compare() takes run directories or card runs (model.build(dir)['runs'][0]), not {type(run).__name__}")


def compare(baseline: Any, candidate: Any, *, live: bool = True) -> dict[str, Any]:
    """Compare two runs, stage by stage (matched by path). Each side is a run directory or a
    run of the card model (``model.build(dir)["runs"][0]``).

    Preparation stages (kind ``prepare``, e.g. building a cache of embeddings) of either run
    count as one-time overhead: totals are given with and without it. ``preparation`` says
    which case applies: ``none`` (neither run has one, so there is nothing to pay back),
    ``no-extra`` (the candidate prepares no more than the baseline), ``pays-back`` (after
    ``break_even_runs`` reuses the per-run saving covers the extra preparation energy) or
    ``never`` (the per-run saving is not positive, so the extra preparation is never recovered).
    ``break_even_runs`` is None except for ``pays-back``."""
    baseline, candidate = _as_run(baseline, live=live), _as_run(candidate, live=live)
    b, c = _stage_map(baseline), _stage_map(candidate)
    rows = []
    for path in list(b) + [p for p in c if p not in b]:
        sb, sc = b.get(path), c.get(path)
        row = {"path": path, "kind": (sb or sc)["kind"]}
        for key in ("duration_s", "energy_j", "emissions_g"):
            vb = sb.get(key) if sb else None
            vc = sc.get(key) if sc else None
            row[f"baseline_{key}"], row[f"candidate_{key}"] = vb, vc
            row[f"saved_{key}"] = vb - vc if vb is not None and vc is not None else None
        tb, tc = row["baseline_duration_s"], row["candidate_duration_s"]
        row["speedup"] = tb / tc if tb and tc else None
        row["energy_ratio"] = row["candidate_energy_j"] / row["baseline_energy_j"] if row["candidate_energy_j"] is not None and row["baseline_energy_j"] else None
        rows.append(row)

    def totals(run: dict, with_prep: bool) -> dict[str, float]:
        top = [s for s in run["stages"] if s["depth"] == 0 and (with_prep or s["kind"] != "prepare")]
        return {k: sum(s[k] or 0.0 for s in top) for k in ("duration_s", "energy_j", "emissions_g")}

    out = {"stages": rows, "totals": {}}
    for label, with_prep in (("without_preparation", False), ("with_preparation", True)):
        tb, tc = totals(baseline, with_prep), totals(candidate, with_prep)
        out["totals"][label] = {
            **{f"baseline_{k}": v for k, v in tb.items()}, **{f"candidate_{k}": v for k, v in tc.items()},
            "speedup": tb["duration_s"] / tc["duration_s"] if tc["duration_s"] else None,
            "energy_saved_j": tb["energy_j"] - tc["energy_j"],
            "emissions_saved_g": tb["emissions_g"] - tc["emissions_g"],
        }
    prep_c = sum(s["energy_j"] or 0.0 for s in candidate["stages"] if s["depth"] == 0 and s["kind"] == "prepare")
    prep_b = sum(s["energy_j"] or 0.0 for s in baseline["stages"] if s["depth"] == 0 and s["kind"] == "prepare")
    saving = out["totals"]["without_preparation"]["energy_saved_j"]
    out["preparation_energy_j"] = {"baseline": prep_b, "candidate": prep_c}
    has_prep = any(s["kind"] == "prepare" for run in (baseline, candidate) for s in run["stages"] if s["depth"] == 0)
    if not has_prep:
        case = "none"
    elif prep_c <= prep_b:
        case = "no-extra"
    else:
        case = "pays-back" if saving > 0 else "never"
    out["preparation"] = case
    out["break_even_runs"] = (prep_c - prep_b) / saving if case == "pays-back" else None
    return out


def pareto_front(df, *, quality: str, cost: str, maximize: bool = True):
    """Rows of ``df`` not dominated on (quality, cost): no other row has better-or-equal quality
    and lower-or-equal cost with one of them strictly better. Returned sorted by cost, with a
    boolean ``pareto`` column added to a copy of the full frame in ``.attrs["all"]``."""
    for col in (quality, cost):
        if col not in df.columns:
            raise ConfigError(f"column {col!r} not in the frame; have {', '.join(map(str, df.columns))}")
    data = df.dropna(subset=[quality, cost]).copy()
    q = data[quality].astype(float) * (1 if maximize else -1)
    cst = data[cost].astype(float)
    keep = []
    for i in data.index:
        dominated = ((q >= q[i]) & (cst <= cst[i]) & ((q > q[i]) | (cst < cst[i]))).any()
        keep.append(not dominated)
    data["pareto"] = keep
    front = data[data["pareto"]].sort_values(cost)
    front.attrs["all"] = data
    return front
