"""The card model: every figure a card shows, computed once from the run log on disk.

Renderers (Markdown, JSON, LaTeX, Hugging Face, climate card, HTML) format this dict and
compute nothing. Schema ``meter-card`` version 1; see docs/cards.md for the fields.
"""

from __future__ import annotations

import math
from typing import Any

from .._version import __version__
from ..clock import parse_utc_iso
from ..hardware import hardware_summary
from ..units import j_to_kwh
from .sweep import _num, overview, titles

CARD_SCHEMA = "meter-card"
CARD_SCHEMA_VERSION = 1

TRAIN_NAMES = ("train", "fit", "finetune", "fine-tune", "fine_tune", "pretrain", "pre-train", "training", "epoch", "steps")
EVAL_NAMES = ("evaluate", "eval", "validate", "validation", "test", "evaluation")
PREDICT_NAMES = ("predict", "inference", "generate", "serve", "prediction")
PREP_NAMES = ("prepare", "preprocess", "cache", "cache_build", "cache-build", "embed", "tokenize", "setup")


def stage_kind(name: str, tags: dict | None = None) -> str:
    """train | evaluate | predict | prepare | other, from a ``kind`` tag or the span's name."""
    if tags and tags.get("kind"):
        return str(tags["kind"])
    low = name.lower()
    for kind, names in (("evaluate", EVAL_NAMES), ("predict", PREDICT_NAMES), ("prepare", PREP_NAMES), ("train", TRAIN_NAMES)):
        if any(low == n or low.startswith(n + "-") or low.startswith(n + "_") for n in names):
            return kind
    return "other"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def _stage(row: dict, rows_by_parent: dict, kinds: dict) -> dict[str, Any]:
    sid = row["span_id"]
    energy = _num(row.get("energy_j"))
    duration = _num(row.get("duration_s")) or 0.0
    kind = kinds[sid]
    children = rows_by_parent.get(sid, [])
    child_energy = sum(_num(c.get("energy_j")) or 0.0 for c in children)
    # "Own" energy: inclusive minus nested stages of another kind (evaluation inside an epoch),
    # so energy per training sample is not inflated by evaluation.
    other = 0.0
    stack = list(children)
    while stack:
        c = stack.pop()
        if kinds[c["span_id"]] != kind:
            other += _num(c.get("energy_j")) or 0.0
        else:
            stack.extend(rows_by_parent.get(c["span_id"], []))
    own = energy - other if energy is not None else None
    counts = {c: _num(row.get(c)) for c in COUNTS}
    derived = []
    for c in COUNTS:
        if counts[c] is None:
            counts[c] = _child_counts(sid, c, kind, rows_by_parent, kinds)
            if counts[c] is not None:
                derived.append(c)
    samples, tokens, flops, out_tokens = counts["samples"], counts["tokens"], counts["flops"], counts["output_tokens"]
    pue = _num(row.get("pue")) or 1.0
    comps = {}
    for comp in ("gpu", "cpu", "dram"):
        e = _num(row.get(f"{comp}_energy_j"))
        if e is not None:
            comps[comp] = {"energy_j": e, "provenance": row.get(f"{comp}_provenance")}
    tags = {k[4:]: v for k, v in row.items() if k.startswith("tag_") and v is not None and not (isinstance(v, float) and math.isnan(v))}
    em = _num(row.get("emissions_g"))
    return {
        "path": row["path"], "name": row["name"], "depth": int(row.get("depth") or 0), "kind": kind,
        "status": row.get("status") or "complete", "start_utc": row.get("start_utc"), "end_utc": row.get("end_utc"),
        "duration_s": duration,
        "energy_j": energy, "energy_kwh": j_to_kwh(energy) if energy is not None else None,
        "own_energy_j": own, "exclusive_energy_j": energy - child_energy if energy is not None else None,
        "measured_energy_j": _num(row.get("measured_energy_j")), "estimated_energy_j": _num(row.get("estimated_energy_j")),
        "facility_energy_j": energy * pue if energy is not None else None,
        "components": comps,
        "avg_power_w": _num(row.get("avg_power_w")), "peak_power_w": _num(row.get("peak_power_w")),
        "emissions_g": em,
        "samples": samples, "tokens": tokens, "flops": flops,
        "samples_per_s": _ratio(samples, duration), "tokens_per_s": _ratio(tokens, duration),
        "energy_per_sample_j": _ratio(own, samples),
        "energy_per_1k_tokens_j": _ratio(own * 1000 if own is not None else None, tokens),
        "emissions_per_sample_g": _ratio(em * own / energy if (em is not None and own is not None and energy) else None, samples),
        "flops_per_s": _ratio(flops, duration), "flops_per_j": _ratio(flops, own),
        "output_tokens": out_tokens, "energy_per_output_token_j": _ratio(own, out_tokens),
        "counts_from_children": derived,
        "peak_gpu_memory_bytes": _num(tags.get("peak_gpu_memory_bytes")),
        "tags": tags,
        "warnings": [w for w in str(row.get("warnings") or "").split("; ") if w],
    }


