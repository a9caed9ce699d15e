"""What a crash, a disk or another version can leave in a run directory: each variant damages a
copy of a real run (tests/reliability/_runs.py) in one way and says what the reader must still
give (the spans that survive) and which problem it must report (file, and line for spans.jsonl)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

ALL = ["prepare", "epoch-1", "train", "epoch-2"]  # epoch-2: open when the process was killed
CLOSED = ["prepare", "epoch-1", "train"]


@dataclass
class Variant:
    name: str
    damage: Callable[[str], None]
    spans: list  # names that must still load, in order
    problem: str | None  # a substring of one reported problem (None: nothing to report)


def _p(d, f):
    return os.path.join(d, f)


def _lines(d):
    return open(_p(d, "spans.jsonl"), encoding="utf-8").read().splitlines()


def set_line(n: int, text: str | bytes):
    """Replace line ``n`` (1-based) of spans.jsonl with raw text or bytes."""
    def f(d):
        lines = [x.encode() for x in _lines(d)]
        lines[n - 1] = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        open(_p(d, "spans.jsonl"), "wb").write(b"\n".join(lines) + b"\n")
    return f


def edit_span(n: int, **changes):
    """Change fields of the record on line ``n``; a value of ``...`` deletes the field."""
    def f(d):
        lines = _lines(d)
        rec = json.loads(lines[n - 1])
        for k, v in changes.items():
            if v is ...:
                rec.pop(k, None)
            else:
                rec[k] = v
        lines[n - 1] = json.dumps(rec)
        open(_p(d, "spans.jsonl"), "w", encoding="utf-8").write("\n".join(lines) + "\n")
    return f


def edit_json(fname: str, fn):
    def f(d):
        data = json.load(open(_p(d, fname)))
        data = fn(data)
        open(_p(d, fname), "w").write(json.dumps(data))
    return f


def write(fname: str, content: bytes | str):
    def f(d):
        open(_p(d, fname), "wb").write(content if isinstance(content, bytes) else content.encode())
    return f


def remove(fname: str):
    return lambda d: os.unlink(_p(d, fname))


def as_dir(fname: str):
    def f(d):
        os.unlink(_p(d, fname))
        os.mkdir(_p(d, fname))
    return f


def as_fifo(fname: str):
    def f(d):
        os.unlink(_p(d, fname))
        os.mkfifo(_p(d, fname))
    return f


def run_set(key, value):
    def fn(info):
        info[key] = value
        return info
    return edit_json("run.json", fn)


def cfg_set(key, value):
    def fn(info):
        info["config"][key] = value
        return info
    return edit_json("run.json", fn)


def host_set(key, value):
    def fn(info):
        info["host"][key] = value
        return info
    return edit_json("run.json", fn)


def hb_entry(**changes):
    def fn(hb):
        for k, v in changes.items():
            if v is ...:
                hb["open"][0].pop(k, None)
            else:
                hb["open"][0][k] = v
        return hb
    return edit_json("heartbeat.json", fn)


def append_sample_rows(text: str):
    def f(d):
        with open(_p(d, "samples.csv"), "ab") as fh:
            fh.write(text.encode("latin-1") if isinstance(text, str) else text)
    return f


def chain(*fns):
    def f(d):
        for fn in fns:
            fn(d)
    return f


SP1 = "spans.jsonl:1:"  # the line of "prepare"
NOT_PREPARE = ["epoch-1", "train", "epoch-2"]
RUNJSON = "run.json"
HB = "heartbeat.json"
SAMPLES = "samples.csv"

VARIANTS = [
    # -- spans.jsonl: the cases -----------------------------------------------------
    Variant("span-empty-object", set_line(1, "{}"), NOT_PREPARE, SP1),
    Variant("span-schema-version-string", edit_span(1, schema_version="1"), NOT_PREPARE, SP1),
    Variant("span-counts-list", edit_span(1, counts=[1, 2]), NOT_PREPARE, SP1),
    Variant("span-tags-string", edit_span(1, tags="model=tiny"), NOT_PREPARE, SP1),
    Variant("span-energy-string", edit_span(1, energy_j="12 J"), NOT_PREPARE, SP1),
    Variant("span-start-yesterday", edit_span(1, start_utc="yesterday"), NOT_PREPARE, SP1),
    # -- spans.jsonl: more ------------------------------------------------------------------
    Variant("span-end-yesterday", edit_span(1, end_utc="yesterday"), NOT_PREPARE, SP1),
    Variant("span-start-number", edit_span(1, start_utc=1796247334), NOT_PREPARE, SP1),
    Variant("span-truncated-line", set_line(1, '{"schema_version":1,"type":"span","name":"prep'), NOT_PREPARE, SP1),
    Variant("span-nul-bytes", set_line(1, b"\x00" * 4096), NOT_PREPARE, SP1),
    Variant("span-invalid-utf8", set_line(1, b'{"name": "\xff\xfe", "x": '), NOT_PREPARE, SP1),
    Variant("span-json-array", set_line(1, "[1, 2, 3]"), NOT_PREPARE, SP1),
    Variant("span-json-null", set_line(1, "null"), NOT_PREPARE, SP1),
    Variant("span-json-string", set_line(1, '"span"'), NOT_PREPARE, SP1),
    Variant("span-deep-nesting", set_line(1, "[" * 100_000 + "]" * 100_000), NOT_PREPARE, SP1),
    Variant("span-deep-nesting-tags", set_line(1, '{"span_id": 1, "name": "a", "path": "a", "tags": {"x": '
                                               + "[" * 50_000 + "]" * 50_000 + "}}"), NOT_PREPARE, SP1),
    Variant("span-nan-literal", edit_span(1, energy_j=float("nan")), NOT_PREPARE, SP1),
    Variant("span-infinity-literal", edit_span(1, duration_s=float("inf")), NOT_PREPARE, SP1),
    # A bad count costs the count, not the span's measured energy.
    Variant("span-huge-int-flops", lambda d: set_line(1, _lines(d)[0].replace('"counts":{', '"counts":{"flops":' + "9" * 400 + ","))(d),
            ALL, SP1),
    Variant("span-huge-int-energy", lambda d: set_line(1, _lines(d)[0].replace('"energy_j":', '"energy_j":' + "9" * 400 + ',"x":', 1))(d),
            NOT_PREPARE, SP1),
    Variant("span-id-string", edit_span(1, span_id="1"), NOT_PREPARE, SP1),
    Variant("span-id-bool", edit_span(1, span_id=True), NOT_PREPARE, SP1),
    Variant("span-id-negative", edit_span(1, span_id=-5), NOT_PREPARE, SP1),
    Variant("span-parent-string", edit_span(1, parent_id="root"), NOT_PREPARE, SP1),
    Variant("span-depth-string", edit_span(1, depth="0"), NOT_PREPARE, SP1),
    Variant("span-depth-huge", edit_span(1, depth=10**9), NOT_PREPARE, SP1),
    Variant("span-name-number", edit_span(1, name=42), NOT_PREPARE, SP1),
    Variant("span-name-missing", edit_span(1, name=...), NOT_PREPARE, SP1),
    Variant("span-path-null", edit_span(1, path=None), NOT_PREPARE, SP1),
    Variant("span-duration-negative", edit_span(1, duration_s=-3.0), NOT_PREPARE, SP1),
    Variant("span-duration-string", edit_span(1, duration_s="3 s"), NOT_PREPARE, SP1),
    Variant("span-components-list", edit_span(1, energy_by_component=[["cpu", 1.0]]), NOT_PREPARE, SP1),
    Variant("span-component-energy-string", edit_span(1, energy_by_component={"cpu": {"energy_j": "1", "provenance": "counter"}}),
            NOT_PREPARE, SP1),
    Variant("span-component-not-object", edit_span(1, energy_by_component={"cpu": 12.0}), NOT_PREPARE, SP1),
    Variant("span-devices-string", edit_span(1, devices="gpu:0"), NOT_PREPARE, SP1),
    Variant("span-device-corrected-string", edit_span(1, devices={"cpu:estimate": {"energy_j": 1.0, "corrected": "no"}}),
            NOT_PREPARE, SP1),
    Variant("span-peaks-strings", edit_span(1, peak_power_by_component_w={"cpu": "high"}), NOT_PREPARE, SP1),
    Variant("span-counts-string-value", edit_span(1, counts={"samples": "64"}), ALL, SP1),
    Variant("span-counts-negative", edit_span(1, counts={"samples": -64}), ALL, SP1),
    Variant("span-tag-deep", edit_span(1, tags={"ok": 1, "deep": [[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]}), ALL, SP1),
    Variant("span-warnings-string", edit_span(1, warnings="careful"), NOT_PREPARE, SP1),
    Variant("span-warnings-numbers", edit_span(1, warnings=[1, 2]), NOT_PREPARE, SP1),
    Variant("span-status-unknown", edit_span(1, status="exploded"), NOT_PREPARE, SP1),
    Variant("span-type-heartbeat", edit_span(1, type="heartbeat"), NOT_PREPARE, SP1),
    Variant("span-newer-schema", edit_span(1, schema_version=99), NOT_PREPARE, "newer than this meter reads"),
    Variant("span-duplicate-id", lambda d: open(_p(d, "spans.jsonl"), "a").write(_lines(d)[0] + "\n"), ALL,
            "spans.jsonl:4: duplicate of span"),
    Variant("span-self-parent", lambda d: edit_span(1, parent_id=json.loads(_lines(d)[0])["span_id"])(d), ALL,
            "its own ancestor"),
    Variant("span-parent-cycle", lambda d: chain(
        edit_span(2, parent_id=json.loads(_lines(d)[2])["span_id"]),
        edit_span(3, parent_id=json.loads(_lines(d)[1])["span_id"]))(d), ALL, "its own ancestor"),
    Variant("span-parent-missing", edit_span(1, parent_id=999), ALL, None),
    Variant("spans-file-missing", remove("spans.jsonl"), ["epoch-2"], None),
    Variant("spans-file-empty", write("spans.jsonl", b""), ["epoch-2"], None),
    Variant("spans-file-a-directory", as_dir("spans.jsonl"), ["epoch-2"], "spans.jsonl: not a regular file"),
    Variant("spans-file-a-fifo", as_fifo("spans.jsonl"), ["epoch-2"], "spans.jsonl: not a regular file"),
    Variant("spans-file-zero-tail", lambda d: open(_p(d, "spans.jsonl"), "ab").write(b"\x00" * 8192), ALL,
            "spans.jsonl:4: corrupt line"),
    Variant("spans-file-garbage", write("spans.jsonl", os.urandom(0) + bytes(range(256)) * 64), ["epoch-2"], "spans.jsonl:"),
    # -- run.json ---------------------------------------------------------------------------
    Variant("run-json-array", write("run.json", "[]"), ALL, RUNJSON),
    Variant("run-json-null", write("run.json", "null"), ALL, RUNJSON),
    Variant("run-json-empty", write("run.json", b""), ALL, RUNJSON),
    Variant("run-json-truncated", lambda d: write("run.json", open(_p(d, "run.json"), "rb").read()[:300])(d), ALL, RUNJSON),
    Variant("run-json-nul", write("run.json", b"\x00" * 2048), ALL, RUNJSON),
    Variant("run-json-invalid-utf8", write("run.json", b'{"run_id": "\xff"}'), ALL, RUNJSON),
    Variant("run-json-deep", write("run.json", "{\"x\": " + "[" * 100_000 + "]" * 100_000 + "}"), ALL, RUNJSON),
    Variant("run-json-a-directory", as_dir("run.json"), ALL, "run.json: not a regular file"),
    Variant("run-json-a-fifo", as_fifo("run.json"), ALL, "run.json: not a regular file"),
    Variant("run-json-nan", run_set("interval_s", float("nan")), ALL, RUNJSON),
    Variant("run-config-list", run_set("config", ["FR"]), ALL, "'config'"),
    Variant("run-pue-string", cfg_set("pue", "1.2"), ALL, "'config'"),
    Variant("run-pue-below-one", cfg_set("pue", 0.5), ALL, "'config'"),
    Variant("run-pue-null", cfg_set("pue", None), ALL, "config.pue is null"),
    Variant("run-region-number", cfg_set("region", 33), ALL, "'config'"),
    Variant("run-region-unknown", cfg_set("region", "Atlantis"), ALL, "no carbon intensity"),
    Variant("run-host-string", run_set("host", "vm"), ALL, "'host'"),
    Variant("run-host-gpus-dict", host_set("gpus", {"0": "H100"}), ALL, "'host'"),
    Variant("run-host-gpu-string", host_set("gpus", ["H100"]), ALL, "'host'"),
    Variant("run-host-ram-string", host_set("ram_gb", "lots"), ALL, "'host'"),
    Variant("run-channels-dict", run_set("channels", {"cpu": 1}), ALL, "'channels'"),
    Variant("run-channel-without-key", run_set("channels", [{"component": "cpu"}]), ALL, "'channels'"),
    Variant("run-started-yesterday", run_set("started_utc", "yesterday"), ALL, "'started_utc'"),
    Variant("run-ended-number", run_set("ended_utc", 12), ALL, "'ended_utc'"),
    Variant("run-id-number", run_set("run_id", 7), ALL, "'run_id'"),
    Variant("run-id-list", run_set("run_id", ["a"]), ALL, "'run_id'"),
    Variant("run-notes-string", run_set("notes", "hello"), ALL, "'notes'"),
    Variant("run-faults-dict", run_set("faults", {"gpu": "bad"}), ALL, "'faults'"),
    Variant("run-unavailable-strings", run_set("unavailable", ["nvml"]), ALL, "'unavailable'"),
    Variant("run-distributed-string", run_set("distributed", "yes"), ALL, "'distributed'"),
    Variant("run-world-size-string", run_set("distributed", {"rank": 0, "world_size": "2", "job_id": "j"}), ALL, "'distributed'"),
    Variant("run-job-id-number", run_set("distributed", {"rank": 0, "world_size": 2, "job_id": 7}), ALL, "'distributed'"),
    Variant("run-owned-gpus-string", run_set("distributed", {"rank": 0, "world_size": 2, "owned_gpus": "GPU-a"}), ALL, "'distributed'"),
    Variant("run-gpu-owner-string", run_set("distributed", {"rank": 1, "world_size": 2, "gpu_owners": {"GPU-a": "0"}}), ALL, "'distributed'"),
    Variant("run-ownership-method-unknown", run_set("distributed", {"rank": 0, "world_size": 2, "ownership_method": "psychic"}), ALL, "'distributed'"),
    Variant("run-owns-host-string", run_set("distributed", {"rank": 0, "world_size": 2, "owns_host_sensors": "yes"}), ALL, "'distributed'"),
    Variant("run-interval-negative", run_set("interval_s", -1), ALL, "'interval_s'"),
    Variant("run-schema-string", run_set("schema_version", "1"), ALL, RUNJSON),
    Variant("run-schema-newer", run_set("schema_version", 99), ALL, "newer than this meter reads"),
    # -- heartbeat.json ---------------------------------------------------------------------
    Variant("heartbeat-entry-without-start-t", hb_entry(start_t=...), CLOSED, HB),
    Variant("heartbeat-start-t-string", hb_entry(start_t="now"), CLOSED, HB),
    Variant("heartbeat-start-energy-string", hb_entry(start_energy_j="0"), CLOSED, HB),
    Variant("heartbeat-start-energy-strings", hb_entry(start_energy_j=["0", "1"]), CLOSED, HB),
    Variant("heartbeat-span-id-string", hb_entry(span_id="4"), CLOSED, HB),
    Variant("heartbeat-counts-list", hb_entry(counts=[1]), CLOSED, HB),
    Variant("heartbeat-tags-string", hb_entry(tags="x"), CLOSED, HB),
    Variant("heartbeat-start-utc-bad", hb_entry(start_utc="soon"), CLOSED, HB),
    Variant("heartbeat-name-null", hb_entry(name=None), CLOSED, HB),
    Variant("heartbeat-entry-not-object", edit_json("heartbeat.json", lambda hb: {**hb, "open": [7]}), CLOSED, HB),
    Variant("heartbeat-open-not-list", edit_json("heartbeat.json", lambda hb: {**hb, "open": "epoch-2"}), CLOSED, HB),
    Variant("heartbeat-array", write("heartbeat.json", "[]"), CLOSED, HB),
    Variant("heartbeat-truncated", lambda d: write("heartbeat.json", open(_p(d, "heartbeat.json"), "rb").read()[:40])(d), CLOSED, HB),
    Variant("heartbeat-nul", write("heartbeat.json", b"\x00" * 100), CLOSED, HB),
    Variant("heartbeat-a-fifo", as_fifo("heartbeat.json"), CLOSED, HB),
    Variant("heartbeat-future-start", hb_entry(start_t=1e12), ALL, None),
    # -- samples.csv ------------------------------------------------------------------------
    Variant("samples-garbage-rows", append_sample_rows("garbage,,,\n1,2,three,4,5,6\n"), ALL, "samples.csv: 2 malformed"),
    Variant("samples-nul-bytes", append_sample_rows(b"\x00" * 5000), ALL, "samples.csv: 1 malformed"),
    Variant("samples-header-only", lambda d: write("samples.csv", open(_p(d, "samples.csv")).readline())(d), ALL, None),
    Variant("samples-missing", remove("samples.csv"), ALL, None),
    Variant("samples-empty", write("samples.csv", b""), ALL, "samples.csv: no valid header"),
    Variant("samples-bad-header", write("samples.csv", "a,b,c\n1,2,3\n"), ALL, "samples.csv: no valid header"),
    Variant("samples-duplicate-header", lambda d: write("samples.csv", "t_wall_s,t_mono_s,x,x\n")(d), ALL, "no valid header"),
    Variant("samples-inf-nan-text", append_sample_rows("inf,nan,1,1,1,1\n"), ALL, "samples.csv: 1 malformed"),
    Variant("samples-time-backwards", append_sample_rows("1,1,1,1,1,1\n"), ALL, "samples.csv: 1 malformed"),
    Variant("samples-invalid-utf8", append_sample_rows(b"\xff\xfe,\xc3\n"), ALL, "samples.csv"),
    Variant("samples-a-directory", as_dir("samples.csv"), ALL, "samples.csv: not a regular file"),
    Variant("samples-a-fifo", as_fifo("samples.csv"), ALL, "samples.csv: not a regular file"),
    # -- several at once --------------------------------------------------------------------
    Variant("everything-at-once", chain(set_line(1, "{}"), write("run.json", "null"), hb_entry(start_t=...),
                                        append_sample_rows(b"\x00\x00")), ["epoch-1", "train"], SP1),
]
