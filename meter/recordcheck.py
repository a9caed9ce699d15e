"""Field-by-field checks of the records a run log holds, for the tolerant reader.

Each ``check_*`` returns why a record cannot be used (a short phrase naming the field), or None.
A span or heartbeat entry with any bad field is skipped whole; run.json keeps its good fields
and drops the bad ones (:func:`clean_run_info`), so a run with damaged details still loads.
Everything downstream (the DataFrame, the card model, the renderers) may then rely on types.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .measurement import STATUSES

Check = Callable[[Any], bool]


def number(v: Any) -> float | None:
    """A finite float from a record value; None for absent, booleans, text, NaN, infinities and
    integers too large for a float (``10**400``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def is_num(v: Any) -> bool:
    return number(v) is not None


def is_nonneg(v: Any) -> bool:
    f = number(v)
    return f is not None and f >= 0


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_time(v: Any) -> bool:
    """An ISO-8601 UTC timestamp as meter writes them (``2026-12-02T21:35:34.194Z``)."""
    if not isinstance(v, str) or len(v) > 40:
        return False
    from .clock import parse_utc_iso

    try:
        return math.isfinite(parse_utc_iso(v))
    except (ValueError, OverflowError, OSError):
        return False


def opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


def list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def dict_of(check: Check) -> Check:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


def obj(spec: dict[str, Check]) -> Check:
    """A dict whose listed fields pass (absent fields pass when their check accepts None)."""
    return lambda v: isinstance(v, dict) and _first_bad(v, spec) is None


def _first_bad(rec: dict, spec: dict[str, Check]) -> str | None:
    for k, check in spec.items():
        try:
            ok = check(rec.get(k))
        except (TypeError, ValueError, RecursionError):
            ok = False
        if not ok:
            return k
    return None


def _json_scalar_or_container(v: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if v is None or isinstance(v, (str, bool)):
        return True
    if isinstance(v, (int, float)):
        return is_num(v)
    if isinstance(v, list):
        return all(_json_scalar_or_container(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_scalar_or_container(x, depth + 1) for k, x in v.items())
    return False


_COMPONENT = obj({"energy_j": opt(is_num), "provenance": opt(is_str), "devices": opt(list_of(is_str))})
_DEVICE = obj({"energy_j": opt(is_num), "provenance": opt(is_str), "corrected": opt(lambda v: isinstance(v, bool))})

SPAN: dict[str, Check] = {
    "type": opt(lambda v: v == "span"),
    "name": is_str, "path": is_str,
    "span_id": lambda v: is_int(v) and v >= 0,
    "parent_id": opt(lambda v: is_int(v) and v >= 0),
    # Required: every record meter writes has them, and a table of spans needs them.
    "depth": lambda v: is_int(v) and 0 <= v < 10_000,
    "run_id": opt(is_str),
    "start_utc": is_time, "end_utc": is_time,
    "duration_s": is_nonneg,
    "energy_j": opt(is_num), "measured_energy_j": opt(is_num), "estimated_energy_j": opt(is_num),
    "avg_power_w": opt(is_num), "peak_power_w": opt(is_num),
    "energy_by_component": opt(dict_of(_COMPONENT)),
    "devices": opt(dict_of(_DEVICE)),
    "peak_power_by_component_w": opt(dict_of(is_num)),
    "counts": opt(dict_of(is_nonneg)),
    "tags": opt(dict_of(_json_scalar_or_container)),
    "interval_s": opt(is_nonneg),
    "warnings": opt(list_of(is_str)),
    "thread": opt(is_str),
    "status": lambda v: v in STATUSES,
}

HEARTBEAT_ENTRY: dict[str, Check] = {
    "span_id": lambda v: is_int(v) and v >= 0,
    "name": is_str, "path": is_str,
    "parent_id": opt(lambda v: is_int(v) and v >= 0),
    "depth": lambda v: is_int(v) and 0 <= v < 10_000,
    "thread": opt(is_str),
    "start_utc": is_time,
    "start_t": is_num,
    "start_energy_j": list_of(is_num),
    "counts": opt(dict_of(is_nonneg)),
    "tags": opt(dict_of(_json_scalar_or_container)),
}


def check_span(rec: dict) -> str | None:
    bad = _first_bad(rec, SPAN)
    return None if bad is None else f"field {bad!r} is {_what(rec.get(bad))}"


def check_heartbeat_entry(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return f"an entry is {_what(rec)}, not an object"
    bad = _first_bad(rec, HEARTBEAT_ENTRY)
    return None if bad is None else f"field {bad!r} is {_what(rec.get(bad))}"


def _what(v: Any) -> str:
    if v is None:
        return "missing"
    text = repr(v)
    return f"{type(v).__name__} {text[:40] + '...' if len(text) > 40 else text}"


# -- run.json ----------------------------------------------------------------------------------

_CHANNEL = obj({"key": is_str, "component": opt(is_str), "label": opt(is_str), "provenance": opt(is_str),
                "scope": opt(is_str), "mode": opt(is_str), "details": opt(dict_of(_json_scalar_or_container))})
_UNAVAILABLE = obj({"sensor": is_str, "reason": opt(is_str), "hint": opt(is_str), "kind": opt(is_str)})
_GPU = obj({"name": opt(is_str)})
_HOST = obj({"hostname": opt(is_str), "os": opt(is_str), "machine": opt(is_str), "python": opt(is_str),
             "meter": opt(is_str), "cpu_model": opt(is_str), "cpu_sockets": opt(lambda v: is_int(v) and 0 < v < 4096),
             "logical_cpus": opt(lambda v: is_int(v) and v >= 0), "ram_gb": opt(is_nonneg),
             "gpus": opt(list_of(_GPU)), "torch_version": opt(is_str), "transformers_version": opt(is_str),
             "nvidia_driver": opt(is_str)})
_CONFIG = obj({"region": opt(is_str), "pue": opt(lambda v: is_num(v) and v >= 1.0), "interval_s": opt(is_nonneg),
               "quiet_interval_s": opt(is_nonneg), "carbon": opt(is_str), "sources": opt(dict_of(is_str)), "output_dir": opt(is_str)})

def _rank(v: Any) -> bool:
    return is_int(v) and v >= 0


#: run.json's ``distributed`` block: the rank's place in its job and the ownership decisions.
DISTRIBUTED: dict[str, Check] = {
    "rank": opt(_rank), "local_rank": opt(_rank), "world_size": opt(lambda v: is_int(v) and v >= 1),
    "local_world_size": opt(lambda v: is_int(v) and v >= 1), "node_index": opt(_rank),
    "node": opt(is_str), "host": opt(is_str), "job_id": opt(is_str), "launch_id": opt(is_str),
    "launcher": opt(is_str), "owns_host_sensors": opt(lambda v: isinstance(v, bool)),
    "host_owner_rank": opt(_rank), "visible_gpus": opt(list_of(is_str)), "owned_gpus": opt(list_of(is_str)),
    "gpu_owners": opt(dict_of(_rank)), "ownership_method": opt(lambda v: v in ("store", "files", "none")),
    "ownership_fallback": opt(is_str), "ranks_seen": opt(list_of(_rank)),
}

#: run.json fields, their check, and what replaces a bad value.
RUN_FIELDS: dict[str, tuple[Check, Any]] = {
    "run_id": (opt(lambda v: is_str(v) and 0 < len(v) <= 300), None),
    "run_name": (opt(is_str), None),
    "started_utc": (opt(is_time), None), "ended_utc": (opt(is_time), None),
    "config": (opt(_CONFIG), {}),
    "channels": (opt(list_of(_CHANNEL)), []),
    "unavailable": (opt(list_of(_UNAVAILABLE)), []),
    "notes": (opt(list_of(is_str)), []),
    "faults": (opt(list_of(dict_of(_json_scalar_or_container))), []),
    "interval_s": (opt(is_nonneg), None),
    "quiet_interval_s": (opt(is_nonneg), None),
    "host": (opt(_HOST), {}),
    "clock": (opt(obj({"system_clock_moved_s": opt(is_num), "note": opt(is_str)})), None),
    "distributed": (opt(obj(DISTRIBUTED)), None),
}


def clean_run_info(info: dict, where: str, problems: list[str]) -> dict:
    """``info`` with every bad field replaced by its default, each reported in ``problems``."""
    out = dict(info)
    version = info.get("schema_version", 0)
    if not is_int(version):
        problems.append(f"{where}: schema_version {_what(version)} is not a number; read as version 1")
    for k, (check, default) in RUN_FIELDS.items():
        try:
            ok = check(info.get(k))
        except (TypeError, ValueError, RecursionError):
            ok = False
        if not ok:
            problems.append(f"{where}: field {k!r} is {_what(info.get(k))}; ignored")
            out[k] = default
        elif info.get(k) is None and default is not None:
            out[k] = default  # null reads as absent
    cfg = out.get("config") or {}
    if "pue" in cfg and cfg.get("pue") is None:
        problems.append(f"{where}: config.pue is null (not a finite number when the run was written); PUE 1.0 used")
    return out
