"""Property tests of the reader: any JSON value in any field of a span record, any bytes on a
line, any JSON in run.json and the heartbeat: meter.load never raises; a record is either loaded
with the right types or skipped and reported with its file and line; every card renders."""

from __future__ import annotations

import json
import os
import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meter
from meter.report import cards
from meter.runread import read_run

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

SPAN_FIELDS = ["name", "path", "span_id", "parent_id", "depth", "run_id", "start_utc", "end_utc", "duration_s", "energy_j",
               "measured_energy_j", "estimated_energy_j", "energy_by_component", "devices", "avg_power_w", "peak_power_w",
               "peak_power_by_component_w", "counts", "tags", "interval_s", "warnings", "thread", "status", "schema_version", "type"]
RUN_FIELDS = ["run_id", "run_name", "started_utc", "ended_utc", "config", "channels", "unavailable", "notes", "interval_s",
              "host", "faults", "distributed", "schema_version"]
HB_FIELDS = ["span_id", "name", "path", "parent_id", "depth", "start_utc", "start_t", "start_energy_j", "counts", "tags"]

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _fresh(pristine_run, tmp_path, tag):
    d = os.path.join(str(tmp_path), tag)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(pristine_run, d)
    return d


def _render_all(d):
    for fmt in ("md", "json", "latex", "climate", "hf"):
        assert cards.render_paths(d, fmt=fmt, live=False)


@_SETTINGS
@given(field=st.sampled_from(SPAN_FIELDS), value=json_values)
def test_any_value_in_any_span_field(pristine_run, tmp_path, field, value):
    d = _fresh(pristine_run, tmp_path, "span")
    path = os.path.join(d, "spans.jsonl")
    lines = open(path).read().splitlines()
    rec = json.loads(lines[0])
    orig_id = rec["span_id"]
    rec[field] = value
    lines[0] = json.dumps(rec)
    open(path, "w").write("\n".join(lines) + "\n")
    run = read_run(d)
    want_name = value if field == "name" else "prepare"
    want_id = value if field == "span_id" else orig_id
    loaded = [x for x in run.spans if x.get("name") == want_name and x.get("span_id") == want_id]
    reported = [p for p in run.problems if "spans.jsonl:1:" in p]
    salvaged = [p for p in reported if p.endswith("dropped, the span kept")]
    if salvaged:
        # A bad count or tag costs that value, not the span: kept, and each value dropped is reported.
        assert field in ("counts", "tags") and loaded and len(salvaged) == len(reported)
        kept = loaded[0][field]
        assert isinstance(kept, dict) and set(kept) < set(value)
    else:
        assert bool(loaded) != bool(reported)  # loaded, or skipped and reported with its line: never both, never neither
    for x in loaded:
        assert isinstance(x["name"], str) and isinstance(x["depth"], int) and isinstance(x["start_utc"], str)
    df = meter.load(d, live=False)
    assert len(df) in (3, 4)
    _render_all(d)


@_SETTINGS
@given(line=st.binary(max_size=300))
def test_any_bytes_on_a_line(pristine_run, tmp_path, line):
    d = _fresh(pristine_run, tmp_path, "bytes")
    path = os.path.join(d, "spans.jsonl")
    raw = open(path, "rb").read().split(b"\n")
    raw[0] = line.replace(b"\n", b" ")
    open(path, "wb").write(b"\n".join(raw))
    df = meter.load(d, live=False)
    assert sorted(df["name"]) == ["epoch-1", "epoch-2", "train"]
    blank = not line.replace(b"\n", b" ").decode("utf-8", "replace").strip()
    assert blank or any("spans.jsonl:1:" in p for p in df.attrs["problems"])
    _render_all(d)


@_SETTINGS
@given(field=st.sampled_from(RUN_FIELDS), value=json_values)
def test_any_value_in_any_run_json_field(pristine_run, tmp_path, field, value):
    d = _fresh(pristine_run, tmp_path, "run")
    path = os.path.join(d, "run.json")
    info = json.load(open(path))
    info[field] = value
    open(path, "w").write(json.dumps(info))
    df = meter.load(d, live=False)
    assert len(df) == 4
    _render_all(d)


@_SETTINGS
@given(field=st.sampled_from(HB_FIELDS), value=json_values)
def test_any_value_in_any_heartbeat_field(pristine_run, tmp_path, field, value):
    d = _fresh(pristine_run, tmp_path, "hb")
    path = os.path.join(d, "heartbeat.json")
    hb = json.load(open(path))
    hb["open"][0][field] = value
    open(path, "w").write(json.dumps(hb))
    df = meter.load(d, live=False)
    assert len(df) in (3, 4)
    if len(df) == 3:
        assert any("heartbeat.json: open span 0 skipped" in p for p in df.attrs["problems"])
    _render_all(d)
