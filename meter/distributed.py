"""torch.distributed-aware ownership of sensors and aggregation to one job record.

In a job launched by torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``) or
Slurm (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_NTASKS_PER_NODE``):

- each rank measures the GPU it drives: visible GPU number ``LOCAL_RANK`` when the node shows
  one GPU per local rank; otherwise local rank 0 measures every visible GPU and the others none;
- host counters (RAPL, whole-socket) are read by local rank 0 only; the other ranks on that node
  neither read them nor estimate their CPU (the socket counter already contains them). Where no
  RAPL counter exists, every rank estimates its own process, which sums correctly;
- every rank writes its own run directory (``run.json`` records its rank and the job id);
- :func:`write_job_record` (a collective: call it on every rank) gathers each rank's per-stage
  totals with ``torch.distributed`` and rank 0 writes ``job-<id>.json``: energy per stage summed
  over ranks, duration the longest, so nothing is counted twice.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    job_id: str
    launcher: str  # torchrun | slurm
    host: str

    @property
    def owns_host(self) -> bool:
        return self.local_rank == 0


def _int(env: Mapping[str, str], key: str) -> int | None:
    v = env.get(key)
    try:
        return int(v) if v is not None and v != "" else None
    except ValueError:
        return None


def rank_info(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """This process's place in a multi-process job, or None for a single process."""
    env = os.environ if environ is None else environ
    host = socket.gethostname().split(".")[0]
    world = _int(env, "WORLD_SIZE")
    if world and world > 1 and _int(env, "RANK") is not None:
        local_world = _int(env, "LOCAL_WORLD_SIZE") or world
        rid = env.get("TORCHELASTIC_RUN_ID")
        job = env.get("METER_JOB_ID") or env.get("SLURM_JOB_ID") or (rid if rid and rid != "none" else None) \
            or f"{env.get('MASTER_ADDR', 'local')}-{env.get('MASTER_PORT', '0')}"
        return RankInfo(_int(env, "RANK"), _int(env, "LOCAL_RANK") or 0, world, local_world, _safe(job), "torchrun", host)
    ntasks = _int(env, "SLURM_NTASKS")
    if ntasks and ntasks > 1 and _int(env, "SLURM_PROCID") is not None:
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        local_world = int(per_node) if per_node.isdigit() else ntasks
        job = env.get("METER_JOB_ID") or env.get("SLURM_JOB_ID") or "slurm"
        return RankInfo(_int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID") or 0, ntasks, local_world, _safe(job), "slurm", host)
    return None


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(text))


def describe(info: RankInfo | None) -> dict[str, Any] | None:
    return None if info is None else {**asdict(info), "owns_host_sensors": info.owns_host}


def _stage_totals(records) -> dict[str, dict[str, float]]:
    """Per-stage totals of one rank's span records (as in spans.jsonl)."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        if r.get("energy_j") is None:
            continue
        t = out.setdefault(r["path"], {"energy_j": 0.0, "duration_s": 0.0, "spans": 0})
        t["energy_j"] += r["energy_j"]
        t["duration_s"] += r.get("duration_s") or 0.0
        t["spans"] += 1
        for comp, ce in (r.get("energy_by_component") or {}).items():
            t[f"{comp}_energy_j"] = t.get(f"{comp}_energy_j", 0.0) + (ce.get("energy_j") or 0.0)
        for k, v in (r.get("counts") or {}).items():
            t[k] = t.get(k, 0) + v
    return out


def combine(per_rank: list[dict]) -> dict[str, Any]:
    """Job totals per stage from each rank's totals: energies and counts add up over ranks
    (each rank measured different devices), the duration is the slowest rank's."""
    stages: dict[str, dict[str, Any]] = {}
    for rank_rec in per_rank:
        for path, t in rank_rec["stages"].items():
            s = stages.setdefault(path, {"ranks": 0, "duration_s": 0.0})
            s["ranks"] += 1
            s["duration_s"] = max(s["duration_s"], t["duration_s"])
            for k, v in t.items():
                if k in ("duration_s", "spans"):
                    continue
                s[k] = s.get(k, 0) + v
    return stages


def write_job_record(meter, output_dir: str | None = None) -> str | None:
    """Gather every rank's per-stage totals to rank 0, which writes ``job-<id>.json`` next to
    the run directories and returns its path (other ranks return None). A collective: call it on
    every rank, after the measured work and before ``destroy_process_group``. Flushes the Meter."""
    import torch.distributed as dist

    from .runread import read_run

    info = meter.rank if getattr(meter, "rank", None) is not None else rank_info()
    meter.flush()
    run = read_run(meter.run_dir) if meter.run_dir else None
    mine = {"rank": info.rank if info else 0, "local_rank": info.local_rank if info else 0,
            "host": info.host if info else socket.gethostname(), "run_dir": meter.run_dir,
            "owns_host_sensors": info.owns_host if info else True,
            "channels": [c.get("key") for c in (run.info.get("channels") or [])] if run else [],
            "stages": _stage_totals(run.spans) if run else {}}
    if dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        rank = dist.get_rank()
    else:
        gathered, rank = [mine], 0
    if rank != 0:
        return None
    job = info.job_id if info else "single"
    record = {"schema_version": 1, "type": "job", "job_id": job, "world_size": len(gathered),
              "ranks": sorted(gathered, key=lambda g: g["rank"]), "stages": combine(gathered)}
    out = output_dir or meter.config.output_dir
    path = os.path.join(out, f"job-{job}.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
    return path
