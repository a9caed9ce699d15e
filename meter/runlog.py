"""The run log's single writer: ``OUTPUT_DIR/<run-id>/`` with ``run.json`` (written first,
replaced atomically), ``spans.jsonl`` (one record per closed span), ``samples.csv`` (one row per
sampler tick, cumulative joules per channel) and ``heartbeat.json`` (spans still open).

Records are appended with unbuffered ``os.write`` on ``O_APPEND`` descriptors, so a forked child
has no buffer to flush twice and a process killed with SIGKILL loses nothing it had written.
Run directories are created with ``mkdir`` (never reused). Temporary files are unique per
writer. A fault of the disk (full, read-only, the directory deleted) is recorded once with the
fix; records wait in memory and are retried, and nothing here ever raises into the caller.

Reading is in :mod:`meter.runread`; its public names are re-exported here.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import secrets
import tempfile
import time
from typing import Any, Iterable

from .clock import utc_iso
from .errors import ConfigError, RunLogError
from .measurement import SCHEMA_VERSION
from .runread import COUNT_COLUMNS, SPAN_COLUMNS, Run, find_runs, read_run, span_rows  # noqa: F401 - public names

log = logging.getLogger("meter")

#: Unwritten bytes kept per file while the disk refuses them; beyond this the oldest sample rows
#: are dropped (span records are kept up to four times as much).
PENDING_MAX_BYTES = 16 * 2**20
#: How often writes are retried after a disk fault.
RETRY_S = 2.0
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


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


#: The longest path component safe_component makes (file systems allow 255 bytes).
MAX_COMPONENT = 100


def safe_component(text: str, fallback: str = "x") -> str:
    """``text`` as one safe path component: ASCII letters, digits, ``-_.``; never ``.``, ``..``,
    a hidden name or one that reads as an option (no leading ``.`` or ``-``); at most
    MAX_COMPONENT characters, a long one keeping its head and tail (where run ids hold their
    time, host and pid) around a hash of the whole."""
    raw = str(text)
    out = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "-" for ch in raw).lstrip(".-").rstrip(".")
    if len(out) > MAX_COMPONENT:
        import hashlib

        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        out = f"{out[:40]}-{digest}-{out[-(MAX_COMPONENT - 52):]}"
    return out or fallback


def make_run_dir(output_dir: str, base: str) -> str:
    """Create and return a new run directory ``output_dir/base[-suffix]``: never an existing one,
    even when several Meters start in the same second in one process."""
    base = safe_component(base, "run")
    os.makedirs(output_dir, exist_ok=True)
    name = base
    for _ in range(100):
        path = os.path.join(output_dir, name)
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            name = f"{base}-{secrets.token_hex(2)}"
    raise RunLogError(f"could not create a new run directory in {output_dir}")


def _clean(value: Any, depth: int = 0) -> Any:
    """JSON has no NaN or infinity, and readers no integers past the float range: write them as
    null. Containers nested deeper than 16 (or holding themselves) are cut with a marker."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        try:
            float(value)
        except OverflowError:
            return None
    if isinstance(value, dict):
        if depth > 16:
            return "<nested too deep>"
        return {str(k): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if depth > 16:
            return "<nested too deep>"
        return [_clean(v, depth + 1) for v in value]
    return value


def _json_default(o: Any) -> Any:
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "items"):
        return dict(o.items())
    return str(o)


def _json_default_safe(o: Any) -> Any:
    try:
        return _json_default(o)
    except Exception:  # noqa: BLE001 - an object whose str() raises is still a record
        return f"<unprintable {type(o).__name__}>"


