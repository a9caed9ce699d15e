"""A once-per-Meter exchange of small JSON payloads between the ranks of one job.

Every rank posts its payload and waits (at most ``timeout_s``) for every other rank's, through
the key-value store of the job's own initialised process group (no sockets of ours, no
collective that could pair with the training's next all_reduce), or, before one exists, through
one file per rank under the job's output directory (written atomically: a reader sees a whole
file or none). Never raises: what arrived in time is returned, the rest is missing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("meter")

POLL_S = 0.02


def default_store() -> Any:
    """The key-value store of the initialised default process group, or None."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is None or not (dist.is_available() and dist.is_initialized()):
            return None
        from torch.distributed import distributed_c10d as c10d

        return c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no usable store: the caller uses files or falls back
        return None


def exchange(key: str, rank: int, world: int, payload: dict, *, directory: str | None,
             timeout_s: float, store: Any = None) -> tuple[dict[int, dict], str, str | None]:
    """Post ``payload`` (JSON) as ``rank`` of ``world`` and collect every rank's.

    Returns (payloads by rank, method, problem): method is ``"store"`` or ``"files"``; problem
    is None when every rank's payload arrived, else why not (the missing ranks, or why neither
    way could be used)."""
    raw = json.dumps(payload, sort_keys=True).encode()
    if store is not None:
        got, problem = _via_store(store, key, rank, world, raw, timeout_s)
        method = "store"
    elif directory is not None:
        got, problem = _via_files(os.path.join(directory, ".meter-exchange", key), rank, world, raw, timeout_s)
        method = "files"
    else:
        return {rank: payload}, "none", "no process group and no output directory to exchange through"
    out: dict[int, dict] = {}
    for r, b in got.items():
        try:
            v = json.loads(b)
        except ValueError:
            continue
        if isinstance(v, dict):
            out[r] = v
    out[rank] = payload
    missing = [r for r in range(world) if r not in out]
    if missing and problem is None:
        problem = (f"rank(s) {', '.join(map(str, missing))} did not answer within {timeout_s:g} s "
                   "(METER_OWNERSHIP_TIMEOUT_S)")
    return out, method, problem


def _via_store(store, key: str, rank: int, world: int, raw: bytes, timeout_s: float):
    try:
        store.set(f"meter/x/{key}/{rank}", raw)
    except Exception as exc:  # noqa: BLE001 - a broken store: measure alone
        return {}, f"the process group's store refused the post ({type(exc).__name__}: {exc})"
    got: dict[int, bytes] = {rank: raw}
    deadline = time.monotonic() + timeout_s
    while True:
        for r in range(world):
            if r in got:
                continue
            k = f"meter/x/{key}/{r}"
            try:
                if store.check([k]):
                    got[r] = store.get(k)
            except Exception as exc:  # noqa: BLE001
                return got, f"the process group's store failed ({type(exc).__name__}: {exc})"
        if len(got) == world or time.monotonic() >= deadline:
            return got, None
        time.sleep(POLL_S)


def _via_files(folder: str, rank: int, world: int, raw: bytes, timeout_s: float):
    try:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"rank-{rank}.json")
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except OSError as exc:
        return {}, f"cannot write the exchange file in {folder!r} ({exc.strerror or exc})"
    got: dict[int, bytes] = {rank: raw}
    deadline = time.monotonic() + timeout_s
    while True:
        for r in range(world):
            if r in got:
                continue
            try:
                with open(os.path.join(folder, f"rank-{r}.json"), "rb") as f:
                    got[r] = f.read()
            except OSError:
                continue
        if len(got) == world or time.monotonic() >= deadline:
            return got, None
        time.sleep(POLL_S * 5)
