"""Reading run logs back: tolerant of whatever a crash, a full disk or another version leaves.

A corrupt or duplicated record is skipped and reported in ``Run.problems`` (file and line),
never hidden and never fatal; spans open when the process died are rebuilt from the heartbeat
and the last sample row, marked ``incomplete``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .clock import utc_iso
from .errors import RunLogError
from .measurement import COUNT_NAMES, SCHEMA_VERSION

log = logging.getLogger("meter")

COUNT_COLUMNS = COUNT_NAMES
SPAN_COLUMNS = [
    "run_id", "span_id", "parent_id", "name", "path", "depth", "status", "start_utc", "end_utc",
    "duration_s", "energy_j", "measured_energy_j", "estimated_energy_j", "avg_power_w",
    "peak_power_w", *COUNT_COLUMNS,
]


@dataclass
class Run:
    """One run read back from disk."""

    run_dir: str
    info: dict
    spans: list[dict]
    problems: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id") or os.path.basename(self.run_dir.rstrip("/")))

    def samples(self):
        """The power timeline as a pandas DataFrame (columns as in samples.csv). Rows that are
        not numbers of the header's width are skipped and reported in ``problems``."""
        import pandas as pd

        header, rows = read_samples(self.run_dir, self.problems)
        return pd.DataFrame(rows, columns=header) if header else pd.DataFrame()


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _valid_span(rec: dict) -> str | None:
    """Why a span record cannot be used, or None."""
    if not isinstance(rec.get("span_id"), int) or isinstance(rec.get("span_id"), bool):
        return "no integer span_id"
    if not isinstance(rec.get("name"), str) or not isinstance(rec.get("path"), str):
        return "no name or path"
    for k in ("energy_by_component", "devices", "counts", "tags", "peak_power_by_component_w"):
        if rec.get(k) is not None and not isinstance(rec.get(k), dict):
            return f"{k} is not an object"
    for k in ("energy_j", "duration_s", "measured_energy_j", "estimated_energy_j", "avg_power_w", "peak_power_w"):
        if rec.get(k) is not None and _num(rec.get(k)) is None:
            return f"{k} is not a number"
    return None


def _read_jsonl(path: str, problems: list[str]) -> list[dict]:
    out: list[dict] = []
    seen: set[int] = set()
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    except OSError as exc:
        problems.append(f"{path}: unreadable ({exc.strerror})")
        return out
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                problems.append(f"{path}:{n}: corrupt line skipped ({exc})")
                continue
            version = rec.get("schema_version", 0)
            if not isinstance(version, int):
                problems.append(f"{path}:{n}: schema_version {version!r} is not a number; line skipped")
                continue
            if version > SCHEMA_VERSION:
                problems.append(f"{path}:{n}: schema_version {version} is newer than this meter reads; upgrade meter")
                continue
            why = _valid_span(rec)
            if why:
                problems.append(f"{path}:{n}: span record skipped ({why})")
                continue
            if rec["span_id"] in seen:
                problems.append(f"{path}:{n}: duplicate of span {rec['span_id']} skipped")
                continue
            seen.add(rec["span_id"])
            out.append(rec)
    return out


def read_samples(run_dir: str, problems: list[str]) -> tuple[list[str], list[list[float]]]:
    """samples.csv as (header, rows of floats); bad rows are counted into ``problems``."""
    path = os.path.join(run_dir, "samples.csv")
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return [], []
    rows: list[list[float]] = []
    bad = 0
    with f:
        header = f.readline().strip().split(",")
        if header[:2] != ["t_wall_s", "t_mono_s"]:
            problems.append(f"{path}: no valid header; samples ignored")
            return [], []
        for line in f:
            row = line.strip().split(",")
            try:
                vals = [float(x) for x in row]
            except ValueError:
                vals = []
            if len(vals) != len(header) or not all(math.isfinite(v) for v in vals):
                bad += 1
                continue
            rows.append(vals)
    if bad:
        problems.append(f"{path}: {bad} malformed row(s) skipped")
    return header, rows