def dumps(rec: dict) -> str:
    """One JSON line. A record whose tags cannot be written (an object whose text raises) keeps
    every measured figure: only the offending tags become markers."""
    clean = _clean(rec)
    try:
        return json.dumps(clean, default=_json_default, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return json.dumps(clean, default=_json_default_safe, separators=(",", ":"), allow_nan=False)


def atomic_write_json(path: str, data: Any) -> None:
    """Write ``path`` through a temporary file unique to this writer, then rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_clean(data), f, indent=2, default=_json_default, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _masked(rec: dict) -> dict:
    """A span record whose ``command`` tag (a command line) has secret-looking values masked."""
    tags = rec.get("tags")
    if isinstance(tags, dict) and isinstance(tags.get("command"), str):
        from .redact import redact

        return {**rec, "tags": {**tags, "command": redact(tags["command"])}}
    return rec


class _AppendFile:
    """One ``O_APPEND`` file with unwritten bytes kept while the disk refuses them."""

    def __init__(self, path: str, keep_bytes: int):
        self.path = path
        self.fd = os.open(path, _FLAGS, 0o644)
        self.pending = bytearray()
        self.keep_bytes = keep_bytes
        self.dropped = 0

    def append(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) > self.keep_bytes:
            # Keep whole lines: drop the oldest ones.
            cut = self.pending.find(b"\n", len(self.pending) - self.keep_bytes)
            self.dropped += self.pending[: cut + 1].count(b"\n")
            del self.pending[: cut + 1]

    def drain(self) -> None:
        """Write what is pending; raises OSError with the rest still pending."""
        while self.pending:
            n = os.write(self.fd, self.pending)
            del self.pending[:n]

    def deleted(self) -> bool:
        try:
            return os.fstat(self.fd).st_nlink == 0
        except OSError:
            return True

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class RunWriter:
    """Writes one run. Used by the sampler thread only (and by ``Meter.close`` after it stopped)."""

    def __init__(self, run_dir: str, channels: Iterable):
        self.run_dir = run_dir
        self.keys = [c.key for c in channels]
        self.fault: dict | None = None  # the first disk fault, for run.json
        self.faults = 0
        self._logged: set = set()  # one warning per cause
        self._retry_at = 0.0
        self._info: dict | None = None
        # Values of secret-named environment variables (HF_TOKEN, ...): never written to disk,
        # in whatever JSON form they would take there.
        from .redact import env_secrets

        self._secrets = env_secrets()
        self._secret_forms = sorted({f for v in self._secrets for f in (v, json.dumps(v)[1:-1])}, key=len, reverse=True)
        self._open_files()

    def _open_files(self) -> None:
        self._spans = _AppendFile(os.path.join(self.run_dir, "spans.jsonl"), 4 * PENDING_MAX_BYTES)
        self._samples = _AppendFile(os.path.join(self.run_dir, "samples.csv"), PENDING_MAX_BYTES)
        if os.fstat(self._samples.fd).st_size == 0:
            header = ["t_wall_s", "t_mono_s"] + [f"{k}:power_w" for k in self.keys] + [f"{k}:energy_j" for k in self.keys]
            self._samples.append((",".join(header) + "\n").encode())

    # -- records -------------------------------------------------------------------------------
    def write_run(self, info: dict) -> None:
        from .redact import mask_argv, redact_known

        self._info = {"schema_version": SCHEMA_VERSION, "type": "run", **info}
        if isinstance(self._info.get("argv"), (list, tuple)):  # `--token X` -> `--token ***`
            self._info["argv"] = mask_argv(self._info["argv"], self._secrets)
        safe = redact_known(self._info, self._secrets)
        self._guard(lambda: atomic_write_json(os.path.join(self.run_dir, "run.json"), safe))

    def append_spans(self, records: list[dict]) -> None:
        if records:
            body = "".join(dumps({"schema_version": SCHEMA_VERSION, "type": "span", **_masked(r)}) + "\n" for r in records)
            for form in self._secret_forms:
                body = body.replace(form, "***")
            self._spans.append(body.encode("utf-8", "surrogatepass"))

    def append_sample(self, snap) -> None:
        parts = [f"{snap.wall:.6f}", f"{snap.t:.6f}"]
        parts += [f"{p:.6g}" for p in snap.power_w]
        parts += [f"{e:.6f}" for e in snap.energy_j]
        self._samples.append((",".join(parts) + "\n").encode())

    def heartbeat(self, open_spans: list[dict], snap) -> None:
        from .redact import redact_known

        rec = {"schema_version": SCHEMA_VERSION, "type": "heartbeat", "t_wall": snap.wall,
               "updated_utc": utc_iso(snap.wall), "open": redact_known([_masked(o) for o in open_spans], self._secrets)}
        self._guard(lambda: atomic_write_json(os.path.join(self.run_dir, "heartbeat.json"), rec))

    def write_pending(self, force: bool = False) -> None:
        """Put pending records on disk (each tick). After a fault, retried every RETRY_S."""
        if self.fault is not None and not force and time.monotonic() < self._retry_at:
            return
        if self._spans.deleted():
            self._recreate()
        if self._guard(self._spans.drain) and self._guard(self._samples.drain) and self.fault is not None \
                and not self.fault.get("recovered"):
            self.fault["recovered"] = utc_iso(time.time())
            log.info("meter: the run log in %s is writable again; records kept in memory were written", self.run_dir)

    @property
    def pending_bytes(self) -> int:
        return len(self._spans.pending) + len(self._samples.pending)

    # -- faults --------------------------------------------------------------------------------
    def _guard(self, fn) -> bool:
        try:
            fn()
            return True
        except OSError as exc:
            self._disk_fault(exc)
            return False

    def _disk_fault(self, exc: OSError) -> None:
        self.faults += 1
        self._retry_at = time.monotonic() + RETRY_S
        if self.fault is not None and not self.fault.get("recovered"):
            return
        first = exc.errno not in self._logged
        self._logged.add(exc.errno)
        fix = {errno.ENOSPC: "free disk space", errno.EDQUOT: "free disk space (quota)",
               errno.EROFS: "remount it read-write or pass another output_dir",
               errno.EACCES: "make it writable or pass another output_dir"}.get(exc.errno, "check the disk")
        self.fault = {"utc": utc_iso(time.time()), "error": f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})",
                      "fix": fix}
        (log.warning if first else log.debug)(
            "meter: cannot write the run log in %s (%s); measurement continues in memory and writing is "
            "retried: %s, or set output_dir= / METER_OUTPUT_DIR to another directory", self.run_dir, exc.strerror or exc, fix)

    def _recreate(self) -> None:
        """The run directory was deleted under us: re-create it; later records go there."""
        self._disk_fault(OSError(errno.ENOENT, "the run directory was deleted during the run"))
        self._spans.close()
        self._samples.close()
        lost_spans, lost_samples = self._spans.pending, self._samples.pending
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            self._open_files()
        except OSError as exc:
            self._disk_fault(exc)
            return
        self._spans.pending[:0] = lost_spans
        self._samples.pending += lost_samples.split(b"\n", 1)[-1] if lost_samples.startswith(b"t_wall_s") else lost_samples
        if self._info is not None:
            self._info["faults_disk"] = dict(self.fault or {}, note="records written before this moment were lost "
                                             "with the deleted directory")
            self.write_run(self._info)

    def close(self, remove_heartbeat: bool = True) -> None:
        """Write what is pending (once more) and close. Never raises."""
        self.write_pending(force=True)
        for f in (self._spans, self._samples):
            if f.dropped:
                log.warning("meter: %d rows of %s could not be written and were dropped", f.dropped, f.path)
            f.close()
        if remove_heartbeat:
            try:
                os.unlink(os.path.join(self.run_dir, "heartbeat.json"))
            except OSError:
                pass

    def abandon(self) -> None:
        """In a forked child: close the descriptors (the parent's stay open); write nothing."""
        for f in (self._spans, self._samples):
            f.pending.clear()
            f.close()
