"""The sweep overview: what a report of several runs opens with.

One row per run (its parameters, energy, emissions, time and quality metric), the Pareto frontier
of energy against the metric, and a comparison with a baseline run. Computed from the card model
(:func:`meter.report.model.build`); renderers format it and compute nothing.

How a quality metric is logged: as a span tag named ``metric.<name>`` on any stage of the run,
e.g. ``span.tags["metric.accuracy"] = 0.91`` on the evaluation span, or
``m.track("evaluate", tags={"metric.accuracy": acc})``. When several stages of a run carry it,
the one that ended last counts. Parameters are the run's other tags (``model``, ``seq_len``...).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError


def _num(v: Any) -> float | None:
    """A finite-or-infinite float from a record value; None for absent, NaN, booleans, text."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f

METRIC_PREFIX = "metric."
# Tags meter or its integrations set for their own bookkeeping: not parameters of a sweep.
_NOT_PARAMS = {"command", "exit_code", "exception", "kind", "peak_gpu_memory_bytes"}


def titles(runs: list[dict]) -> list[str]:
    """A distinct title per run: its name, with the run id added where names repeat."""
    names = [r.get("run_name") or r.get("run_id") or "?" for r in runs]
    return [f"{n} ({r.get('run_id')})" if names.count(n) > 1 else n for n, r in zip(names, runs, strict=True)]


def metric_names(runs: list[dict]) -> list[str]:
    """Names of the ``metric.*`` tags found on any stage, in order of first appearance."""
    out: list[str] = []
    for run in runs:
        for s in run["stages"]:
            for k in s["tags"]:
                if k.startswith(METRIC_PREFIX) and k[len(METRIC_PREFIX):] not in out:
                    out.append(k[len(METRIC_PREFIX):])
    return out


def _metric_value(run: dict, name: str) -> float | None:
    """The tag ``metric.<name>`` (or a plain tag ``<name>`` asked for by name) of the stage that
    ended last."""
    best = None
    for s in run["stages"]:
        for key in (METRIC_PREFIX + name, name):
            if key in s["tags"] and _num(s["tags"][key]) is not None:
                if best is None or (s.get("end_utc") or "") >= (best[0] or ""):
                    best = (s.get("end_utc"), _num(s["tags"][key]))
                break
    return best[1] if best else None


def _params(run: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in sorted(run["stages"], key=lambda s: s["depth"]):
        for k, v in s["tags"].items():
            if k.startswith(METRIC_PREFIX) or k in _NOT_PARAMS or k in out:
                continue
            if isinstance(v, (str, int, float, bool)):
                out[k] = v
    return out


def pareto_flags(costs: list[float | None], quality: list[float | None], *, maximize: bool = True) -> list[bool]:
    """True for points no other point dominates (better-or-equal quality at lower-or-equal cost,
    one of them strictly); False for dominated points and points missing either value."""
    sign = 1.0 if maximize else -1.0
    pts = [(c, q * sign) if c is not None and q is not None else None for c, q in zip(costs, quality, strict=True)]
    flags = []
    for p in pts:
        if p is None:
            flags.append(False)
            continue
        flags.append(not any(o is not None and o[1] >= p[1] and o[0] <= p[0] and (o[1] > p[1] or o[0] < p[0]) for o in pts))
    return flags


def _find_baseline(runs: list[dict], names: list[str], baseline: str | None) -> int:
    if baseline is None:
        return 0
    import os

    want = os.path.basename(os.path.normpath(str(baseline)))
    hits = [i for i, r in enumerate(runs) if want in (r.get("run_id"), names[i])]
    if not hits:
        hits = [i for i, r in enumerate(runs) if r.get("run_name") == want]
    if len(hits) == 1:
        return hits[0]
    have = ", ".join(f"{n} [{r.get('run_id')}]" for n, r in zip(names, runs, strict=True))
    if not hits:
        raise ConfigError(f"baseline {baseline!r} is none of the runs given; choose a run id, name or directory among: {have}")
    raise ConfigError(f"baseline {baseline!r} names {len(hits)} runs; give its run id instead: {have}")


def overview(card: dict, *, metric: str | None = None, baseline: str | None = None, maximize: bool = True) -> dict[str, Any]:
    """The overview of the card's runs. ``metric``: the quality metric's name (default: the first
    ``metric.*`` tag found); ``baseline``: run id, run name or directory of the run the others are
    compared with (default: the first run); ``maximize``: False for a loss or an error rate."""
    runs = card["runs"]
    names = titles(runs)
    found = metric_names(runs)
    if metric is None:
        metric = found[0] if found else None
    elif metric.startswith(METRIC_PREFIX):
        metric = metric[len(METRIC_PREFIX):]
    values = [_metric_value(r, metric) if metric else None for r in runs]
    if metric and all(v is None for v in values):
        hint = f"metrics logged: {', '.join(found)}" if found else f"none is logged; log one as the span tag {METRIC_PREFIX}NAME"
        raise ConfigError(f"metric {metric!r} is on no stage of these runs; {hint}")
    b = _find_baseline(runs, names, baseline) if runs else 0
    params = [_params(r) for r in runs]
    keys = list(dict.fromkeys(k for p in params for k in p))
    varying = [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]
    constant = {k: params[0][k] for k in keys if k not in varying and k in params[0]}
    energy = [r["totals"]["energy_j"] for r in runs]
    front = pareto_flags(energy, values, maximize=maximize) if metric else [False] * len(runs)
    base = runs[b] if runs else None
    rows = []
    for i, r in enumerate(runs):
        t = r["totals"]
        be, bt = base["totals"]["energy_j"], base["totals"]["stage_time_s"]
        rows.append({
            "run_id": r["run_id"], "title": names[i], "params": {k: params[i].get(k) for k in varying},
            "energy_j": t["energy_j"], "emissions_g": t["emissions_g"], "time_s": t["stage_time_s"],
            "components_j": _components(r),
            "metric": values[i], "pareto": front[i], "is_baseline": i == b,
            "energy_ratio": t["energy_j"] / be if be else None,
            "time_ratio": t["stage_time_s"] / bt if bt else None,
            "metric_delta": values[i] - values[b] if values[i] is not None and values[b] is not None else None,
        })
    return {
        "metric": metric, "maximize": maximize, "metrics_found": found,
        "baseline": base["run_id"] if base else None, "baseline_title": names[b] if runs else None,
        "baseline_chosen": baseline is not None,
        "param_keys": varying, "constant_params": constant, "rows": rows,
    }


def _components(run: dict) -> dict[str, float]:
    """Energy by component over the run's top-level stages (J)."""
    out: dict[str, float] = {}
    for s in run["stages"]:
        if s["depth"] == 0:
            for comp, c in s["components"].items():
                out[comp] = out.get(comp, 0.0) + (c["energy_j"] or 0.0)
    return out