COUNTS = ("samples", "tokens", "output_tokens", "flops")


def _child_counts(sid: int, count: str, kind: str, rows_by_parent: dict, kinds: dict) -> float | None:
    """Sum of a count over the nearest sub-stages of the same kind that have it (a parent that
    counted nothing itself, e.g. ``finetune`` over its epochs); None when none has it."""
    total, found = 0.0, False
    stack, seen = [sid], {sid}
    while stack:  # without recursion: stages nest thousands deep in recursive code
        for c in rows_by_parent.get(stack.pop(), []):
            if kinds[c["span_id"]] != kind:
                continue
            v = _num(c.get(count))
            if v is None:
                if c["span_id"] not in seen:
                    seen.add(c["span_id"])
                    stack.append(c["span_id"])
            else:
                total, found = total + v, True
    return total if found else None


def _budget_forecast(stages: list[dict]) -> tuple[list[dict], list[dict]]:
    """Budget outcomes and forecast-vs-actual rows of the stages that recorded them (tags)."""
    budgets, forecasts = [], []
    for s in stages:
        t = s["tags"]
        if t.get("budget_outcome"):
            budgets.append({"path": s["path"], "budget_kwh": _num(t.get("budget_kwh")), "budget_g": _num(t.get("budget_g")),
                            "action": t.get("budget_action"), "outcome": t.get("budget_outcome"),
                            "stopped_at_step": _num(t.get("stopped_at_step")), "energy_kwh": s["energy_kwh"],
                            "emissions_g": s["emissions_g"]})
        f = _num(t.get("energy_forecast_kwh"))
        if f is not None:
            lo, hi = _num(t.get("energy_forecast_low_kwh")), _num(t.get("energy_forecast_high_kwh"))
            act = s["energy_kwh"]
            forecasts.append({"path": s["path"], "forecast_kwh": f, "low_kwh": lo, "high_kwh": hi,
                              "at_step": _num(t.get("forecast_at_step")), "steps": _num(t.get("forecast_steps")),
                              "actual_kwh": act, "error": _ratio(act - f, f) if act is not None else None,
                              "within_band": (lo <= act <= hi) if None not in (lo, hi, act) else None,
                              "complete_run": not t.get("stopped_at_step") and s["status"] == "complete"})
    return budgets, forecasts


