"""One record of a multi-rank job, from each rank's run log: totals per stage, node and device.

Each rank reduces its own run log to a small JSON payload (:func:`rank_payload`); the job
record (:func:`build_job`) combines the payloads, whether they were gathered through the
process group (:func:`meter.distributed.write_job_record`) or read back from the per-rank logs
on disk (:func:`job_from_runs`, used by ``meter report`` after the job ended or crashed).

Every device was measured by exactly one rank (see :class:`meter.distributed.Ownership`), so
energies add up over ranks; a stage's duration is its slowest rank's; counts (samples, tokens,
FLOPs) add up, each rank having counted its own shard.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("meter")

JOB_SCHEMA_VERSION = 2


def _add(d: dict, k: str, v: float | None) -> None:
    if v is not None:
        d[k] = d.get(k, 0.0) + v


def rank_payload(run) -> dict[str, Any]:
    """What one rank contributes to the job record, from its :class:`meter.runlog.Run`."""
    info = run.info
    dist = info.get("distributed") or {}
    channels = {c.get("key"): c for c in info.get("channels") or [] if isinstance(c, dict)}
    stages: dict[str, dict[str, Any]] = {}
    devices: dict[str, dict[str, Any]] = {}
    components: dict[str, float] = {}
    total = 0.0
    for r in run.spans:
        t = stages.setdefault(r["path"], {"name": r["name"], "depth": r.get("depth", 0), "energy_j": 0.0,
                                          "duration_s": 0.0, "spans": 0})
        _add(t, "energy_j", r.get("energy_j"))
        t["duration_s"] += r.get("duration_s") or 0.0
        t["spans"] += 1
        for comp, ce in (r.get("energy_by_component") or {}).items():
            _add(t, f"{comp}_energy_j", ce.get("energy_j"))
        for k, v in (r.get("counts") or {}).items():
            t[k] = t.get(k, 0) + v
        if r.get("depth", 0) != 0:
            continue  # job, node and device totals from top-level stages: nested ones are inside them
        total += r.get("energy_j") or 0.0
        for comp, ce in (r.get("energy_by_component") or {}).items():
            _add(components, comp, ce.get("energy_j"))
        for key, de in (r.get("devices") or {}).items():
            ch = channels.get(key) or {}
            det = ch.get("details") or {}
            dev_id = det.get("uuid") or f"{dist.get('node', '?')}/{key}"
            d = devices.setdefault(dev_id, {"key": key, "component": ch.get("component", key.split(":")[0]),
                                            "label": ch.get("label", key), "uuid": det.get("uuid"),
                                            "provenance": de.get("provenance"), "energy_j": 0.0})
            _add(d, "energy_j", de.get("energy_j"))
    return {"rank": dist.get("rank", 0), "local_rank": dist.get("local_rank", 0), "node": dist.get("node"),
            "host": dist.get("host") or (info.get("host") or {}).get("hostname"), "run_dir": run.run_dir,
            "run_id": info.get("run_id"), "world_size": dist.get("world_size", 1), "job_id": dist.get("job_id"),
            "owns_host_sensors": dist.get("owns_host_sensors", True), "owned_gpus": dist.get("owned_gpus", []),
            "ownership_fallback": dist.get("ownership_fallback"), "energy_j": total, "components": components,
            "stages": stages, "devices": devices, "started_utc": info.get("started_utc"),
            "ended_utc": info.get("ended_utc")}


def _mismatch(per_rank: list[dict]) -> dict[str, Any]:
    """Stages not on every rank that reported, and names nested differently across ranks."""
    ranks = [p["rank"] for p in per_rank]
    where: dict[str, list[int]] = {}
    names: dict[str, dict[str, list[int]]] = {}
    for p in per_rank:
        for path, t in p["stages"].items():
            where.setdefault(path, []).append(p["rank"])
            names.setdefault(t.get("name", path.rsplit("/", 1)[-1]), {}).setdefault(path, []).append(p["rank"])
    partial = {path: rs for path, rs in where.items() if sorted(rs) != sorted(ranks)}
    nesting = {n: paths for n, paths in names.items() if len(paths) > 1}
    return {"stages_not_on_every_rank": partial, "names_nested_differently": nesting}


def build_job(per_rank: list[dict], *, job_id: str | None, world_size: int, source: str,
              gather_timeout_s: float | None = None, warn: bool = True) -> dict[str, Any]:
    """The job record from the ranks' payloads (:func:`rank_payload`). ``source`` says how they
    were collected (``process-group`` or ``disk``)."""
    per_rank = sorted(per_rank, key=lambda p: p["rank"])
    reported = [p["rank"] for p in per_rank]
    missing = [r for r in range(world_size) if r not in reported]
    stages: dict[str, dict[str, Any]] = {}
    for p in per_rank:
        for path, t in p["stages"].items():
            s = stages.setdefault(path, {"name": t.get("name"), "depth": t.get("depth", 0), "ranks": [],
                                         "duration_s": 0.0, "energy_j": 0.0})
            s["ranks"].append(p["rank"])
            s["duration_s"] = max(s["duration_s"], t.get("duration_s") or 0.0)
            for k, v in t.items():
                if k in ("duration_s", "spans", "name", "depth"):
                    continue
                s[k] = s.get(k, 0) + v
    nodes: dict[str, dict[str, Any]] = {}
    devices: dict[str, dict[str, Any]] = {}
    for p in per_rank:
        n = nodes.setdefault(str(p.get("node")), {"hosts": [], "ranks": [], "energy_j": 0.0, "host_sensors_rank": None})
        n["ranks"].append(p["rank"])
        if p.get("host") and p["host"] not in n["hosts"]:
            n["hosts"].append(p["host"])
        n["energy_j"] += p.get("energy_j") or 0.0
        for comp, e in (p.get("components") or {}).items():
            _add(n, f"{comp}_energy_j", e)
        if p.get("owns_host_sensors") and n["host_sensors_rank"] is None:
            n["host_sensors_rank"] = p["rank"]
        for dev_id, d in (p.get("devices") or {}).items():
            if d.get("uuid") is None and d.get("component") != "gpu":
                dev_id = f"{p.get('node')}/rank{p['rank']}/{d.get('key')}"  # a host channel: per node and rank
            e = devices.setdefault(dev_id, {**{k: v for k, v in d.items() if k != "energy_j"}, "node": p.get("node"),
                                            "ranks": [], "energy_j": 0.0})
            e["ranks"].append(p["rank"])
            _add(e, "energy_j", d.get("energy_j"))
    twice = {u: d["ranks"] for u, d in devices.items() if d.get("uuid") and len(d["ranks"]) > 1}
    mismatch = _mismatch(per_rank)
    job = {"schema_version": JOB_SCHEMA_VERSION, "type": "job", "job_id": job_id, "world_size": world_size,
           "source": source, "ranks_reported": reported, "missing_ranks": missing,
           "energy_j": sum(p.get("energy_j") or 0.0 for p in per_rank),
           "stages": stages, "nodes": nodes, "devices": devices, "devices_measured_twice": twice,
           "stage_mismatch": mismatch,
           "ownership_fallbacks": {str(p["rank"]): p["ownership_fallback"] for p in per_rank if p.get("ownership_fallback")},
           "ranks": per_rank}
    if gather_timeout_s is not None:
        job["gather_timeout_s"] = gather_timeout_s
    if warn:
        _warn(job)
    return job


def _warn(job: dict) -> None:
    mm = job["stage_mismatch"]
    if mm["stages_not_on_every_rank"] or mm["names_nested_differently"]:
        parts = [f"{path!r} on rank(s) {', '.join(map(str, rs))} only" for path, rs in list(mm["stages_not_on_every_rank"].items())[:5]]
        parts += [f"{n!r} nested as {' / '.join(repr(p) for p in paths)}" for n, paths in list(mm["names_nested_differently"].items())[:3]]
        log.warning("meter: job %s: the ranks' stages differ (%s); each stage's totals cover the ranks that ran it "
                    "(see stage_mismatch in the job record)", job["job_id"], "; ".join(parts))
    if job["devices_measured_twice"]:
        log.warning("meter: job %s: GPU(s) %s were measured by more than one rank (an ownership fallback); the job "
                    "total counts them more than once", job["job_id"], ", ".join(job["devices_measured_twice"]))


def group_jobs(runs) -> tuple[list[list], list]:
    """Split :class:`~meter.runlog.Run` objects into jobs (runs of one job id and world size > 1,
    in rank order) and single runs."""
    jobs: dict[tuple, list] = {}
    singles = []
    for run in runs:
        d = run.info.get("distributed") or {}
        if d.get("job_id") and (d.get("world_size") or 1) > 1:
            jobs.setdefault((d["job_id"], d.get("launch_id") or ""), []).append(run)
        else:
            singles.append(run)
    return [sorted(rs, key=lambda r: (r.info.get("distributed") or {}).get("rank", 0)) for rs in jobs.values()], singles


def job_from_runs(runs, warn: bool = False) -> dict[str, Any]:
    """The job record of one job's per-rank runs read from disk (no process group needed)."""
    payloads = {}
    for run in runs:
        p = rank_payload(run)
        payloads.setdefault(p["rank"], p)  # a rank's first run directory (a restart writes another)
    world = max([p.get("world_size") or 1 for p in payloads.values()] or [1])
    job_id = next((p["job_id"] for p in payloads.values() if p.get("job_id")), None)
    return build_job(list(payloads.values()), job_id=job_id, world_size=world, source="disk", warn=warn)
