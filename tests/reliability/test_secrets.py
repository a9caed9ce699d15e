"""Promise 3: secrets are never written.

A real local HTTP server plays Electricity Maps and echoes the token it receives in its error
answers, every way a real API or proxy might (JSON message, plain text, cut at the message's
length limit, URL-encoded, inside a malformed point). `meter run` measures with that provider
and `meter report` renders from it, as real subprocesses; the token must appear in no file of
the run, no card, no stderr line and no log record. Command lines are recorded masked, or not
at all with `--no-argv`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from http.server import ThreadingHTTPServer
from urllib.parse import quote

import pytest

import meter
from meter import redact
from meter.carbon import live
from meter.testing import FakeSensor

from ..carbon_server import TOKEN, CarbonServer, make_handler

METER = os.path.join(os.path.dirname(sys.executable), "meter")

ECHOES = {
    "json-401": lambda tok: (401, {"message": f"Invalid auth-token {tok}"}),
    "text-401": lambda tok: (401, f"token {tok} refused by the gateway"),
    "cut-403": lambda tok: (403, {"error": {"message": "x" * 185 + tok + " was refused"}}),
    "urlencoded-500": lambda tok: (500, {"message": f"upstream failed for token={quote(tok)}"}),
    "bearer-502": lambda tok: (502, f"Authorization: Bearer {tok}"),
    "point-200": lambda tok: (200, {"zone": "DE", "history": [{"datetime": tok, "carbonIntensity": 1}]}),
}


class EchoServer(CarbonServer):
    """tests/carbon_server.py's server, with the /v3 routes echoing the received token."""

    def __init__(self, echo: str):
        super().__init__()
        self.httpd.server_close()
        state, base = self.state, make_handler(self.state)

        class H(base):
            def do_GET(self):
                if self.path.startswith("/v3/"):
                    state.requests.append((self.path, dict(self.headers)))
                    code, body = ECHOES[echo](self.headers.get("auth-token") or "")
                    return self.send(code, body, raw=isinstance(body, str))
                return super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        import threading

        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)


def _all_text(*dirs) -> str:
    out = []
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                out.append(open(os.path.join(root, f), "rb").read().decode("utf-8", "replace"))
    return "\n".join(out)


def _assert_secret_free(text: str, *secrets: str):
    for s in secrets:
        assert s not in text and quote(s) not in text, f"secret {s!r} found"