def _rebuild_open(run_dir: str, info: dict, closed_ids: set, problems: list[str]) -> list[dict]:
    """Spans open when the process died: from the heartbeat and the last sample row."""
    hb_path = os.path.join(run_dir, "heartbeat.json")
    try:
        with open(hb_path, encoding="utf-8") as f:
            hb = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        problems.append(f"{hb_path}: corrupt heartbeat ignored ({exc})")
        return []
    entries = hb.get("open") if isinstance(hb, dict) else None
    if not isinstance(entries, list):
        problems.append(f"{hb_path}: heartbeat without an 'open' list ignored")
        return []
    header, rows = read_samples(run_dir, problems)
    last = dict(zip(header, rows[-1], strict=True)) if rows else None
    channels = [c for c in (info.get("channels") or []) if isinstance(c, dict) and "key" in c]
    out = []
    for o in entries:
        if not isinstance(o, dict) or o.get("span_id") in closed_ids or not isinstance(o.get("span_id"), int):
            continue
        rec = {
            "schema_version": SCHEMA_VERSION, "type": "span", "status": "incomplete",
            "name": str(o.get("name")), "path": str(o.get("path")), "span_id": o["span_id"],
            "parent_id": o.get("parent_id"), "depth": o.get("depth", 0), "thread": o.get("thread"),
            "run_id": info.get("run_id"), "start_utc": o.get("start_utc"),
            "counts": o.get("counts") if isinstance(o.get("counts"), dict) else {},
            "tags": o.get("tags") if isinstance(o.get("tags"), dict) else {}, "interval_s": info.get("interval_s"),
            "warnings": ["incomplete: the process ended while this span was open; energy up to its last sample"],
        }
        start_t = _num(o.get("start_t"))
        starts = o.get("start_energy_j") if isinstance(o.get("start_energy_j"), list) else []
        if last is not None and start_t is not None and last["t_mono_s"] >= start_t:
            rec["duration_s"] = last["t_mono_s"] - start_t
            rec["end_utc"] = utc_iso(last["t_wall_s"])
            devices, by_comp = {}, {}
            for ch, start_j in zip(channels, starts, strict=False):
                e = last.get(f"{ch['key']}:energy_j")
                if e is None or _num(start_j) is None:
                    continue
                dj = e - start_j
                prov = ch.get("provenance", "unknown")
                devices[ch["key"]] = {"energy_j": dj, "provenance": prov, "corrected": False}
                c = by_comp.setdefault(ch.get("component", "other"), {"energy_j": 0.0, "provenance": prov, "devices": []})
                c["energy_j"] += dj
                c["devices"].append(ch["key"])
                if c["provenance"] != prov:
                    c["provenance"] = "mixed"
            rec["devices"] = devices
            rec["energy_by_component"] = by_comp
            if devices:
                total = sum(d["energy_j"] for d in devices.values())
                est = sum(d["energy_j"] for d in devices.values() if d["provenance"] == "estimated")
                rec.update(energy_j=total, estimated_energy_j=est, measured_energy_j=total - est,
                           avg_power_w=total / rec["duration_s"] if rec["duration_s"] > 0 else None)
        out.append(rec)
    return out


def read_run(run_dir: str) -> Run:
    """Read one run directory. Never raises for corrupt content: problems are listed on the Run."""
    problems: list[str] = []
    info_path = os.path.join(run_dir, "run.json")
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
        if not isinstance(info, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        raise RunLogError(f"{run_dir} has no run.json: not a meter run directory") from None
    except (OSError, ValueError) as exc:
        problems.append(f"{info_path}: corrupt ({exc}); run details unknown")
        info = {"run_id": os.path.basename(run_dir.rstrip("/"))}
    spans = _read_jsonl(os.path.join(run_dir, "spans.jsonl"), problems)
    closed = {s["span_id"] for s in spans}
    spans.extend(_rebuild_open(run_dir, info, closed, problems))
    for p in problems:
        log.warning("meter: %s", p)
    return Run(run_dir, info, spans, problems)


def find_runs(paths) -> list[str]:
    """Run directories in ``paths`` (each a run directory or a directory of them)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isfile(os.path.join(p, "run.json")):
            out.append(p)
        elif os.path.isdir(p):
            out.extend(sorted(os.path.join(p, d) for d in os.listdir(p) if os.path.isfile(os.path.join(p, d, "run.json"))))
        else:
            raise RunLogError(f"{p} does not exist")
    if not out:
        raise RunLogError(f"no meter runs (directories with run.json) in {', '.join(map(str, paths))}")
    return out


def span_rows(run: Run) -> list[dict]:
    """One flat dict per span: the columns of :data:`SPAN_COLUMNS`, then per-component energy
    and provenance, ``tag_*`` columns, warnings and the run directory."""
    rows = []
    for s in run.spans:
        row = {k: s.get(k) for k in SPAN_COLUMNS if k not in COUNT_COLUMNS}
        row["run_id"] = s.get("run_id") or run.run_id
        row["status"] = s.get("status") or "complete"
        counts = s.get("counts") or {}
        for k in COUNT_COLUMNS:
            row[k] = _num(counts.get(k))
        for comp, ce in (s.get("energy_by_component") or {}).items():
            if isinstance(ce, dict):
                row[f"{comp}_energy_j"] = _num(ce.get("energy_j"))
                row[f"{comp}_provenance"] = ce.get("provenance")
        for k, v in (s.get("tags") or {}).items():
            row[f"tag_{k}"] = v
        warnings = s.get("warnings")
        row["warnings"] = "; ".join(str(w) for w in warnings) if isinstance(warnings, list) else ""
        row["run_dir"] = run.run_dir
        rows.append(row)
    return rows
