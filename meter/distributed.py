"""Multi-process jobs: who measures which device, and one job record.

A job launched by torchrun or accelerate (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``), Slurm (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ...), MPI, or
one whose torch.distributed process group is initialised:

- every rank makes a Meter and writes its own run directory (``...-rankN``; run.json's
  ``distributed`` block says its rank, node, job and what it decided to measure);
- when a Meter starts, the ranks exchange their node identity and visible GPU UUIDs
  (:class:`Ownership`): each GPU is read by the lowest rank that sees it, each node's host
  counters by the lowest rank on that node, and each rank estimates what only it can see (its
  own process's CPU time and RAM where no counter covers them). Nothing is counted twice;
- :func:`write_job_record` (call it on every rank) gathers each rank's totals, built from its run
  log on disk, through the process group's store, waiting at most ``METER_GATHER_TIMEOUT_S``;
  rank 0 writes ``job-<id>.json`` (see :mod:`meter.jobrecord`). ``meter report <output_dir>``
  builds the same record from the per-rank logs when no process group is left.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any, Mapping

log = logging.getLogger("meter")


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    job_id: str
    launcher: str  # torch.distributed | torchrun | slurm | mpi
    host: str
    launch_id: str = ""
    node_index: int | None = None  # the launcher's node number (SLURM_NODEID, GROUP_RANK), if it says

    @property
    def owns_host(self) -> bool:
        """The rule without an exchange (the fallback): local rank 0 reads the node's host sensors."""
        return self.local_rank == 0


def _int(env: Mapping[str, str], key: str) -> int | None:
    v = env.get(key)
    try:
        return int(v) if v is not None and v != "" else None
    except ValueError:
        return None


def _first_int(env: Mapping[str, str], *keys: str) -> int | None:
    for k in keys:
        v = _int(env, k)
        if v is not None:
            return v
    return None


def _launch_id(env: Mapping[str, str]) -> str:
    """What tells one launch of a job from the next with the same job id (a restart, a rerun)."""
    parts = [env.get("TORCHELASTIC_RUN_ID", ""), env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", ""),
             env.get("TORCHELASTIC_RESTART_COUNT", ""), env.get("SLURM_JOB_ID", ""), env.get("SLURM_STEP_ID", "")]
    if not any(parts):
        return ""
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def _torch_world() -> tuple[int, int] | None:
    """(rank, world size) of an initialised default process group, else None."""
    import sys

    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
    except Exception:  # noqa: BLE001 - a half-torn-down group: fall back to the environment
        pass
    return None


