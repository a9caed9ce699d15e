"""Promise 1: readers never crash on what a crash, a disk or another version can leave.

Every variant of corrupt_variants.py damages a copy of a real run (written by a real Meter and
SIGKILLed mid-span). The reader must load the spans that are intact, report the damage with its
file (and line), and every renderer and ``meter report`` must still produce a report: exit 0
with a problems section, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import meter
from meter import cli
from meter.report import cards, escape

from ._runs import copy_run
from .corrupt_variants import ALL, VARIANTS

FAST_FORMATS = ("md", "json", "latex", "climate", "hf")


@pytest.fixture
def damaged(request, pristine_run, tmp_path):
    v = request.param
    d = copy_run(pristine_run, str(tmp_path), "run")
    v.damage(d)
    return v, d


def test_pristine_run_reads_clean(pristine_run):
    df = meter.load(pristine_run, live=False)
    assert df["name"].tolist() == ALL and df.attrs["problems"] == []
    assert df.set_index("name").loc["epoch-2", "status"] == "incomplete"


@pytest.mark.parametrize("damaged", VARIANTS, ids=[v.name for v in VARIANTS], indirect=True)
def test_reader_skips_and_reports(damaged, caplog):
    v, d = damaged
    df = meter.load(d, live=False)
    assert sorted(df["name"].tolist()) == sorted(v.spans)
    problems = df.attrs["problems"]
    if v.problem is None:
        assert all("spans.jsonl" not in p for p in problems), problems
    else:
        assert any(v.problem in p for p in problems), problems
        # every problem names its file
        assert all(os.path.basename(d) in p or "carbon" in p for p in problems), problems
    for fmt in FAST_FORMATS:
        text = cards.render_paths(d, fmt=fmt, live=False)
        assert isinstance(text, str) and text
    md = cards.render_paths(d, fmt="md", live=False)
    assert ("# Problems reading the run logs" in md) == bool(problems)
    for p in problems:  # each problem listed, as text
        assert f"- {escape.md(p, block=True)}\n" in md
    card = json.loads(cards.render_paths(d, fmt="json", live=False))
    assert card["problems"] == problems


@pytest.mark.parametrize("damaged", VARIANTS, ids=[v.name for v in VARIANTS], indirect=True)
def test_cli_report_exits_0(damaged, capsys):
    v, d = damaged
    assert cli.main(["report", d, "--offline"]) == 0
    out = capsys.readouterr()
    assert "Efficiency card" in out.out and "Traceback" not in out.err


def test_meter_report_subprocess_every_variant_at_once(pristine_run, tmp_path):
    """One output directory with a damaged copy of the run per variant and one intact copy:
    `meter report` in every format exits 0, without a traceback, with every run in it."""
    out = tmp_path / "runs"
    out.mkdir()
    copy_run(pristine_run, str(out), "000-intact")
    for k, v in enumerate(VARIANTS):
        v.damage(copy_run(pristine_run, str(out), f"{k + 1:03d}-{v.name}"))
    exe = os.path.join(os.path.dirname(sys.executable), "meter")
    for fmt in ("md", "json", "html", "latex", "climate", "hf"):
        p = subprocess.run([exe, "report", str(out), "--offline", "--format", fmt, "-o", str(tmp_path / f"r.{fmt}")],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "Traceback" not in p.stderr
    card = json.loads((tmp_path / "r.json").read_text())
    assert len(card["runs"]) == len(VARIANTS) + 1
    md = (tmp_path / "r.md").read_text()
    assert "Problems" in md
    for v in VARIANTS:
        if v.problem:
            assert f"-{v.name}" in md, v.name
    html = (tmp_path / "r.html").read_text()
    assert html.count("<h2 id=\"run-") == len(VARIANTS) + 1 or html.count('id="run-') >= len(VARIANTS) + 1


def test_copies_of_a_run_keep_their_own_spans(pristine_run, tmp_path):
    """`cp -r run run-backup` gives two runs with one run_id: each card has its own four stages
    (before: the model mixed them by run_id, and a damaged copy's parent cycle made it loop
    until the kernel killed it at 24 GB)."""
    a = copy_run(pristine_run, str(tmp_path), "run")
    b = copy_run(pristine_run, str(tmp_path), "run-backup")
    VARIANTS[[v.name for v in VARIANTS].index("span-parent-cycle")].damage(b)
    card = json.loads(cards.render_paths([a, b], fmt="json", live=False))
    assert [len(r["stages"]) for r in card["runs"]] == [4, 4]
    assert sum("its own ancestor" in p for p in card["problems"]) == 1


@pytest.mark.parametrize("args,why", [
    (["{tmp}/nothing-here"], "does not exist"),
    (["{tmp}/empty"], "no meter runs"),
    (["{run}", "-o", "{tmp}/no/such/dir/card.md"], "cannot write"),
])
def test_meter_report_exits_2_with_one_line(args, why, pristine_run, tmp_path):
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, run=pristine_run) for a in args]
    exe = os.path.join(os.path.dirname(sys.executable), "meter")
    p = subprocess.run([exe, "report", *argv, "--offline"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("meter: ")]
    assert len(lines) == 1 and why in lines[0], p.stderr


def test_meter_report_in_an_ascii_locale_writes_any_name(tmp_path):
    from meter.testing import FakeSensor

    m = meter.Meter(sensors=[FakeSensor.counter()], output_dir=str(tmp_path / "runs"), region="FR")
    with m.track("\u8bad\u7ec3 \U0001f600 lone \ud800"):
        pass
    m.close()
    exe = os.path.join(os.path.dirname(sys.executable), "meter")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "ascii", "PYTHONUTF8": "0"}
    p = subprocess.run([exe, "report", m.run_dir, "--offline"], capture_output=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert "\u8bad\u7ec3 \U0001f600 lone \ufffd".encode() in p.stdout
    p = subprocess.run([exe, "report", m.run_dir, "--offline", "-o", str(tmp_path / "c.md")], capture_output=True,
                       env=env, timeout=120)
    assert p.returncode == 0 and "\u8bad\u7ec3" in (tmp_path / "c.md").read_text(encoding="utf-8")


def test_stages_nested_thousands_deep_render(tmp_path):
    """Recursive code measured with meter.track nests as deep as it recurses: 2,000 levels,
    every format (before: RecursionError in the card model, `meter report` failed)."""
    from meter.testing import FakeSensor

    s = FakeSensor.counter()
    m = meter.Meter(sensors=[s], output_dir=str(tmp_path), region="FR")
    tracks = []
    for i in range(2000):
        t = m.track(f"step-{i}" if i else "train", samples=1 if i == 1999 else None)
        t.__enter__()
        tracks.append(t)
        s.values["gpu:0"] += 1.0
    for t in reversed(tracks):
        t.__exit__(None, None, None)
    m.close()
    card = json.loads(cards.render_paths(m.run_dir, fmt="json", live=False))
    stages = card["runs"][0]["stages"]
    assert len(stages) == 2000 and {st["kind"] for st in stages} == {"train"}
    assert stages[0]["samples"] == 1 and stages[0]["counts_from_children"] == ["samples"]
    for fmt in ("md", "latex", "climate", "hf", "html"):
        assert cli.main(["report", m.run_dir, "--offline", "--format", fmt, "-o", str(tmp_path / f"c.{fmt}")]) == 0
