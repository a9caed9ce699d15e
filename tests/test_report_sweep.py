"""Reports of a sweep: the overview (one row per run, metric tags, Pareto frontier, baseline),
distinct titles, one energy unit per table, the Sensors and assumptions section, the notebook
view, and the 6-run HTML report in headless Chromium with a screenshot."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import meter
from meter.report import cards, model, render
from meter.testing import FakeClock, FakeSensor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (run name, model, seq_len, GPU watts, seconds, accuracy): energy = W x s exactly.
SWEEP = [
    ("small-seq16", "small", 16, 100.0, 10.0, 0.70),   # 1000 J
    ("small-seq48", "small", 48, 100.0, 20.0, 0.80),   # 2000 J
    ("small-seq128", "small", 128, 100.0, 40.0, 0.78),  # 4000 J, dominated by small-seq48
    ("base-seq16", "base", 16, 150.0, 10.0, 0.72),     # 1500 J
    ("base-seq48", "base", 48, 150.0, 20.0, 0.86),     # 3000 J
    ("base-seq128", "base", 128, 150.0, 40.0, 0.85),   # 6000 J, dominated by base-seq48
]
FRONT = {"small-seq16", "base-seq16", "small-seq48", "base-seq48"}


def fake_run(out, name, size, seq_len, watts, seconds, acc, *, wall):
    clock = FakeClock(wall=wall)
    gpu, cpu = FakeSensor.counter("gpu:0", "gpu"), FakeSensor.counter("cpu:0", "cpu")
    with meter.Meter(region="FR", pue=1.2, output_dir=str(out), sensors=[gpu, cpu], clock=clock, interval_s=3600,
                     run_name=name) as m:
        tags = {"model": size, "seq_len": seq_len, "optimizer": "adamw"}
        with m.track("finetune", samples=1000, tags=tags):
            gpu.values["gpu:0"] += watts * seconds * 0.8
            cpu.values["cpu:0"] += watts * seconds * 0.2
            clock.advance(seconds)
        with m.track("evaluate", samples=100, tags=tags) as ev:
            ev.tags["metric.accuracy"] = acc
        return m.run_dir


@pytest.fixture
def sweep(tmp_path):
    out = tmp_path / "sweep"
    return [fake_run(out, *row, wall=1_790_000_000.0 + 100 * k) for k, row in enumerate(SWEEP)]


def test_overview_rows_pareto_and_baseline(sweep):
    card = model.build(sweep, live=False, baseline="small-seq48")
    sw = card["sweep"]
    assert sw["metric"] == "accuracy" and sw["maximize"] is True
    rows = {r["title"]: r for r in sw["rows"]}
    assert set(rows) == {s[0] for s in SWEEP}
    for name, _, _, watts, seconds, acc in SWEEP:
        r = rows[name]
        assert r["energy_j"] == pytest.approx(watts * seconds)
        assert r["emissions_g"] == pytest.approx(watts * seconds / 3.6e6 * 1.2 * 56.039, rel=1e-3)  # France, PUE 1.2
        assert r["metric"] == acc
        assert r["energy_ratio"] == pytest.approx(watts * seconds / 2000.0)
        assert r["metric_delta"] == pytest.approx(acc - 0.80)
    assert {t for t, r in rows.items() if r["pareto"]} == FRONT
    assert rows["small-seq48"]["is_baseline"] and sum(r["is_baseline"] for r in rows.values()) == 1
    # parameters that vary are columns; the one that does not is said once
    assert sw["param_keys"] == ["model", "seq_len"] and sw["constant_params"] == {"optimizer": "adamw"}
    # a lower-is-better metric flips the frontier: the worst accuracies at the lowest energy win
    low = model.build(sweep, live=False, maximize=False)["sweep"]
    assert {r["title"] for r in low["rows"] if r["pareto"]} == {"small-seq16"}


def test_markdown_opens_with_the_overview(sweep):
    text = cards.render_paths(sweep, live=False, baseline="small-seq48")
    first = text.split("\n## ")[0]
    assert first.startswith("# Sweep overview: 6 runs")
    head = next(ln for ln in first.splitlines() if ln.startswith("| run"))
    assert head == "| run | model | seq_len | energy (J) | x baseline | gCO2eq | time (s) | accuracy | accuracy vs baseline | Pareto |"
    line = next(ln for ln in first.splitlines() if ln.startswith("| base-seq48"))
    assert line.split(" | ")[3:6] == ["3,000", "1.5", "0.056"] and line.endswith("| 0.86 | +0.06 | yes |")
    assert "| small-seq48 (baseline) |" in first and "Same in every run: optimizer adamw." in first
    assert first.count("| yes |") == 4
    # the per-run detail follows, each run once
    assert [m for m in re.findall(r"^## Efficiency card: (.+)$", text, re.M)] == [s[0] for s in SWEEP]
    assert text.count("### Sensors and assumptions") == 6


def test_no_metric_says_how_to_log_one_and_an_unknown_metric_is_refused(tmp_path):
    out = tmp_path / "r"
    dirs = []
    for k in range(2):
        with meter.Meter(region="FR", output_dir=str(out), sensors=[FakeSensor.counter()], clock=FakeClock(wall=1.79e9 + k),
                         interval_s=3600, run_name="same-name") as m:
            with m.track("train"):
                pass
            dirs.append(m.run_dir)
    card = model.build(dirs, live=False)
    titles = [r["title"] for r in card["runs"]]
    assert len(set(titles)) == 2 and all(t.startswith("same-name (") for t in titles)  # runs sharing a name
    md = render.markdown(card)
    assert "No quality metric is logged: tag a stage with metric.NAME" in md and "Pareto" not in md.split("\n## ")[0].split("\n")[2]
    with pytest.raises(meter.ConfigError, match="metric 'f1' is on no stage"):
        model.build(dirs, live=False, metric="f1")


def test_one_energy_unit_per_table():
    assert render.energy_unit([10.0, 2e5]) == ("J", 1.0)
    assert render.energy_unit([10.0, 4e5]) == ("kWh", 3.6e6)
    run = {"stages": [{"name": "big", "depth": 0, "status": "complete", "kind": "train", "duration_s": 3600.0,
                       "energy_j": 7.2e6, "components": {"gpu": {"energy_j": 7.2e6, "provenance": "counter"}},
                       **{k: None for k in ("avg_power_w", "peak_power_w", "emissions_g", "samples_per_s", "tokens_per_s",
                                            "energy_per_sample_j", "energy_per_1k_tokens_j", "flops_per_j")}}]}
    head, row = render.stage_head(run), render.stage_rows(run)[0]
    assert head[3:5] == ["energy (kWh)", "GPU (kWh)"] and row[3:5] == ["2", "2 ctr"]


def test_sensors_and_assumptions_name_the_estimate(tmp_path):
    # The real CLI on this machine: where a CPU is estimated, its TDP and per-thread power are in
    # the card, and the legend's pointer leads to that section.
    out = tmp_path / "runs"
    p = subprocess.run([sys.executable, "-m", "meter", "run", "--region", "SE3", "--pue", "1.3", "--output", str(out), "-q",
                        "--", sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "METER_GPUS": "none"})
    assert p.returncode == 0, p.stderr
    text = cards.render_paths(str(out), live=False)
    section = text.split("## Sensors and assumptions")[1]
    assert "assumptions under Sensors and assumptions" in text
    assert "PUE 1.3 (from argument)" in section and "grid intensity:" in section and "SE3" in section
    info = json.load(open(os.path.join(meter.load(str(out))["run_dir"].iloc[0], "run.json")))
    for c in info["channels"]:
        d = c.get("details") or {}
        if d.get("tdp_w"):
            assert f"TDP {render.fmt(d['tdp_w'])} W" in section and d["tdp_source"] in section
            assert f"{render.fmt(d['tdp_w'] / d['logical_cpus'])} W per busy logical CPU" in section


def test_report_object_in_a_notebook(sweep):
    rep = cards.report(sweep, live=False)
    page = rep._repr_html_()
    assert page.startswith("<table>") and page.count("<tr>") == 7 and "base-seq48" in page
    one = cards.report(sweep[0], live=False)._repr_html_()
    assert "finetune" in one and "evaluate" in one and "energy (J)" in one
    assert repr(rep).startswith("<Report 6 run(s)")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"]

# Loaded beside the report (same folder, file access allowed): measures the page as laid out and
# writes the result into its own DOM, which --dump-dom returns.
PROBE = """<!DOCTYPE html><html><body><iframe id="f" src="report.html" style="width:1300px;height:900px"></iframe>
<pre id="out">pending</pre><script>
document.getElementById('f').onload = function () {
  var d = this.contentDocument, res = {};
  res.overviewRows = d.querySelectorAll('table.overview tbody tr').length;
  res.paretoRows = d.querySelectorAll('table.overview tbody tr.pareto').length;
  res.baselineRows = d.querySelectorAll('table.overview tbody tr.baseline').length;
  res.images = Array.prototype.map.call(d.images, function (i) { return i.naturalWidth; });
  var wrapped = [];
  d.querySelectorAll('td').forEach(function (td) {
    var lh = parseFloat(d.defaultView.getComputedStyle(td).lineHeight) || 20;
    if (td.closest('table.meta') === null && td.clientHeight > 1.6 * lh) wrapped.push(td.textContent);
  });
  res.wrapped = wrapped;
  var a = d.querySelector('a[href^="#sensors-"]');
  res.legendTarget = a ? (d.getElementById(a.getAttribute('href').slice(1)) || {}).textContent : null;
  res.firstH2 = d.querySelector('h2').textContent;
  document.getElementById('out').textContent = JSON.stringify(res);
};
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason=".ci/run installs Debian's chromium; run it to get this test")
def test_six_run_sweep_report_in_headless_chromium(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    out = tmp_path / "sweep"
    ex = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tradeoff_sweep.py"), "--steps", "4", "--output", str(out)],
                        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert ex.returncode == 0, ex.stderr[-3000:]
    page = tmp_path / "report.html"
    p = subprocess.run([sys.executable, "-m", "meter", "report", str(out), "--format", "html", "--offline", "--metric", "accuracy",
                        "--baseline", "small-seq16", "-o", str(page)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    (tmp_path / "probe.html").write_text(PROBE)
    prof = f"--user-data-dir={tmp_path / 'profile'}"
    shot = tmp_path / "sweep.png"
    r = subprocess.run([CHROMIUM, *FLAGS, prof, "--window-size=1300,1800", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 50_000, r.stderr[-2000:]
    if os.environ.get("METER_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["METER_KEEP_SCREENSHOT"])
    dom = subprocess.run([CHROMIUM, *FLAGS, prof, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                          (tmp_path / "probe.html").as_uri()], capture_output=True, text=True, timeout=120)
    got = json.loads(re.search(r'<pre id="out">(.*?)</pre>', dom.stdout, re.S).group(1).replace("&quot;", '"'))
    assert got["firstH2"] == "Overview: 6 runs"
    assert got["overviewRows"] == 6 and got["baselineRows"] == 1 and 1 <= got["paretoRows"] <= 6
    assert len(got["images"]) >= 2 + 6 and min(got["images"]) > 100  # Pareto + energy bars, then the runs' plots
    assert got["wrapped"] == []  # no table cell wraps
    assert got["legendTarget"] == "Sensors and assumptions"