@pytest.mark.parametrize("echo", sorted(ECHOES))
def test_token_echoed_by_the_server_is_never_written(echo, tmp_path):
    token = "tok-" + TOKEN + "-" + echo  # unique per case, long enough to be a secret
    with EchoServer(echo) as srv:
        env = {**os.environ, "METER_ELECTRICITYMAPS_TOKEN": token, "METER_CARBON_URL": srv.url + "/v3",
               "METER_CACHE_DIR": str(tmp_path / "cache")}
        out = tmp_path / "runs"
        child = "import time; time.sleep(1.0)"
        p = subprocess.run([METER, "run", "--output", str(out), "--region", "DE", "--carbon", "electricitymaps:DE",
                            "--interval", "0.05", "--", sys.executable, "-c", child], capture_output=True, text=True,
                           env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        assert srv.state.requests, "the provider was asked"  # the echo really happened
        texts = [p.stderr, p.stdout]
        for fmt in ("md", "html", "hf", "json"):
            r = subprocess.run([METER, "report", str(out), "--format", fmt], capture_output=True, text=True, env=env,
                               timeout=300)
            assert r.returncode == 0, r.stderr
            texts += [r.stdout, r.stderr]
        card = json.loads(r.stdout)
    # the failure is reported, redacted (not hidden)
    note = card["runs"][0]["intensity"]["note"] or ""
    assert "live electricitymaps failed" in note and "***" in note or "malformed" in note, note
    _assert_secret_free("\n".join(texts) + _all_text(out, tmp_path / "cache"), token)


def test_client_messages_and_log_records_are_redacted(caplog):
    token = "tok-" + TOKEN + "-client"
    caplog.set_level(logging.DEBUG, logger="meter")
    for echo in sorted(ECHOES):
        with EchoServer(echo) as srv:
            offline = meter.carbon.resolve("DE")
            now = time.time()
            inten = live.with_fallback("electricitymaps", "DE", now - 600, now, offline, token=token,
                                       base_url=srv.url + "/v3", cache_dir=None,
                                       client=live.Client(retries=0, sleep=lambda s: None))
            assert inten.method == "fallback"
            _assert_secret_free(inten.note, token)
    _assert_secret_free("\n".join(r.getMessage() for r in caplog.records), token)
    assert len([r for r in caplog.records if "live carbon intensity" in r.getMessage()]) == len(ECHOES)


SECRET_ARGS = ["--token", "T1-abcdef", "--password=P2-abcdef", "HF_TOKEN=T3-abcdef", "https://user:P4-abcdef@example.org/x",
               "--api-key", "K5-abcdef", "--secret-key=S6-abcdef", "--lr", "0.001"]
SECRETS = ["T1-abcdef", "P2-abcdef", "T3-abcdef", "P4-abcdef", "K5-abcdef", "S6-abcdef"]


def test_meter_run_masks_secret_arguments(tmp_path):
    p = subprocess.run([METER, "run", "--output", str(tmp_path), "--", sys.executable, "-c", "pass", *SECRET_ARGS],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (run_dir,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    _assert_secret_free(_all_text(tmp_path) + p.stderr, *SECRETS)
    info = json.load(open(os.path.join(run_dir, "run.json")))
    assert info["argv"][-10:] == ["--token", "***", "--password=***", "HF_TOKEN=***", "https://user:***@example.org/x",
                                  "--api-key", "***", "--secret-key=***", "--lr", "0.001"]
    span = json.loads(open(os.path.join(run_dir, "spans.jsonl")).readline())
    assert span["tags"]["command"].endswith("--token *** --password=*** HF_TOKEN=*** https://user:***@example.org/x "
                                            "--api-key *** --secret-key=*** --lr 0.001")


def test_meter_run_no_argv_records_no_command_line(tmp_path):
    p = subprocess.run([METER, "run", "--no-argv", "--output", str(tmp_path), "--", sys.executable, "-c", "pass",
                        "--lr", "0.25", *SECRET_ARGS], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (run_dir,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    info = json.load(open(os.path.join(run_dir, "run.json")))
    span = json.loads(open(os.path.join(run_dir, "spans.jsonl")).readline())
    assert info["argv"] == [] and "command" not in span["tags"] and span["tags"]["exit_code"] == 0
    text = _all_text(tmp_path)
    assert "0.25" not in text and "--lr" not in text
    _assert_secret_free(text, *SECRETS)


def test_library_run_masks_its_own_argv_and_env_secrets(tmp_path):
    """A training script measured with meter.track, started with a token on its command line
    and one in a secret-named environment variable that it copies into a tag and a span name."""
    script = tmp_path / "train.py"
    script.write_text(
        "import os, sys, meter\n"
        "m = meter.Meter(output_dir=sys.argv[1], region='FR', gpus='none')\n"
        "tok = os.environ['MY_SERVICE_TOKEN']\n"
        "with m.track('train-' + tok, tags={'endpoint': 'https://api?key=' + tok, 'note': 'uses ' + tok}):\n"
        "    with m.track('open-' + tok):\n"
        "        m.flush()\n"
        "m.close()\n")
    env = {**os.environ, "MY_SERVICE_TOKEN": "envsecret-7c1d"}
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "runs"), "--hf-token", "T7-abcdef"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    text = _all_text(tmp_path / "runs")
    _assert_secret_free(text, "envsecret-7c1d", "T7-abcdef")
    df = meter.load(str(tmp_path / "runs"), live=False)
    assert sorted(df["name"]) == ["open-***", "train-***"] and df["tag_note"].dropna().tolist() == ["uses ***"]
    (info,) = df.attrs["runs"]
    assert info["argv"][-2:] == ["--hf-token", "***"]


def test_writer_masks_heartbeat_and_records_of_an_in_process_meter(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-99")
    s = FakeSensor.counter()
    m = meter.Meter(sensors=[s], output_dir=str(tmp_path), region="FR", interval_s=0.02)
    t = m.track("eval", tags={"auth": "wandb-secret-99"})
    t.__enter__()
    m.flush()
    hb = open(os.path.join(m.run_dir, "heartbeat.json")).read()
    assert "wandb-secret-99" not in hb and "***" in hb
    t.__exit__(None, None, None)
    m.close()
    _assert_secret_free(_all_text(tmp_path), "wandb-secret-99")


@pytest.mark.parametrize("argv,masked", [
    (["--token", "x1"], ["--token", "***"]),
    (["--token=x1"], ["--token=***"]),
    (["--TOKEN", "x1"], ["--TOKEN", "***"]),
    (["--db-password", "x1"], ["--db-password", "***"]),
    (["--key", "x1"], ["--key", "***"]),
    (["--secret", "x1"], ["--secret", "***"]),
    (["--api_key", "x1"], ["--api_key", "***"]),
    (["GITHUB_TOKEN=x1"], ["GITHUB_TOKEN=***"]),
    (["AWS_SECRET_ACCESS_KEY=x1"], ["AWS_SECRET_ACCESS_KEY=***"]),
    (["postgres://u:pw@db/x"], ["postgres://u:***@db/x"]),
    (["--token", "--verbose"], ["--token", "--verbose"]),
    (["--tokens", "4096"], ["--tokens", "4096"]),
    (["--max_tokens", "4096"], ["--max_tokens", "4096"]),
    (["--keyboard", "us"], ["--keyboard", "us"]),
    (["TOKENIZERS_PARALLELISM=false"], ["TOKENIZERS_PARALLELISM=false"]),
    (["--output", "out", "--lr", "0.1"], ["--output", "out", "--lr", "0.1"]),
])
def test_mask_argv_cases(argv, masked):
    assert redact.mask_argv(argv) == masked
