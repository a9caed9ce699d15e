"""The CLI as a real subprocess."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import meter
from meter.testing import write_rapl_tree

METER = [sys.executable, "-m", "meter"]


def recorded_spans(out) -> list[dict]:
    """Every span record under an output directory (none if it does not exist)."""
    import glob

    return [json.loads(line) for f in glob.glob(os.path.join(str(out), "*", "spans.jsonl")) for line in open(f) if line.strip()]


def run(*args, **kw):
    return subprocess.run([*METER, *args], capture_output=True, text=True, timeout=60, **kw)


def test_run_passes_exit_code_and_output_through(tmp_path):
    out = tmp_path / "runs"
    p = run("run", "--region", "FR", "--output", str(out), "--name", "job", "--",
            sys.executable, "-c", "import sys; print('hello'); print('err', file=sys.stderr); sys.exit(7)")
    assert p.returncode == 7
    assert p.stdout == "hello\n"
    assert "err" in p.stderr and "meter: job:" in p.stderr and "gCO2eq" in p.stderr
    df = meter.load(out)
    assert df["name"].tolist() == ["job"] and df["energy_j"].iloc[0] > 0
    assert df["intensity_zone"].iloc[0] == "FR"


def test_run_takes_the_sampling_cadence(tmp_path):
    out = tmp_path / "runs"
    p = run("run", "--output", str(out), "--interval", "0.05", "--quiet-interval", "0.05", "-q", "--",
            sys.executable, "-c", "import time; time.sleep(2.0)")
    assert p.returncode == 0, p.stderr
    (run_dir,) = [os.path.join(out, d) for d in os.listdir(out)]
    info = json.load(open(os.path.join(run_dir, "run.json")))
    assert info["interval_s"] == 0.05 and info["quiet_interval_s"] == 0.05
    assert info["config"]["sources"]["quiet_interval_s"] == "argument"
    with open(os.path.join(run_dir, "samples.csv")) as f:
        t = [float(line.split(",")[1]) for line in f.read().splitlines()[1:]]
    gaps = sorted(b - a for a, b in zip(t, t[1:], strict=False))
    # Fixed: gaps of 0.05 s. The quiet ramp would make half of them 0.08-0.2 s over these 2 s.
    assert len(gaps) >= 20 and gaps[int(0.9 * len(gaps))] < 0.08


def test_run_stdin_passes_through(tmp_path):
    p = subprocess.run([*METER, "run", "--output", str(tmp_path), "-q", "--", sys.executable, "-c",
                        "import sys; print(sys.stdin.read().upper())"], input="abc", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "ABC\n" and p.stderr.count("meter:") <= 2


def test_child_cpu_time_is_attributed(tmp_path):
    out = tmp_path / "runs"
    p = run("run", "--output", str(out), "--", sys.executable, "-c",
            "import time\nt=time.process_time()\nwhile time.process_time()-t<0.5: pass")
    assert p.returncode == 0
    row = meter.load(out).iloc[0]
    info = json.load(open(os.path.join(row["run_dir"], "run.json")))
    w = info["channels"][0]["details"]["w_per_thread"]
    # 0.5 CPU-seconds of the child (plus its interpreter's start) at the per-thread power; not meter's own.
    assert 0.5 * w * 0.95 <= row["cpu_energy_j"] <= 0.5 * w * 1.5


def test_sigint_reaches_child_and_record_is_written(tmp_path):
    out = tmp_path / "runs"
    flag = tmp_path / "got-sigint"
    child = ("import signal, sys, time\n"
             f"signal.signal(signal.SIGINT, lambda *a: (open({str(flag)!r}, 'w').write('x'), sys.exit(42)))\n"
             "print('ready', flush=True)\n"
             "while True: time.sleep(0.05)\n")
    p = subprocess.Popen([*METER, "run", "--output", str(out), "--", sys.executable, "-c", child],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)  # sent by another process (si_pid != 0): meter passes it on
    rc = p.wait(timeout=30)
    assert rc == 42 and flag.exists()
    df = meter.load(out)
    assert len(df) == 1 and df["status"].iloc[0] == "complete" and df["duration_s"].iloc[0] > 0.3


def test_sigterm_is_forwarded(tmp_path):
    p = subprocess.Popen([*METER, "run", "--output", str(tmp_path / "r"), "-q", "--", sys.executable, "-c",
                          "import time; print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    p.terminate()
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert len(meter.load(tmp_path / "r")) == 1


def test_missing_command_and_usage_errors(tmp_path):
    p = run("run", "--output", str(tmp_path))
    assert p.returncode == 2 and "no command given" in p.stderr
    p = run("run", "--pue", "x", "--", "true")
    assert p.returncode == 2 and "invalid float value" in p.stderr
    p = run("frobnicate")
    assert p.returncode == 2 and "invalid choice" in p.stderr
    p = run("run", "--output", str(tmp_path / "runs"), "--", "/nonexistent/cmd")
    assert p.returncode == 127 and "cannot run" in p.stderr
    p = run("run", "--output", str(tmp_path / "runs"), "--", "no-such-command-anywhere")
    assert p.returncode == 127 and "not found on PATH" in p.stderr
    # nothing ran, so nothing is recorded: no run directory, let alone a "complete" span
    assert recorded_spans(tmp_path / "runs") == []


def test_bad_output_dir_is_reported_before_the_child_starts(tmp_path):
    (tmp_path / "file").write_text("x")
    marker = tmp_path / "ran"
    p = run("run", "--output", str(tmp_path / "file" / "sub"), "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert p.returncode == 2 and "not writable" in p.stderr and not marker.exists()


def test_bad_region_lists_matches(tmp_path):
    p = run("run", "--region", "Germny", "--output", str(tmp_path), "--", "true")
    assert p.returncode == 2 and "DE (Germany)" in p.stderr


def test_doctor_with_fake_powercap_tree(tmp_path):
    write_rapl_tree(str(tmp_path / "pc"))
    env = {**os.environ, "METER_RAPL_ROOT": str(tmp_path / "pc"), "METER_REGION": "SE3"}
    p = run("doctor", "--gpus", "none", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "cpu:package-0" in p.stdout and "dram:package-1" in p.stdout
    assert "SE3 from environment METER_REGION" in p.stdout
    assert "2 hardware energy counter(s)" not in p.stdout and "4 hardware energy counter(s) readable" in p.stdout


def test_doctor_without_counters_exits_1_with_fixes(tmp_path):
    p = run("doctor", "--rapl-root", str(tmp_path / "none"))
    assert p.returncode == 1
    assert "fix:" in p.stdout and "estimated" in p.stdout and "region" in p.stdout


def test_regions_search_and_miss():
    p = run("regions", "france")
    assert p.returncode == 0 and "FR " in p.stdout and "azure:francecentral" in p.stdout
    p = run("regions", "zzzz-nowhere")
    assert p.returncode == 1 and "no zone matches" in p.stderr


def test_python_m_meter_lists_sensors():
    p = run()
    assert p.returncode == 0 and "sensors on this machine" in p.stdout and "absent" in p.stdout


def test_live_line_only_on_a_terminal(tmp_path):
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen([*METER, "run", "--output", str(tmp_path / "r"), "--", sys.executable, "-c", "import time; time.sleep(2.5)"],
                         stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks += data
    p.wait(timeout=30)
    os.close(master)
    text = chunks.decode(errors="replace")
    assert "W avg" in text and "\r" in text
    # without a terminal (the other tests capture stderr in a pipe) there is no live line
    q = run("run", "--output", str(tmp_path / "q"), "--", sys.executable, "-c", "import time; time.sleep(1.5)")
    assert "W avg" not in q.stderr


HERE = os.path.dirname(os.path.abspath(__file__))
RECYCLED = os.path.join(HERE, "data", "runs", "run-recycled")
BASELINE = os.path.join(HERE, "data", "runs", "run-baseline")


def assert_config_error(p, *needles):
    """Exit 2, no traceback, and the error is one line starting with "meter:"."""
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("meter: ")
    for n in needles:
        assert n in last, last


def test_configuration_errors_exit_2_with_one_line_and_the_fix(tmp_path):
    # GPU 97 exists nowhere: without a driver NVML cannot start, with one there is no such GPU
    assert_config_error(run("doctor", "--gpus", "97"), "gpus=")
    p = run("run", "--output", str(tmp_path / "r"), "--", "true", env={**os.environ, "METER_GPUS": "97"})
    assert_config_error(p, "gpus=")
    assert recorded_spans(tmp_path / "r") == []  # CMD never started
    p = run("run", "--output", str(tmp_path / "r"), "--", "true", env={**os.environ, "METER_PUE": "0.5"})
    assert_config_error(p, "pue=0.5", "between 1")
    assert_config_error(run("run", "--output", str(tmp_path / "r"), "--quiet-interval", "0", "--", "true"),
                        "quiet_interval_s=0")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "pyproject.toml").write_text("[tool.meter]\nregoin = 'FR'\n")
    p = subprocess.run([*METER, "doctor"], capture_output=True, text=True, timeout=60, cwd=tmp_path / "proj",
                       env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
    assert_config_error(p, "regoin")
    assert_config_error(run("report", str(tmp_path / "nothing-here")), "does not exist", "fix: give run directories")
    (tmp_path / "empty").mkdir()
    assert_config_error(run("report", str(tmp_path / "empty")), "no meter runs", "fix:")
    assert_config_error(run("report", RECYCLED, "--offline", "--training-type", "pre-training"), "--format hf")
    assert_config_error(run("report", RECYCLED, BASELINE, "--offline", "--baseline", "nope"), "nope", "run-baseline")


def test_report_hf_merges_into_an_existing_model_card(tmp_path):
    from huggingface_hub import ModelCard

    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: apache-2.0\nlanguage: en\ntags:\n- text-classification\n---\n"
                      "# My model\n\nA model card written by hand.\n\n## Training\n\nThree epochs.\n")
    args = ("report", RECYCLED, "--format", "hf", "-o", str(readme), "--offline", "--training-type", "pre-training")
    p = run(*args)
    assert p.returncode == 0, p.stderr
    first = readme.read_text()
    assert "# My model" in first and "A model card written by hand." in first and "Three epochs." in first
    mc = ModelCard.load(str(readme))
    assert mc.data.license == "apache-2.0" and mc.data.language == "en" and mc.data.tags == ["text-classification"]
    co2 = mc.data.co2_eq_emissions
    assert co2["training_type"] == "pre-training" and co2["geographical_location"] == "France (FR)"
    assert co2["emissions"] == pytest.approx(707 * 70 / 3.6e6 * 1.1 * 56.039, rel=1e-4)  # the train stage, 70 s
    assert run(*args).returncode == 0
    assert readme.read_text() == first  # idempotent
    # a new card where there is none; without -o the card goes to stdout
    assert run("report", RECYCLED, "--format", "hf", "-o", str(tmp_path / "new.md"), "--offline").returncode == 0
    assert "co2_eq_emissions" in (tmp_path / "new.md").read_text()
    out = run("report", RECYCLED, "--format", "hf", "--offline")
    assert out.returncode == 0 and out.stdout.startswith("---\nco2_eq_emissions:")


def test_compare_in_every_format_or_refused():
    for fmt in ("latex", "climate", "hf"):
        assert_config_error(run("report", RECYCLED, "--compare", BASELINE, "--format", fmt, "--offline"), "--compare works with")
    md = run("report", RECYCLED, "--compare", BASELINE, "--offline")
    assert md.returncode == 0 and "break-even after 0.333 run(s)" in md.stdout
    js = run("report", RECYCLED, "--compare", BASELINE, "--format", "json", "--offline")
    c = json.loads(js.stdout)["comparison"]
    assert c["preparation"] == "pays-back" and c["break_even_runs"] == pytest.approx(1 / 3)
    page = run("report", RECYCLED, "--compare", BASELINE, "--format", "html", "--offline")
    assert page.returncode == 0 and 'id="comparison"' in page.stdout and "break-even after 0.333 run(s)" in page.stdout
    # no preparation stage in either run: nothing to pay back, and no claim that it is never paid back
    same = run("report", BASELINE, "--compare", BASELINE, "--offline")
    assert same.returncode == 0
    assert "no one-time overhead to pay back" in same.stdout and "never" not in same.stdout.split("# Comparison")[1]


def test_regions_rank_exact_codes_then_name_prefixes():
    def zones(q):
        p = run("regions", q)
        assert p.returncode == 0
        return [ln.split()[0] for ln in p.stdout.splitlines()[1:]]

    fr = zones("FR")
    assert fr[0] == "FR" and fr.index("GF") < fr.index("CF") and fr.index("GF") < fr.index("FO")  # French Guiana
    de = zones("DE")
    assert de[0] == "DE" and de.index("DK") < de.index("BD")  # Denmark starts with "de"; Bangladesh only contains it
    assert zones("france")[0] == "FR"
    assert zones("us-ca")[0] == "US-CA"


def test_regions_into_a_closed_pipe_is_quiet():
    p = subprocess.Popen([*METER, "regions"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith(b"zone")
    p.stdout.close()  # like `meter regions | head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""


def test_every_option_has_help():
    import argparse

    from meter.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen = 0
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            seen += 1
            assert action.help and action.help.strip(), f"meter {name} {action.option_strings or action.dest} has no help"
    assert seen >= 20
