"""No network by default: measuring, loading, every report format and the CLI's commands open
no socket and resolve no name unless a live provider or ``region="auto"`` is asked for. Checked
in a fresh interpreter with an audit hook that sees every ``socket.connect`` and
``socket.getaddrinfo`` (whatever library makes them), not by patching one client."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, sys
    events = []

    def hook(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request"):
            events.append(event + " " + repr(args)[:200])

    sys.addaudithook(hook)
    import meter
    from meter import cli
    from meter.report import cards

    out = sys.argv[1]
    with meter.Meter(output_dir=out, gpus="none", rapl_root=out + "/none", region="FR", run_name="offline") as m:
        with m.track("train", samples=8, tokens=512):
            sum(range(100000))
        with m.track("eval"):
            pass
        span_g = m.intensity().g_per_kwh
    with meter.track("default-meter"):  # the default Meter: METER_* and defaults only
        pass
    meter.default_meter().close()
    df = meter.load(out)
    codes = []
    for fmt in ("md", "json", "html", "latex", "climate"):
        codes.append(cli.main(["report", out, "--format", fmt, "-o", out + "/card." + fmt]))
    codes.append(cli.main(["run", "--output", out, "--region", "FR", "-q", "--", sys.executable, "-c", "pass"]))
    codes.append(cli.main(["regions", "FR"]))
    print(json.dumps({"events": events, "rows": len(df), "codes": codes, "g": span_g}))
''')


def test_default_workflow_opens_no_socket(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env["METER_CACHE_DIR"] = str(tmp_path / "cache")
    env["MPLBACKEND"] = "Agg"
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "runs")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["events"] == []
    assert res["rows"] == 2 and res["codes"] == [0] * 7
    assert res["g"] > 0


def test_the_hook_sees_a_live_provider_when_one_is_asked_for(tmp_path):
    """The same hook does see meter's live path (so the test above can fail): a live provider
    pointed at a closed local port is tried, fails, and falls back with a label."""
    script = textwrap.dedent('''
        import sys, json
        events = []
        sys.addaudithook(lambda e, a: events.append(e) if e == "socket.connect" else None)
        import meter
        m = meter.Meter(write=False, gpus="none", rapl_root="/none", region="GB", carbon="uk")
        with m.track("x"):
            pass
        m._carbon_source()._wake.set()
        import time
        for _ in range(100):
            if events:
                break
            time.sleep(0.05)
        m.close()
        print(json.dumps(events[:1]))
    ''')
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env.update(METER_CACHE_DIR=str(tmp_path / "cache"), METER_CARBON_URL="http://127.0.0.1:9")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == ["socket.connect"]
