"""Promise 4: paths stay where they belong.

Run ids, run directory names, carbon cache keys and output names are one safe path component
each, whatever the hostname, run name or zone: nothing is written outside the output or cache
directory, and every run written is found again by meter.load."""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meter
from meter.carbon import live
from meter.runlog import MAX_COMPONENT, safe_component
from meter.testing import FakeSensor

HOSTILE = ["../../etc/passwd", "/abs/path", "..", ".", "", "a\x00b", "-rf", "--output=x", "x" * 300, "\u8bad\u7ec3",
           "a/b/../c", "~root", "$(id)", "name with spaces", "CON", "\ud800", ".hidden", "run\nname"]

_CHILD = """
import os, socket, sys
host = sys.argv[2]
try:
    socket.sethostname(host)   # in its own UTS namespace (unshare -u): the machine's real hostname call
except PermissionError:
    socket.gethostname = lambda: host  # no namespace allowed here: the same name at the call meter makes
assert socket.gethostname() == host
import meter
m = meter.Meter(output_dir=sys.argv[1], region="FR", gpus="none", rapl_root="/nonexistent")
with m.track("train"):
    pass
m.close()
print(m.run_dir)
"""


@pytest.mark.parametrize("host", ["evil/../../host", "a/b/c", "..", "/", "host.with.dots/x"])
def test_hostname_with_slashes_gives_one_run_directory(host, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-c", _CHILD, str(out), host]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-u", "true"], capture_output=True).returncode == 0:
        cmd = [unshare, "-u", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    run_dir = p.stdout.strip().splitlines()[-1]
    assert os.path.dirname(run_dir) == str(out) and os.listdir(out) == [os.path.basename(run_dir)]
    assert "/" not in os.path.basename(run_dir) and not os.path.basename(run_dir).startswith((".", "-"))
    assert set(os.listdir(tmp_path)) == {"runs"}
    df = meter.load(str(out), live=False)
    assert df["name"].tolist() == ["train"] and df.attrs["problems"] == []


@pytest.mark.parametrize("name", HOSTILE)
def test_run_names_give_one_run_directory(name, tmp_path):
    out = tmp_path / "runs"
    m = meter.Meter(sensors=[FakeSensor.counter()], output_dir=str(out), region="FR", run_name=name)
    with m.track("train"):
        pass
    m.close()
    assert os.path.dirname(m.run_dir) == str(out) and os.listdir(out) == [os.path.basename(m.run_dir)]
    base = os.path.basename(m.run_dir)
    assert len(base) <= MAX_COMPONENT and not base.startswith((".", "-")) and base == safe_component(base)
    assert set(os.listdir(tmp_path)) == {"runs"}
    df = meter.load(str(out), live=False)
    assert df["name"].tolist() == ["train"]
    info = json.load(open(os.path.join(m.run_dir, "run.json")))
    assert info["run_id"] == base and info["run_name"] == name


def test_long_run_names_keep_time_host_and_pid(tmp_path):
    m = meter.Meter(sensors=[FakeSensor.counter()], output_dir=str(tmp_path), region="FR", run_name="n" * 300)
    with m.track("t"):
        pass
    m.close()
    base = os.path.basename(m.run_dir)
    assert len(base) == MAX_COMPONENT and base.endswith(f"-{os.getpid()}") and base.startswith("n" * 40 + "-")


@pytest.mark.parametrize("zone", ["..", "../../outside", "/etc", "a/b", "GB\x00x", ".", "", "-rf", "DE/../../x"])
def test_carbon_cache_stays_in_its_directory(zone, tmp_path):
    cache_dir = tmp_path / "cache"
    cache = live.Cache(str(cache_dir))
    hour = 1_790_002_800.0
    pts = [[hour, hour + 3600, 123.0, True]]
    cache.put("electricitymaps", zone, pts, now=hour + 7200)
    written = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs]
    assert len(written) == 1 and written[0].startswith(str(cache_dir) + os.sep)
    rel = os.path.relpath(written[0], cache_dir).split(os.sep)
    assert len(rel) == 3 and rel[0] == "electricitymaps" and rel[1] not in (".", "..", "")
    assert cache.get("electricitymaps", zone, hour + 10, hour + 20) == pts


def test_distinct_zones_never_share_a_cache_directory():
    zones = ["a/b", "a-b", "a_b", "..", "-", ".", "a\x00b", "a b", "DE", "GB-13"]
    keys = [live.cache_key(z) for z in zones]
    assert len(set(keys)) == len(zones)
    assert live.cache_key("DE") == "DE" and live.cache_key("GB-13") == "GB-13"


def test_a_symlink_planted_in_the_cache_is_not_followed_out(tmp_path):
    cache_dir, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    (cache_dir / "electricitymaps").mkdir(parents=True)
    os.symlink(outside, cache_dir / "electricitymaps" / "DE")
    hour = 1_790_002_800.0
    live.Cache(str(cache_dir)).put("electricitymaps", "DE", [[hour, hour + 3600, 1.0, True]], now=hour + 7200)
    assert os.listdir(outside) == []


def test_write_cards_writes_only_its_three_files(tmp_path):
    from meter.report.cards import write_cards

    m = meter.Meter(sensors=[FakeSensor.counter()], output_dir=str(tmp_path / "runs"), region="FR", run_name="../../x")
    with m.track("../x".replace("/", "-")):
        pass
    m.close()
    paths = write_cards(m.run_dir, str(tmp_path / "cards"))
    assert sorted(os.listdir(tmp_path / "cards")) == ["climate_card.md", "efficiency_card.json", "efficiency_card.md"]
    assert all(os.path.dirname(p) == str(tmp_path / "cards") for p in paths)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_safe_component_is_always_one_safe_component(text):
    c = safe_component(text, "run")
    assert c and len(c) <= MAX_COMPONENT and c not in (".", "..")
    assert os.sep not in c and "\x00" not in c and not c.startswith((".", "-"))
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in c)
    assert os.path.dirname(os.path.join("/base", c)) == "/base"
    assert safe_component(text, "run") == c


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=120, max_size=300),
       st.text(alphabet=string.ascii_letters + string.digits, min_size=120, max_size=300))
def test_long_components_of_different_texts_differ(a, b):
    """A cut keeps a hash of the whole: long names that differ anywhere (also in the middle,
    which the cut drops) give different components."""
    if a != b:
        assert safe_component(a) != safe_component(b)
