"""Cards from run logs on disk: golden files, numbers equal to the run log, HF round-trip,
comparison, Pareto, plots and the HTML report in a real headless Chromium."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import meter
from meter.report import analysis, cards, hf, model, render

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(HERE, "data", "runs")
RECYCLED = os.path.join(RUNS, "run-recycled")
BASELINE = os.path.join(RUNS, "run-baseline")
GOLDEN = os.path.join(HERE, "data", "golden")


def render_all() -> dict[str, str]:
    card = model.build([RECYCLED, BASELINE], live=False)
    out = {
        "card.md": render.markdown(card),
        "card.json": render.to_json(card),
        "card.tex": render.latex(card),
        "climate.md": render.climate_markdown(card, model_public="yes"),
        "hf_README.md": hf.render(model.build(RECYCLED, live=False)),
        "compare.md": cards.render_paths(RECYCLED, compare=BASELINE, live=False),
    }
    return out


@pytest.mark.parametrize("name", ["card.md", "card.json", "card.tex", "climate.md", "hf_README.md", "compare.md"])
def test_golden(name):
    got = render_all()[name]
    want = open(os.path.join(GOLDEN, name)).read()
    assert got == want, f"{name} changed; if deliberate, run `python tests/make_golden_runs.py --golden` and review the diff"


def test_card_numbers_equal_the_run_log():
    card = model.build(RECYCLED, live=False)
    spans = {json.loads(line)["path"]: json.loads(line) for line in open(os.path.join(RECYCLED, "spans.jsonl"))}
    for s in card["runs"][0]["stages"]:
        rec = spans[s["path"]]
        assert s["energy_j"] == rec["energy_j"]
        assert s["duration_s"] == rec["duration_s"]
        for comp, ce in s["components"].items():
            assert ce["energy_j"] == rec["energy_by_component"][comp]["energy_j"]
            assert ce["provenance"] == rec["energy_by_component"][comp]["provenance"]
    st = {s["path"]: s for s in card["runs"][0]["stages"]}
    # By hand: 550 W GPUs + 150 W packages + 7 W DRAM = 707 W; PUE 1.1; France 56.039 g/kWh.
    assert st["cache_build"]["energy_j"] == pytest.approx(707 * 20)
    assert st["cache_build"]["facility_energy_j"] == pytest.approx(707 * 20 * 1.1)
    assert st["cache_build"]["emissions_g"] == pytest.approx(707 * 20 / 3.6e6 * 1.1 * 56.039)
    # train = 2 x (30 s + 5 s evaluate); own energy excludes the nested evaluations
    assert st["train"]["energy_j"] == pytest.approx(707 * 70)
    assert st["train"]["own_energy_j"] == pytest.approx(707 * 60)
    assert st["train"]["energy_per_sample_j"] == pytest.approx(707 * 60 / 4000)
    assert st["train"]["energy_per_1k_tokens_j"] == pytest.approx(707 * 60 / 512)
    assert st["train"]["flops_per_j"] == pytest.approx(4e15 / (707 * 60))
    assert st["train/epoch-1/evaluate"]["kind"] == "evaluate"
    assert st["cache_build"]["kind"] == "prepare"
    assert st["predict"]["samples_per_s"] == pytest.approx(1000 / 8)


def test_all_experiments_totals():
    card = model.build([RECYCLED, BASELINE], live=False)
    a = card["all_experiments"]
    assert a["runs"] == 2
    assert a["energy_kwh"] == pytest.approx(sum(r["totals"]["energy_kwh"] for r in card["runs"]))
    assert a["energy_kwh"] == pytest.approx(707 * (20 + 70 + 8 + 130 + 8) / 3.6e6)


def test_hf_metadata_round_trips_as_plain_decimal_grams(tmp_path):
    from huggingface_hub import ModelCard

    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: apache-2.0\nlanguage: en\ndatasets:\n- glue\n---\n# My model\n\nIntro text.\n")
    card = model.build(RECYCLED, live=False)
    hf.update_model_card(str(readme), card)
    hf.update_model_card(str(readme), card)  # idempotent: one section, one key
    text = readme.read_text()
    assert text.count(hf.BEGIN) == 1 and "Intro text." in text
    mc = ModelCard.load(str(readme))
    assert mc.data.license == "apache-2.0" and mc.data.datasets == ["glue"]
    co2 = mc.data.co2_eq_emissions
    assert set(co2) == {"emissions", "source", "training_type", "geographical_location", "hardware_used"}
    train_g = card["runs"][0]["totals"]["train_emissions_g"]
    assert co2["emissions"] == pytest.approx(train_g, rel=1e-5)  # grams of the training stages
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("emissions:"))
    assert "e-" not in line and "e+" not in line
    assert co2["training_type"] == "fine-tuning" and co2["geographical_location"] == "France (FR)"
    assert co2["hardware_used"].startswith("2x NVIDIA A100-SXM4-40GB")


def test_tiny_emissions_are_still_plain_decimals():
    import yaml

    hf._register_yaml()
    text = yaml.dump({"emissions": hf.PlainDecimal(1.234e-07)})
    assert text.strip() == "emissions: 0.0000001234"
    assert yaml.safe_load(text)["emissions"] == pytest.approx(1.234e-07)


def test_compare_counts_preparation_as_overhead():
    base = model.build(BASELINE, live=False)["runs"][0]
    cand = model.build(RECYCLED, live=False)["runs"][0]
    c = analysis.compare(base, cand)
    rows = {r["path"]: r for r in c["stages"]}
    assert rows["train"]["speedup"] == pytest.approx(130 / 70)
    assert rows["train"]["saved_energy_j"] == pytest.approx(707 * 60)
    assert rows["cache_build"]["baseline_energy_j"] is None
    wo, w = c["totals"]["without_preparation"], c["totals"]["with_preparation"]
    assert wo["energy_saved_j"] == pytest.approx(707 * 60)
    assert w["energy_saved_j"] == pytest.approx(707 * 40)
    assert c["break_even_runs"] == pytest.approx(20 / 60)


def test_pareto_front():
    import pandas as pd

    df = pd.DataFrame({"name": list("abcde"), "acc": [0.80, 0.85, 0.82, 0.90, 0.84], "energy_j": [10, 20, 30, 40, 25]})
    front = analysis.pareto_front(df, quality="acc", cost="energy_j")
    assert front["name"].tolist() == ["a", "b", "d"]
    with pytest.raises(meter.ConfigError, match="not in the frame"):
        analysis.pareto_front(df, quality="f1", cost="energy_j")


def test_plots_render(tmp_path):
    pytest.importorskip("matplotlib")
    from meter.report import plots
    from meter.runlog import read_run

    card = model.build(RECYCLED, live=False)
    fig = plots.power_timeline(read_run(RECYCLED), card["runs"][0])
    fig.savefig(tmp_path / "t.png")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"GPU", "CPU", "DRAM"}
    assert max(lines["GPU"].get_ydata()) == pytest.approx(550.0, rel=1e-3)  # the fake GPUs' 300 + 250 W
    assert (tmp_path / "t.png").stat().st_size > 5000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"]


def chromium(url, tmp_path, *extra):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, url],
                          capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or "Error" in ln)]


@pytest.mark.skipif(CHROMIUM is None, reason=".ci/run installs Debian's chromium; run it to get this test")
def test_html_report_in_headless_chromium(tmp_path):
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    p = subprocess.run([sys.executable, "-m", "meter", "report", RECYCLED, BASELINE, "--format", "html", "--offline", "-o", str(page)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "src=\"data:image/png;base64," in text  # self-contained
    shot = tmp_path / "shot.png"
    r = chromium(page.as_uri(), tmp_path, "--window-size=1300,2400", f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 50_000
    assert console_errors(r.stderr) == []
    dom = chromium(page.as_uri(), tmp_path, "--dump-dom")
    for stage in ("cache_build", "epoch-1", "evaluate", "predict"):
        assert stage in dom.stdout
    assert '<span id="stage-count">13</span>' in dom.stdout  # the page's script ran: 7 + 6 stages
    # the console check can fail: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction()</script></body></html>")
    assert console_errors(chromium(bad.as_uri(), tmp_path, "--dump-dom").stderr)