def _run(info: dict, rows: list[dict]) -> dict[str, Any]:
    rows = sorted(rows, key=lambda r: (r.get("start_utc") or "", r["span_id"]))
    by_parent: dict = {}
    for r in rows:
        pid = _num(r.get("parent_id"))
        if pid is not None:
            by_parent.setdefault(int(pid), []).append(r)
    kinds: dict = {}
    by_id = {r["span_id"]: r for r in rows}

    def kind_of(r):
        # Up the parent chain without recursion (stages nest thousands deep in recursive code).
        chain: list = []
        while True:
            sid = r["span_id"]
            if sid in kinds:
                k = kinds[sid]
                break
            # NaN where another span of the run has the tag and this one has not
            tags = {k[4:]: v for k, v in r.items() if k.startswith("tag_") and not (isinstance(v, float) and math.isnan(v))}
            k = stage_kind(str(r["name"]), tags)
            pid = _num(r.get("parent_id"))
            if k == "other" and pid is not None and int(pid) in by_id and int(pid) not in chain and int(pid) != sid:
                chain.append(sid)  # "steps-0-99" inside a training epoch is training
                r = by_id[int(pid)]
                continue
            kinds[sid] = k
            break
        for sid in chain:
            kinds[sid] = k
        return k

    for r in rows:
        kind_of(r)
    stages = [_stage(r, by_parent, kinds) for r in rows]
    budgets, forecasts = _budget_forecast(stages)
    host = info.get("host") or {}
    inten = {k: rows[0].get(f"intensity_{k}") for k in ("g_per_kwh", "zone", "name", "source", "year", "kind", "factor", "method", "note")} if rows else {}
    top = [s for s in stages if s["depth"] == 0]
    total_e = sum(s["energy_j"] or 0.0 for s in top)
    start = info.get("started_utc")
    end = info.get("ended_utc") or max((s["end_utc"] for s in stages if s["end_utc"]), default=None)
    wall = parse_utc_iso(end) - parse_utc_iso(start) if start and end else None
    if wall is not None and wall < 0:  # a log from a clock set backwards: no wall time, not a negative one
        wall = None
    cfg = info.get("config") or {}
    return {
        "run_id": info.get("run_id"), "run_name": info.get("run_name"), "started_utc": start, "ended_utc": end,
        "hardware": {"summary": hardware_summary(host), "gpus": host.get("gpus", []), "cpu_model": host.get("cpu_model"),
                     "cpu_sockets": host.get("cpu_sockets"), "logical_cpus": host.get("logical_cpus"), "ram_gb": host.get("ram_gb"),
                     "hostname": host.get("hostname")},
        "software": {k: host.get(k) for k in ("os", "python", "meter", "torch_version", "transformers_version", "nvidia_driver") if host.get(k)},
        "region": cfg.get("region"), "intensity": inten, "pue": _num(cfg.get("pue")) or 1.0,
        "config_sources": cfg.get("sources") or {},
        "interval_s": info.get("interval_s"), "quiet_interval_s": info.get("quiet_interval_s"),
        "sensors": info.get("channels", []), "unavailable": info.get("unavailable", []), "notes": list(info.get("notes") or []) + _clock_notes(info),
        "faults": info.get("faults", []),
        "stages": stages,
        "budgets": budgets, "forecasts": forecasts,
        "totals": {
            "wall_time_s": wall, "stage_time_s": sum(s["duration_s"] for s in top),
            "energy_j": total_e, "energy_kwh": j_to_kwh(total_e),
            "facility_energy_kwh": j_to_kwh(total_e) * (_num(cfg.get("pue")) or 1.0),
            "emissions_g": sum(s["emissions_g"] or 0.0 for s in top),
            "train_time_s": sum(s["duration_s"] for s in top if s["kind"] == "train"),
            "train_energy_kwh": j_to_kwh(sum(s["energy_j"] or 0.0 for s in top if s["kind"] == "train")),
            "train_emissions_g": sum(s["emissions_g"] or 0.0 for s in top if s["kind"] == "train"),
        },
    }


def _clock_notes(info: dict) -> list[str]:
    moved = (info.get("clock") or {}).get("system_clock_moved_s")
    if moved is None:
        return []
    return [f"the system clock was set by {moved:+.1f} s during this run; its times follow the monotonic clock "
            "from the start (durations are unaffected)"]


_SUM = ("energy_j", "measured_energy_j", "estimated_energy_j", "facility_energy_j", "emissions_g",
        "gpu_energy_j", "cpu_energy_j", "dram_energy_j", *COUNTS)


def _merge_rows(per_rank: list[tuple[int, list[dict]]]) -> list[dict]:
    """One row per stage of the job: the same stage (path and occurrence) of every rank added up
    (energies, emissions and counts; each rank measured other devices and counted its own shard),
    its duration the slowest rank's, its times the earliest start and latest end."""
    merged: dict[tuple, dict] = {}
    order: list[tuple] = []
    for _rank, rows in per_rank:
        seen: dict[str, int] = {}
        key_of: dict = {}
        for r in sorted(rows, key=lambda r: (r.get("start_utc") or "", r["span_id"])):
            n = seen.get(r["path"], 0)
            seen[r["path"]] = n + 1
            key = (r["path"], n)
            key_of[r["span_id"]] = key
            m = merged.get(key)
            if m is None:
                m = dict(r)
                m["_parent_key"] = key_of.get(_num(r.get("parent_id")))
                m["span_id"] = len(order)
                merged[key] = m
                order.append(key)
                continue
            for c in _SUM:
                a, b = _num(m.get(c)), _num(r.get(c))
                m[c] = None if a is None and b is None else (a or 0.0) + (b or 0.0)
            m["duration_s"] = max(_num(m.get("duration_s")) or 0.0, _num(r.get("duration_s")) or 0.0)
            if r.get("start_utc") and (not m.get("start_utc") or r["start_utc"] < m["start_utc"]):
                m["start_utc"] = r["start_utc"]
            if r.get("end_utc") and (not m.get("end_utc") or r["end_utc"] > m["end_utc"]):
                m["end_utc"] = r["end_utc"]
            if r.get("status") != "complete":
                m["status"] = r.get("status")
    out = []
    for key in order:
        m = merged[key]
        pk = m.pop("_parent_key")
        m["parent_id"] = merged[pk]["span_id"] if pk in merged else None
        d, e = _num(m.get("duration_s")), _num(m.get("energy_j"))
        m["avg_power_w"] = e / d if e is not None and d else m.get("avg_power_w")
        out.append(m)
    return out


