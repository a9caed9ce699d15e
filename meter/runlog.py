"""The run log: ``OUTPUT_DIR/<run-id>/`` with ``run.json`` (written first, rewritten atomically at
close), ``spans.jsonl`` (one record per closed span), ``samples.csv`` (the power timeline, one
row per sampler tick, cumulative joules per channel) and ``heartbeat.json`` (spans still open).

Everything downstream reads from here, so a report can be rebuilt after a crash: spans that were
open when the process died are rebuilt from the heartbeat and the last sample row, marked
``incomplete``. Readers skip and report a corrupt line; they never drop the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable

from .clock import utc_iso
from .errors import ConfigError, RunLogError

log = logging.getLogger("meter")
SCHEMA_VERSION = 1


def check_writable(output_dir: str) -> None:
    """Create ``output_dir`` if needed and prove we can write there, or raise ConfigError now."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".meter-probe-", dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"output_dir {os.path.abspath(output_dir)!r} is not writable ({exc.strerror}); "
            "pass output_dir= or set METER_OUTPUT_DIR to a directory you can write"
        ) from None


def atomic_write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity; write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunWriter:
    """Appends records for one run. Used only from the sampler thread and at close."""

    def __init__(self, run_dir: str, channels: Iterable):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.keys = [c.key for c in channels]
        self._spans = open(os.path.join(run_dir, "spans.jsonl"), "a", encoding="utf-8")
        self._samples = open(os.path.join(run_dir, "samples.csv"), "a", encoding="utf-8", newline="")
        if self._samples.tell() == 0:
            header = ["t_wall_s", "t_mono_s"] + [f"{k}:power_w" for k in self.keys] + [f"{k}:energy_j" for k in self.keys]
            self._samples.write(",".join(header) + "\n")

    def write_run(self, info: dict) -> None:
        atomic_write_json(os.path.join(self.run_dir, "run.json"), {"schema_version": SCHEMA_VERSION, "type": "run", **_clean(info)})

    def append_spans(self, measurements) -> None:
        lines = []
        for m in measurements:
            # Sensor values are checked finite by the sampler, so records need no NaN scrub.
            rec = {"schema_version": SCHEMA_VERSION, "type": "span", **m.to_dict()}
            lines.append(json.dumps(rec, default=_json_default, separators=(",", ":"), check_circular=False))
        self._spans.write("\n".join(lines) + "\n")

    def append_sample(self, snap) -> None:
        parts = [f"{snap.wall:.6f}", f"{snap.t:.6f}"]
        parts += [f"{p:.6g}" for p in snap.power_w]
        parts += [f"{e:.6f}" for e in snap.energy_j]
        self._samples.write(",".join(parts) + "\n")

    def heartbeat(self, open_spans: list[dict], snap) -> None:
        atomic_write_json(
            os.path.join(self.run_dir, "heartbeat.json"),
            {"schema_version": SCHEMA_VERSION, "type": "heartbeat", "t_wall": snap.wall, "updated_utc": utc_iso(snap.wall), "open": open_spans},
        )

    def flush(self) -> None:
        if self._spans is not None:
            self._spans.flush()
            self._samples.flush()

    def abandon(self) -> None:
        """In a forked child: drop the handles without flushing (the parent owns the files)."""
        self._spans = self._samples = None

    def close(self) -> None:
        if self._spans is None:
            return
        self.flush()
        self._spans.close()
        self._samples.close()
        self._spans = self._samples = None
        hb = os.path.join(self.run_dir, "heartbeat.json")
        try:
            os.unlink(hb)
        except FileNotFoundError:
            pass


# -- reading -----------------------------------------------------------------------------------


@dataclass
class Run:
    """One run read back from disk."""

    run_dir: str
    info: dict
    spans: list[dict]
    problems: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.info.get("run_id") or os.path.basename(self.run_dir.rstrip("/"))

    def samples(self):
        """The power timeline as a pandas DataFrame (columns as in samples.csv)."""
        import pandas as pd

        path = os.path.join(self.run_dir, "samples.csv")
        if not os.path.exists(path):
            return pd.DataFrame()
        return pd.read_csv(path, on_bad_lines="skip")


def _read_jsonl(path: str, problems: list[str]) -> list[dict]:
    out = []
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
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
            if rec.get("schema_version", 0) > SCHEMA_VERSION:
                problems.append(f"{path}:{n}: schema_version {rec.get('schema_version')} is newer than this meter reads; upgrade meter")
                continue
            out.append(rec)
    return out


def _last_sample(run_dir: str, problems: list[str]) -> tuple[list[str], list[str]] | None:
    path = os.path.join(run_dir, "samples.csv")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline().strip().split(",")
            last = None
            for line in f:
                row = line.strip().split(",")
                if len(row) == len(header):
                    try:
                        [float(x) for x in row]
                    except ValueError:
                        continue
                    last = row
    except FileNotFoundError:
        return None
    if last is None:
        return None
    return header, last


