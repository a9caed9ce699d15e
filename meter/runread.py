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
import stat
from dataclasses import dataclass, field
from typing import Any

from .clock import utc_iso
from .errors import ConfigError, RunLogError
from .measurement import COUNT_NAMES, SCHEMA_VERSION
from .recordcheck import _json_scalar_or_container, check_heartbeat_entry, check_span, clean_run_info, number

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
    return number(v)


def _problem(problems: list[str], text: str) -> None:
    if text not in problems:  # samples.csv is read by several callers: report each cause once
        problems.append(text)


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _loads(text: str) -> Any:
    """Strict JSON: NaN and Infinity refused; nesting too deep is a ValueError, not a crash."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _open_regular(path: str, problems: list[str], mode: str = "rb"):
    """``open(path)`` if it is a regular file; None if absent; a problem if it is something else
    (a FIFO would block the reader forever, a directory cannot be read)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _problem(problems, f"{path}: unreadable ({exc.strerror or exc})")
        return None
    if not stat.S_ISREG(st.st_mode):
        _problem(problems, f"{path}: not a regular file; ignored")
        return None
    try:
        return open(path, mode)
    except OSError as exc:
        _problem(problems, f"{path}: unreadable ({exc.strerror or exc})")
        return None


def _decode(raw: bytes, where: str, problems: list[str]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        _problem(problems, f"{where}: invalid UTF-8 replaced by U+FFFD")
        return raw.decode("utf-8", "replace")


def _read_jsonl(path: str, problems: list[str]) -> list[dict]:
    out: list[dict] = []
    seen: set[int] = set()
    f = _open_regular(path, problems)
    if f is None:
        return out
    with f:
        try:
            lines = list(enumerate(f, 1))
        except OSError as exc:
            problems.append(f"{path}: read failed ({exc.strerror or exc}); the lines read before are kept")
            lines = []
    for n, raw in lines:
        where = f"{path}:{n}"
        line = _decode(raw, where, problems)
        if not line.strip():
            continue
        try:
            rec = _loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        except ValueError as exc:
            problems.append(f"{where}: corrupt line skipped ({str(exc)[:120]})")
            continue
        version = rec.get("schema_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            problems.append(f"{where}: schema_version {version!r:.40} is not a number; line skipped")
            continue
        if version > SCHEMA_VERSION:
            problems.append(f"{where}: schema_version {version} is newer than this meter reads; upgrade meter")
            continue
        _salvage_counts(rec, where, problems)
        why = check_span(rec)
        if why:
            problems.append(f"{where}: span record skipped ({why})")
            continue
        if rec["span_id"] in seen:
            problems.append(f"{where}: duplicate of span {rec['span_id']} skipped")
            continue
        seen.add(rec["span_id"])
        out.append(rec)
    return out


def read_samples(run_dir: str, problems: list[str]) -> tuple[list[str], list[list[float]]]:
    """samples.csv as (header, rows of floats); bad rows are counted into ``problems``: not
    numbers, not the header's width, not finite, or going back in time."""
    path = os.path.join(run_dir, "samples.csv")
    f = _open_regular(path, problems)
    if f is None:
        return [], []
    rows: list[list[float]] = []
    bad = 0
    with f:
        try:
            data = f.read()
        except OSError as exc:
            _problem(problems, f"{path}: read failed ({exc.strerror or exc}); samples ignored")
            return [], []
    text = _decode(data, path, problems)
    lines = text.splitlines()
    header = lines[0].strip().split(",") if lines else []
    if header[:2] != ["t_wall_s", "t_mono_s"] or len(set(header)) != len(header) or not all(header):
        _problem(problems, f"{path}: no valid header; samples ignored")
        return [], []
    last_t = -math.inf
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            vals = [float(x) for x in line.strip().split(",")]
        except ValueError:
            vals = []
        if len(vals) != len(header) or not all(math.isfinite(v) for v in vals) or vals[1] < last_t:
            bad += 1
            continue
        last_t = vals[1]
        rows.append(vals)
    if bad:
        _problem(problems, f"{path}: {bad} malformed row(s) skipped")
    return header, rows


def _rebuild_open(run_dir: str, info: dict, closed_ids: set, problems: list[str]) -> list[dict]:
    """Spans open when the process died: from the heartbeat and the last sample row."""
    hb_path = os.path.join(run_dir, "heartbeat.json")
    f = _open_regular(hb_path, problems)
    if f is None:
        return []
    try:
        with f:
            hb = _loads(_decode(f.read(), hb_path, problems))
    except (OSError, ValueError) as exc:
        problems.append(f"{hb_path}: corrupt heartbeat ignored ({str(exc)[:120]})")
        return []
    entries = hb.get("open") if isinstance(hb, dict) else None
    if not isinstance(entries, list):
        problems.append(f"{hb_path}: heartbeat without an 'open' list ignored")
        return []
    header, rows = read_samples(run_dir, problems)
    last = dict(zip(header, rows[-1], strict=True)) if rows else None
    channels = [c for c in (info.get("channels") or []) if isinstance(c, dict) and "key" in c]
    out = []
    seen = set(closed_ids)
    for n, o in enumerate(entries):
        why = check_heartbeat_entry(o)
        if why:
            problems.append(f"{hb_path}: open span {n} skipped ({why})")
            continue
        if o["span_id"] in seen:
            continue
        seen.add(o["span_id"])
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
        else:
            # No sample after its start: nothing measured, and said so (never a silent zero).
            rec.update(duration_s=0.0, end_utc=rec["start_utc"], energy_j=None)
            rec["warnings"] = rec["warnings"] + ["no power sample was written after this span started; energy unknown"]
        out.append(rec)
    return out


def _read_info(run_dir: str, problems: list[str]) -> dict:
    info_path = os.path.join(run_dir, "run.json")
    fallback = {"run_id": os.path.basename(os.path.normpath(run_dir)) or "run"}
    if not os.path.lexists(info_path):
        raise RunLogError(f"{run_dir} has no run.json: not a meter run directory")
    f = _open_regular(info_path, problems)
    if f is None:
        return fallback
    try:
        with f:
            info = _loads(_decode(f.read(), info_path, problems))
        if not isinstance(info, dict):
            raise ValueError(f"a JSON {type(info).__name__}, not an object")
    except (OSError, ValueError) as exc:
        problems.append(f"{info_path}: corrupt ({str(exc)[:120]}); run details unknown")
        return fallback
    version = info.get("schema_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        problems.append(f"{info_path}: schema_version {version} is newer than this meter reads; upgrade meter")
    info = clean_run_info(info, info_path, problems)
    if not info.get("run_id"):
        info["run_id"] = fallback["run_id"]
    return info


def _break_cycles(spans: list[dict], where: str, problems: list[str]) -> None:
    """A span that is its own ancestor (a corrupt parent_id) becomes a top-level span."""
    by_id = {s["span_id"]: s for s in spans}
    for s in spans:
        seen = {s["span_id"]}
        p = s.get("parent_id")
        while p is not None and p in by_id:
            if p in seen:
                problems.append(f"{where}: span {s['span_id']} is its own ancestor (parent_id {s['parent_id']}); "
                                "read as a top-level span")
                s["parent_id"] = None
                s["depth"] = 0
                break
            seen.add(p)
            p = by_id[p].get("parent_id")


def read_run(run_dir: str) -> Run:
    """Read one run directory. Never raises for corrupt content: problems are listed on the Run
    (raises RunLogError only when ``run_dir`` has no run.json at all)."""
    run_dir = os.fspath(run_dir)
    problems: list[str] = []
    info = _read_info(run_dir, problems)
    spans_path = os.path.join(run_dir, "spans.jsonl")
    spans = _read_jsonl(spans_path, problems)
    closed = {s["span_id"] for s in spans}
    spans.extend(_rebuild_open(run_dir, info, closed, problems))
    _break_cycles(spans, spans_path, problems)
    for p in problems:
        log.warning("meter: %s", p)
    info["run_dir"] = run_dir  # where it was read from (copies of a run share its run_id)
    return Run(run_dir, info, spans, problems)


def find_runs(paths) -> list[str]:
    """Run directories in ``paths`` (each a run directory or a directory of them)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(paths, (bytes, int, float)) or paths is None or not hasattr(paths, "__iter__"):
        raise ConfigError(f"{paths!r}: give a run directory, the output directory holding runs, or a list of them")
    paths = list(paths)
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise ConfigError(f"{p!r} in the paths given: each must be a directory path (str or os.PathLike)")
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.lexists(os.path.join(p, "run.json")):  # also a damaged one: read_run reports it
            out.append(p)
        elif os.path.isdir(p):
            try:
                names = os.listdir(p)
            except OSError as exc:
                raise RunLogError(f"cannot list {p} ({exc.strerror or exc})") from None
            out.extend(sorted(os.path.join(p, d) for d in names if os.path.lexists(os.path.join(p, d, "run.json"))))
        else:
            raise RunLogError(f"{p} does not exist")
    if not out:
        raise RunLogError(f"no meter runs (directories with run.json) in {', '.join(map(str, paths))}")
    return out


def _salvage_counts(rec: dict, where: str, problems: list[str]) -> None:
    """A span whose counts hold one bad value (a total past the float range from another version)
    keeps its energy: the bad count is dropped and reported, not the whole record."""
    tags = rec.get("tags")
    if isinstance(tags, dict):
        bad_tags = [k for k, v in tags.items() if not (isinstance(k, str) and _json_scalar_or_container(v))]
        if bad_tags:
            rec["tags"] = {k: v for k, v in tags.items() if k not in bad_tags}
            problems.append(f"{where}: tag {', '.join(map(repr, bad_tags))} not a JSON label; dropped, the span kept")
    counts = rec.get("counts")
    if not isinstance(counts, dict):
        return
    bad = [k for k, v in counts.items() if number(v) is None or number(v) < 0]
    if bad:
        rec["counts"] = {k: v for k, v in counts.items() if k not in bad}
        problems.append(f"{where}: count {', '.join(map(repr, bad))} not a finite non-negative number; dropped, "
                        "the span kept")


def read_runs(paths, problems: list | None = None) -> list[Run]:
    """Every run under ``paths`` that can still be read. A run that vanished or became unreadable
    between listing and reading (deleted by a sweep's cleanup, a disk gone) is skipped and
    reported in ``problems``: the others still load."""
    out = []
    for d in find_runs(paths):
        try:
            out.append(read_run(d))
        except RunLogError as exc:
            if problems is not None:
                problems.append(f"{d}: skipped: {exc}")
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