def _job(members: list[tuple[dict, list[dict]]], paths) -> dict[str, Any]:
    """A multi-rank job as one entry of ``runs``: the stages added up over its ranks, with
    ``world_size``, a ``ranks`` list (each rank's own card entry) and the job record (totals per
    node and per device, missing ranks, stage mismatch) built from the run logs on disk."""
    from ..jobrecord import job_from_runs
    from ..runread import read_run

    members = sorted(members, key=lambda m: (m[0].get("distributed") or {}).get("rank", 0))
    ranks = []
    for info, rows in members:
        r = _run(info, rows)
        d = info.get("distributed") or {}
        r.update({"rank": d.get("rank", 0), "node": d.get("node"), "host": d.get("host"),
                  "owned_gpus": d.get("owned_gpus"), "owns_host_sensors": d.get("owns_host_sensors")})
        ranks.append(r)
    first = members[0][0]
    dist = first.get("distributed") or {}
    job = _run({**first, "run_id": f"job-{dist.get('job_id')}",
                "started_utc": min((i.get("started_utc") for i, _ in members if i.get("started_utc")), default=None),
                "ended_utc": max((i.get("ended_utc") for i, _ in members if i.get("ended_utc")), default=None),
                "notes": sorted({n for i, _ in members for n in i.get("notes") or []}),
                "channels": [dict(c, rank=(i.get("distributed") or {}).get("rank")) for i, _ in members for c in i.get("channels") or []]},
               _merge_rows([((i.get("distributed") or {}).get("rank", 0), rows) for i, rows in members]))
    record = job_from_runs([read_run(i["run_dir"]) for i, _ in members if i.get("run_dir")]) \
        if all(i.get("run_dir") for i, _ in members) else None
    job.update({"job_id": dist.get("job_id"), "world_size": dist.get("world_size"), "ranks": ranks,
                "job": {k: record[k] for k in ("ranks_reported", "missing_ranks", "nodes", "devices",
                                               "devices_measured_twice", "stage_mismatch", "ownership_fallbacks")}
                if record else None})
    return job


def build(paths, *, live: bool = True, session: Any = None, df=None, metric: str | None = None,
          baseline: str | None = None, maximize: bool = True) -> dict[str, Any]:
    """The card for the runs under ``paths``: the first run is the *final model*; all of them
    together are *all experiments* (hyperparameter search, failed runs, ...). With several runs
    the card has a ``sweep`` overview (:func:`meter.report.sweep.overview`, which documents
    ``metric``, ``baseline`` and ``maximize``)."""
    from .frame import load

    if df is None:
        df = load(paths, live=live, session=session)
    runs = []
    infos = df.attrs.get("runs", [])
    records = df.to_dict("records")
    jobs: dict[tuple, list] = {}
    for info in infos:
        # by directory: copies of a run share its run_id, and their spans must not mix
        rows = [r for r in records if r.get("run_dir") == info.get("run_dir")] if "run_dir" in info else \
            [r for r in records if r.get("run_id") == info.get("run_id")]
        dist = info.get("distributed") or {}
        if dist.get("job_id") and (dist.get("world_size") or 1) > 1:
            key = (dist["job_id"], dist.get("launch_id") or "")
            if key not in jobs:
                jobs[key] = []
                runs.append(key)  # the job's place among the runs: where its first rank is
            jobs[key].append((info, rows))
        else:
            runs.append(_run(info, rows))
    runs = [_job(jobs[r], paths) if isinstance(r, tuple) else r for r in runs]
    all_exp = {
        "runs": len(runs),
        "wall_time_s": sum(r["totals"]["wall_time_s"] or r["totals"]["stage_time_s"] for r in runs),
        "energy_kwh": sum(r["totals"]["energy_kwh"] for r in runs),
        "facility_energy_kwh": sum(r["totals"]["facility_energy_kwh"] for r in runs),
        "emissions_g": sum(r["totals"]["emissions_g"] for r in runs),
    }
    for run, title in zip(runs, titles(runs), strict=True):
        run["title"] = title
    card = {"schema": CARD_SCHEMA, "schema_version": CARD_SCHEMA_VERSION, "generated_by": f"meter {__version__}",
            "runs": runs, "all_experiments": all_exp, "problems": list(df.attrs.get("problems", []))}
    if len(runs) > 1:
        card["sweep"] = overview(card, metric=metric, baseline=baseline, maximize=maximize)
    elif runs and (metric is not None or baseline is not None):
        overview(card, metric=metric, baseline=baseline, maximize=maximize)  # a name that is on no run is an error
    return card