def rank_info(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """This process's place in a multi-process job, or None for a single process: from an
    initialised torch.distributed, else the launcher's environment (torchrun and accelerate:
    ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``; Slurm: ``SLURM_PROCID``,
    ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_NTASKS_PER_NODE``, ``SLURM_NODEID``; MPI:
    ``OMPI_COMM_WORLD_*``, ``PMI_RANK``/``PMI_SIZE``)."""
    env = os.environ if environ is None else environ
    host = socket.gethostname().split(".")[0]
    launch = _launch_id(env)
    tw = _torch_world() if environ is None or environ is os.environ else None
    world = _int(env, "WORLD_SIZE")
    if tw is not None and tw[1] > 1:
        rank, world = tw
        local = _first_int(env, "LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK") or 0
        local_world = _first_int(env, "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE") or world
        return RankInfo(rank, local, world, local_world, _job_id(env), "torch.distributed", host, launch,
                        _first_int(env, "GROUP_RANK", "SLURM_NODEID"))
    if world and world > 1 and _int(env, "RANK") is not None:
        local_world = _int(env, "LOCAL_WORLD_SIZE") or world
        return RankInfo(_int(env, "RANK"), _int(env, "LOCAL_RANK") or 0, world, local_world, _job_id(env),
                        "torchrun", host, launch, _first_int(env, "GROUP_RANK", "SLURM_NODEID"))
    ntasks = _int(env, "SLURM_NTASKS")
    if ntasks and ntasks > 1 and _int(env, "SLURM_PROCID") is not None:
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        local_world = int(per_node) if per_node.isdigit() else ntasks
        return RankInfo(_int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID") or 0, ntasks, local_world,
                        _job_id(env), "slurm", host, launch, _int(env, "SLURM_NODEID"))
    mpi_world = _first_int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    mpi_rank = _first_int(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK")
    if mpi_world and mpi_world > 1 and mpi_rank is not None:
        local = _first_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID") or 0
        local_world = _first_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS") or mpi_world
        return RankInfo(mpi_rank, local, mpi_world, local_world, _job_id(env), "mpi", host, launch)
    return None


def _job_id(env: Mapping[str, str]) -> str:
    rid = env.get("TORCHELASTIC_RUN_ID")
    job = env.get("METER_JOB_ID") or env.get("SLURM_JOB_ID") or (rid if rid and rid != "none" else None) \
        or f"{env.get('MASTER_ADDR', 'local')}-{env.get('MASTER_PORT', '0')}"
    return _safe(job)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(text))


def node_id(environ: Mapping[str, str] | None = None) -> str:
    """This machine's identity: ``METER_NODE_ID``, else the kernel's boot id (shared by every
    container on one kernel, so by every reader of its RAPL counters), else the hostname."""
    env = os.environ if environ is None else environ
    if env.get("METER_NODE_ID"):
        return str(env["METER_NODE_ID"])
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        if boot:
            return boot
    except OSError:
        pass
    return socket.gethostname()


#: How long each rank waits, when a Meter starts, for the others' node and GPU identities
#: (``METER_OWNERSHIP_TIMEOUT_S``) before it measures what it sees on its own.
DEFAULT_OWNERSHIP_TIMEOUT_S = 30.0


def _timeout(env: Mapping[str, str], key: str, default: float) -> float:
    try:
        v = float(env.get(key, default))
        return v if v >= 0 and v == v else default
    except ValueError:
        return default


_exchanges = 0


class Ownership:
    """Which of the devices this rank sees it measures, decided once with the other ranks.

    Each rank publishes its node identity (:func:`node_id`) and the UUIDs of the GPUs it can
    see. Each GPU UUID is owned by the lowest rank that sees it, so a GPU visible to several
    ranks (all GPUs visible, MIG slices of one GPU) is read once and a GPU visible to one rank
    only (per-rank ``CUDA_VISIBLE_DEVICES``) by that rank. Each node's host sensors (RAPL, the
    node's estimates) belong to the lowest rank on that node. Without every rank's answer within
    ``METER_OWNERSHIP_TIMEOUT_S`` this rank measures every GPU it sees, and the host sensors if
    it is its node's local rank 0, with a warning; the decision is recorded in run.json either way.
    """

    def __init__(self, info: RankInfo, environ: Mapping[str, str] | None = None, directory: str | None = None):
        self.info = info
        self.env = os.environ if environ is None else environ
        self.directory = directory
        self.node = node_id(self.env)
        self.resolved = False
        self.visible: list[str] = []
        self.owned: list[str] = []
        self.gpu_owners: dict[str, int] = {}
        self.host_owner = info.owns_host
        self.host_owner_rank: int | None = None
        self.method = "none"
        self.fallback: str | None = None
        self.ranks_seen: list[int] = []

    def resolve(self, visible_uuids: list[str]) -> "Ownership":
        """Exchange identities (once) and decide. Never raises."""
        if self.resolved:
            return self
        self.resolved = True
        self.visible = list(dict.fromkeys(visible_uuids))
        try:
            self._resolve()
        except Exception as exc:  # noqa: BLE001 - ownership must never stop the measurement
            self._fall_back(f"the exchange failed ({type(exc).__name__}: {exc})")
        return self

    def _resolve(self) -> None:
        global _exchanges
        from ._exchange import default_store, exchange

        _exchanges += 1
        info = self.info
        key = _safe(f"own-{info.job_id}-{info.launch_id or 'x'}-{_exchanges}")
        payload = {"rank": info.rank, "local_rank": info.local_rank, "node": self.node, "host": info.host,
                   "gpus": self.visible}
        timeout = _timeout(self.env, "METER_OWNERSHIP_TIMEOUT_S", DEFAULT_OWNERSHIP_TIMEOUT_S)
        got, self.method, problem = exchange(key, info.rank, info.world_size, payload, directory=self.directory,
                                             timeout_s=timeout, store=default_store())
        self.ranks_seen = sorted(got)
        if problem is not None:
            self._fall_back(problem)
            return
        owners: dict[str, int] = {}
        node_owner: dict[str, int] = {}
        for r in sorted(got):
            p = got[r]
            for u in p.get("gpus") or []:
                owners.setdefault(str(u), r)
            node_owner.setdefault(str(p.get("node")), r)
        self.gpu_owners = {u: owners[u] for u in self.visible}
        self.owned = [u for u in self.visible if owners.get(u) == info.rank]
        self.host_owner_rank = node_owner.get(self.node, info.rank)
        self.host_owner = self.host_owner_rank == info.rank

    def _fall_back(self, why: str) -> None:
        self.fallback = why
        self.owned = list(self.visible)
        self.gpu_owners = {u: self.info.rank for u in self.visible}
        self.host_owner = self.info.owns_host
        self.host_owner_rank = None
        log.warning("meter: rank %d could not agree with the other ranks on who measures which device (%s); "
                    "it measures every GPU it sees%s, which may count a device twice: see run.json's "
                    "'distributed' block", self.info.rank, why,
                    " and this node's host sensors (local rank 0)" if self.host_owner else "")

    def owns_gpu(self, uuid: str) -> bool:
        return uuid in self.owned

    def describe(self) -> dict[str, Any]:
        return {"owns_host_sensors": self.host_owner, "host_owner_rank": self.host_owner_rank,
                "visible_gpus": list(self.visible), "owned_gpus": list(self.owned),
                "gpu_owners": dict(self.gpu_owners), "ownership_method": self.method,
                "ownership_fallback": self.fallback, "ranks_seen": list(self.ranks_seen)}


def describe(info: RankInfo | None, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {**asdict(info), "node": node_id(environ), "owns_host_sensors": info.owns_host}


#: How long rank 0 waits for the other ranks' totals (``METER_GATHER_TIMEOUT_S``).
DEFAULT_GATHER_TIMEOUT_S = 60.0


def gather_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    try:
        v = float(env.get("METER_GATHER_TIMEOUT_S", DEFAULT_GATHER_TIMEOUT_S))
        return v if v >= 0 else DEFAULT_GATHER_TIMEOUT_S
    except ValueError:
        return DEFAULT_GATHER_TIMEOUT_S


def _gather(store, key: str, rank: int, world: int, payload: bytes, timeout_s: float) -> dict[int, bytes]:
    """Post ``payload`` under ``key``; rank 0 waits (polling, at most ``timeout_s`` in all) for
    every rank's. Returns what rank 0 received ({} on other ranks). Never raises. The store, not
    a collective: one that a rank never joins would pair with the training's next all_reduce."""
    import time

    try:
        store.set(f"{key}/{rank}", payload)
    except Exception:  # noqa: BLE001
        log.warning("meter: rank %d could not post its job totals; the job record lacks it", rank, exc_info=True)
    if rank != 0:
        return {}
    got: dict[int, bytes] = {0: payload}
    deadline = time.monotonic() + timeout_s
    while True:
        for r in range(1, world):
            if r in got:
                continue
            try:
                if store.check([f"{key}/{r}"]):
                    got[r] = store.get(f"{key}/{r}")
            except Exception:  # noqa: BLE001 - a broken store: what we have is the record
                return got
        if len(got) == world or time.monotonic() >= deadline:
            return got
        time.sleep(0.02)


_gathers = 0


def write_job_record(meter, output_dir: str | None = None) -> str | None:
    """Gather every rank's per-stage totals (built from its run log on disk) to rank 0, which
    writes ``job-<id>.json`` next to the run directories and returns its path (other ranks
    return None at once). Call it on every rank after the measured work. Rank 0 waits at most
    ``METER_GATHER_TIMEOUT_S`` (default 60) for the others; ranks that did not report are listed
    in ``missing_ranks`` and warned about. Exchanges small JSON payloads through the process
    group's store (no numpy, no pickle). Flushes the Meter; never raises into training."""
    try:
        return _write_job_record(meter, output_dir)
    except Exception:  # noqa: BLE001 - the job record must never break the training script
        log.exception("meter: writing the job record failed; every rank's run log is on disk")
        return None


def _write_job_record(meter, output_dir: str | None) -> str | None:
    global _gathers
    from ._exchange import default_store
    from .jobrecord import build_job, rank_payload
    from .runread import read_run

    info = meter.rank if getattr(meter, "rank", None) is not None else rank_info()
    meter.flush()
    if meter.run_dir:
        mine = rank_payload(read_run(meter.run_dir))
    else:
        mine = {"rank": info.rank if info else 0, "node": node_id(), "host": socket.gethostname(), "stages": {},
                "devices": {}, "components": {}, "energy_j": 0.0, "run_dir": None}
    world = info.world_size if info else 1
    rank = info.rank if info else 0
    mine["rank"] = rank
    job = info.job_id if info else "single"
    store = default_store() if world > 1 else None
    timeout = gather_timeout_s()
    _gathers += 1
    if store is not None:
        import sys

        dist = sys.modules["torch.distributed"]
        rank, world = dist.get_rank(), dist.get_world_size()
        launch = info.launch_id if info else ""
        got = _gather(store, f"meter/job/{job}/{launch}/{_gathers}", rank, world, json.dumps(mine).encode(), timeout)
        if rank != 0:
            return None
        gathered = []
        for r, raw in sorted(got.items()):
            try:
                gathered.append(json.loads(raw))
            except ValueError:
                log.warning("meter: rank %d sent unreadable job totals; left out of the job record", r)
    else:
        if rank != 0:
            return None
        gathered = [mine]
    record = build_job(gathered, job_id=job, world_size=world, source="process-group" if store is not None else "this rank",
                       gather_timeout_s=timeout)
    if record["missing_ranks"]:
        log.warning("meter: job %s: rank(s) %s did not report their totals within %g s "
                    "(METER_GATHER_TIMEOUT_S); the job record counts ranks %s only", job,
                    ", ".join(map(str, record["missing_ranks"])), timeout, ", ".join(map(str, record["ranks_reported"])))
    out = output_dir or meter.config.output_dir
    path = os.path.join(out, f"job-{job}.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
    return path