def _rebuild_open(run_dir: str, info: dict, closed_ids: set, problems: list[str]) -> list[dict]:
    """Spans open when the process died: from the heartbeat and the last sample row."""
    hb_path = os.path.join(run_dir, "heartbeat.json")
    if not os.path.exists(hb_path):
        return []
    try:
        with open(hb_path, encoding="utf-8") as f:
            hb = json.load(f)
    except ValueError as exc:
        problems.append(f"{hb_path}: corrupt heartbeat ignored ({exc})")
        return []
    sample = _last_sample(run_dir, problems)
    channels = info.get("channels", [])
    out = []
    for o in hb.get("open", []):
        if o.get("span_id") in closed_ids:
            continue
        rec = {
            "schema_version": SCHEMA_VERSION, "type": "span", "status": "incomplete",
            "name": o.get("name"), "path": o.get("path"), "span_id": o.get("span_id"),
            "parent_id": o.get("parent_id"), "depth": o.get("depth", 0), "thread": o.get("thread"),
            "run_id": info.get("run_id"), "start_utc": o.get("start_utc"), "counts": o.get("counts", {}),
            "tags": o.get("tags", {}), "interval_s": info.get("interval_s"),
            "warnings": ["incomplete: the process ended while this span was open; energy up to its last sample"],
        }
        if sample is not None:
            header, row = sample
            vals = dict(zip(header, (float(x) for x in row), strict=False))
            rec["duration_s"] = vals["t_mono_s"] - o["start_t"]
            rec["end_utc"] = utc_iso(vals["t_wall_s"])
            devices, by_comp = {}, {}
            for ch, start_j in zip(channels, o.get("start_energy_j", []), strict=False):
                e = vals.get(f"{ch['key']}:energy_j")
                if e is None:
                    continue
                dj = e - start_j
                devices[ch["key"]] = {"energy_j": dj, "provenance": ch["provenance"], "corrected": False}
                c = by_comp.setdefault(ch["component"], {"energy_j": 0.0, "provenance": ch["provenance"], "devices": []})
                c["energy_j"] += dj
                c["devices"].append(ch["key"])
                if c["provenance"] != ch["provenance"]:
                    c["provenance"] = "mixed"
            rec["devices"] = devices
            rec["energy_by_component"] = by_comp
            total = sum(d["energy_j"] for d in devices.values()) if devices else None
            rec["energy_j"] = total
            rec["estimated_energy_j"] = sum(d["energy_j"] for d in devices.values() if d["provenance"] == "estimated") if devices else None
            rec["measured_energy_j"] = (total - rec["estimated_energy_j"]) if devices else None
            rec["avg_power_w"] = total / rec["duration_s"] if total is not None and rec["duration_s"] > 0 else None
        out.append(rec)
    return out


def read_run(run_dir: str) -> Run:
    """Read one run directory. Never raises for corrupt content: problems are listed on the Run."""
    problems: list[str] = []
    info_path = os.path.join(run_dir, "run.json")
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise RunLogError(f"{run_dir} has no run.json: not a meter run directory") from None
    except ValueError as exc:
        problems.append(f"{info_path}: corrupt ({exc}); run details unknown")
        info = {"run_id": os.path.basename(run_dir.rstrip('/'))}
    spans = _read_jsonl(os.path.join(run_dir, "spans.jsonl"), problems)
    closed = {s.get("span_id") for s in spans}
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


SPAN_COLUMNS = [
    "run_id", "span_id", "parent_id", "name", "path", "depth", "status", "start_utc", "end_utc",
    "duration_s", "energy_j", "measured_energy_j", "estimated_energy_j", "avg_power_w",
    "peak_power_w", "samples", "tokens", "output_tokens", "flops",
]


COUNT_COLUMNS = ("samples", "tokens", "output_tokens", "flops")


def span_rows(run: Run) -> list[dict]:
    rows = []
    for s in run.spans:
        row = {k: s.get(k) for k in SPAN_COLUMNS if k not in COUNT_COLUMNS}
        row["run_id"] = s.get("run_id") or run.run_id
        row["status"] = s.get("status", "complete")
        counts = s.get("counts") or {}
        for k in COUNT_COLUMNS:
            row[k] = counts.get(k)
        for comp, ce in (s.get("energy_by_component") or {}).items():
            row[f"{comp}_energy_j"] = ce.get("energy_j")
            row[f"{comp}_provenance"] = ce.get("provenance")
        for k, v in (s.get("tags") or {}).items():
            row[f"tag_{k}"] = v
        row["warnings"] = "; ".join(s.get("warnings") or [])
        row["run_dir"] = run.run_dir
        rows.append(row)
    return rows
