"""Carbon accounting: offline tables, live providers against a real local server, fallbacks."""

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

import meter
from meter import carbon
from meter.carbon import live
from meter.errors import CarbonError
from meter.testing import FakeSensor
from meter.units import J_PER_KWH

from .carbon_server import TOKEN, CarbonServer

H = 3600.0


def epoch(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(t):
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture
def server():
    with CarbonServer() as s:
        yield s


def fast_client():
    return live.Client(retries=2, backoff_s=0.0, timeout=0.2, sleep=lambda s: None)


# -- offline -------------------------------------------------------------------------------------


@pytest.mark.parametrize("region,zone,g,year,factor", [
    ("FR", "FR", 56.039, 2023, "lifecycle"),
    ("FRA", "FR", 56.039, 2023, "lifecycle"),
    ("france", "FR", 56.039, 2023, "lifecycle"),
    ("DE", "DE", 380.95, 2023, "lifecycle"),
    ("US-CA", "US-CA", None, 2023, "direct"),
    ("SE3", "SE3", 27.0, 2025, "lifecycle"),
    ("CN-BJ", "CN-BJ", 555.4, 2023, "direct"),
    ("aws:eu-west-3", "aws:eu-west-3", 56.039, 2023, "lifecycle"),
    ("azure:francecentral", "azure:francecentral", 56.039, 2023, "lifecycle"),
])
def test_offline_zones_carry_source_year_and_factor(region, zone, g, year, factor):
    i = carbon.resolve(region)
    assert i.zone == zone and i.year == year and i.factor == factor and i.kind == "average"
    assert i.method == "offline" and "codecarbon" in i.source
    if g is not None:
        assert i.g_per_kwh == pytest.approx(g)


def test_us_state_converted_from_lb_per_mwh():
    data = json.load(open(os.path.join(carbon.offline._data_dir(), "private_infra", "2023", "usa_emissions.json")))
    assert carbon.resolve("US-CA").g_per_kwh == pytest.approx(data["california"]["emissions"] * 0.45359237)


def test_gcp_region_uses_google_published_figure():
    i = carbon.resolve("gcp:europe-west1")
    assert i.g_per_kwh == 122.0 and "Google" in i.source


def test_unknown_region_error_lists_matches():
    with pytest.raises(CarbonError, match=r"region='aws:eu-west-9': unknown grid zone.*aws:eu-west-3"):
        carbon.resolve("aws:eu-west-9")


def test_no_region_is_world_average_labelled_and_warned_once(caplog):
    carbon._warned.discard("region")
    a = carbon.resolve(None)
    b = carbon.resolve(None)
    assert a.g_per_kwh == 475.0 and a.method == "region-unknown" and "region unknown" in a.note
    assert b == a
    assert sum("no region given" in r.message for r in caplog.records) == 1


def test_regions_search():
    rows = carbon.regions("sweden")
    assert {r["zone"] for r in rows} >= {"SE", "SE1", "SE3"}
    assert all({"g_per_kwh", "year", "source"} <= set(r) for r in rows)


def test_emissions_math_pue_and_units():
    i = carbon.resolve("FR")
    assert carbon.emissions_g(J_PER_KWH, i) == pytest.approx(56.039)
    assert carbon.emissions_g(J_PER_KWH * 2, i, pue=1.5) == pytest.approx(56.039 * 3)
    with pytest.raises(CarbonError):
        carbon.emissions_g(1.0, i, pue=0.5)


def test_time_resolved_sum_by_hand():
    # Two half-hours: 100 g then 300 g. Energy: 1 kWh in the first, 3 kWh in the second.
    t0 = 1_790_000_000.0
    i = carbon.Intensity("GB", "GB", 200.0, "test", 2026, series=((t0, t0 + 1800, 100.0), (t0 + 1800, t0 + 3600, 300.0)))
    times = [t0, t0 + 900, t0 + 1800, t0 + 2700, t0 + 3600]
    cum = [0, 0.5, 1.0, 2.5, 4.0]
    cum_j = [c * J_PER_KWH for c in cum]
    # 1 kWh x 100 + 3 kWh x 300 = 1000 g; with PUE 1.2: 1200 g. The mean-CI shortcut would give 800 g.
    assert carbon.emissions_over(times, cum_j, i) == pytest.approx(1000.0)
    assert carbon.emissions_over(times, cum_j, i, pue=1.2) == pytest.approx(1200.0)
    static = carbon.resolve("FR")
    assert carbon.emissions_over(times, cum_j, static) == pytest.approx(carbon.emissions_g(4 * J_PER_KWH, static))


def test_span_emissions_use_region_and_pue(clock):
    s = FakeSensor.counter()
    with meter.Meter(write=False, sensors=[s], clock=clock, region="DE", pue=1.25, interval_s=3600) as m:
        with m.track("x") as span:
            s.values["gpu:0"] = J_PER_KWH
            clock.advance(10)
    assert span.emissions_g == pytest.approx(380.95 * 1.25)


def test_codecarbon_data_absent_is_a_clear_error(tmp_path):
    fake = tmp_path / "shadow" / "codecarbon"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    code = textwrap.dedent("""
        import meter
        try:
            meter.Meter(write=False, region="FR")
        except meter.CarbonError as e:
            print("ERR", e)
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    assert out.startswith("ERR") and "pip install codecarbon" in out


# -- live ----------------------------------------------------------------------------------------


def test_electricitymaps_history_time_resolved(server, tmp_path):
    now = epoch("2026-11-21T12:30:00Z")
    server.state.em_history = [
        {"zone": "DE", "carbonIntensity": 200 + 10 * h, "datetime": iso(epoch("2026-11-21T00:00:00Z") + h * H),
         "emissionFactorType": "lifecycle", "isEstimated": False} for h in range(12)
    ]
    i = live.live_intensity("electricitymaps", "DE", now - 2.5 * H, now - 0.5 * H, token=TOKEN,
                            base_url=server.url + "/v3", cache_dir=str(tmp_path / "c"), client=fast_client(), now=now)
    assert i.method == "live" and i.factor == "lifecycle" and "Electricity Maps" in i.source
    assert i.at(epoch("2026-11-21T10:15:00Z")) == 300.0
    assert i.at(epoch("2026-11-21T11:15:00Z")) == 310.0
    # the auth-token header was sent, and never in a URL
    path, headers = server.state.requests[-1]
    assert headers.get("auth-token") == TOKEN and TOKEN not in path


def test_live_cache_avoids_second_request(server, tmp_path):
    now = epoch("2026-11-21T12:30:00Z")
    server.state.em_history = [{"carbonIntensity": 250, "datetime": iso(epoch("2026-11-21T09:00:00Z") + h * H)} for h in range(3)]
    kw = dict(token=TOKEN, base_url=server.url + "/v3", cache_dir=str(tmp_path / "c"), client=fast_client(), now=now)
    live.live_intensity("electricitymaps", "DE", now - 3 * H, now - 2 * H, **kw)
    n = len(server.state.requests)
    i = live.live_intensity("electricitymaps", "DE", now - 3 * H, now - 2 * H, **kw)
    assert len(server.state.requests) == n and "cache" in i.note


@pytest.mark.parametrize("mode,match", [
    ("401", "token was refused"),
    ("500", "HTTP 500 boom"),
    ("malformed", "malformed JSON"),
    ("missing", "lacks carbonIntensity"),
    ("timeout", "timed out"),
])
def test_failures_fall_back_to_offline_and_say_why(server, tmp_path, caplog, mode, match):
    server.state.mode["/v3/carbon-intensity"] = mode
    now = epoch("2026-11-21T12:30:00Z")
    offline = carbon.resolve("DE")
    i = live.with_fallback("electricitymaps", "DE", now - H, now, offline, token=TOKEN, base_url=server.url + "/v3",
                           cache_dir=str(tmp_path / "c"), client=fast_client(), now=now)
    assert i.method == "fallback" and i.g_per_kwh == offline.g_per_kwh
    assert "live electricitymaps failed" in i.note
    assert match in i.note
    assert TOKEN not in i.note and all(TOKEN not in r.getMessage() for r in caplog.records)


def test_429_and_500_are_retried_then_succeed(server, tmp_path):
    now = epoch("2026-11-21T12:30:00Z")
    server.state.em_history = [{"carbonIntensity": 123, "datetime": iso(now - H)}]
    for mode in ("429", "500"):
        server.state.mode = {"/v3/carbon-intensity/history": mode}
        server.state.fail_times = {"/v3/carbon-intensity/history": 2}
        i = live.live_intensity("electricitymaps", "DE", now - H, now - 60, token=TOKEN, base_url=server.url + "/v3",
                                cache_dir=None, client=fast_client(), now=now)
        assert i.method == "live" and i.g_per_kwh == 123.0


def test_missing_token_is_a_clear_error(server):
    with pytest.raises(CarbonError, match="METER_ELECTRICITYMAPS_TOKEN"):
        live.live_intensity("electricitymaps", "DE", 0, 1, token=None, base_url=server.url + "/v3", cache_dir=None)


def test_uk_national_actual_and_forecast(server):
    t0 = epoch("2026-11-21T10:00:00Z")
    server.state.uk_points = [
        {"from": "2026-11-21T10:00Z", "to": "2026-11-21T10:30Z", "intensity": {"forecast": 200, "actual": 190, "index": "moderate"}},
        {"from": "2026-11-21T10:30Z", "to": "2026-11-21T11:00Z", "intensity": {"forecast": 150, "actual": None, "index": "low"}},
    ]
    i = live.live_intensity("uk", "GB", t0, t0 + H, base_url=server.url, cache_dir=None, client=fast_client(), now=t0 + H)
    assert i.at(t0 + 60) == 190 and i.at(t0 + 1900) == 150
    assert i.factor == "operational" and "forecast used" in i.note
    assert server.state.requests[-1][0] == "/intensity/2026-11-21T10:00Z/2026-11-21T11:00Z"


def test_uk_regional(server):
    t0 = epoch("2026-11-21T10:00:00Z")
    server.state.uk_points = [{"from": "2026-11-21T10:00Z", "to": "2026-11-21T10:30Z", "intensity": {"forecast": 99, "index": "low"}}]
    i = live.live_intensity("uk", "GB-13", t0, t0 + 1800, base_url=server.url, cache_dir=None, client=fast_client(), now=t0 + H)
    assert i.g_per_kwh == 99
    assert server.state.requests[-1][0].endswith("/regionid/13")


def test_uk_long_window_is_split_into_14_day_requests(server):
    t0 = epoch("2026-10-01T00:00:00Z")
    server.state.uk_points = [{"from": "2026-10-01T00:00Z", "to": "2026-10-01T00:30Z", "intensity": {"forecast": 1, "actual": 1}}]
    live.live_intensity("uk", "GB", t0, t0 + 30 * 86400, base_url=server.url, cache_dir=None, client=fast_client(), now=t0 + 40 * 86400)
    assert len(server.state.requests) == 3


def test_region_auto_uses_geolocation_and_records_it(server):
    i = carbon.resolve("auto", geo_url=server.url + "/json")
    assert i.zone == "US-CA" and i.method == "ip-geolocation" and "IP geolocation" in i.note


def test_region_auto_failure_is_labelled_world_average(server, caplog):
    carbon._warned.discard("region")
    i = carbon.resolve("auto", geo_url="http://127.0.0.1:9/json")
    assert i.zone == "WORLD" and "region='auto' failed" in i.note
    msgs = [r.getMessage() for r in caplog.records if r.name == "meter"]
    # One warning, with the whole innermost cause and the fix; not "no region given" (one was).
    assert len(msgs) == 1 and "Connection refused" in msgs[0] and "region=" in msgs[0]
    assert not any("no region given" in m for m in msgs)


def test_meter_with_live_provider_falls_back_in_span(server, clock, monkeypatch, caplog):
    monkeypatch.setenv("METER_ELECTRICITYMAPS_TOKEN", "wrong-token")
    monkeypatch.setattr(live, "EM_BASE", server.url + "/v3")
    s = FakeSensor.counter()
    with meter.Meter(write=False, sensors=[s], clock=clock, region="DE", carbon="electricitymaps", interval_s=3600) as m:
        with m.track("x") as span:
            s.values["gpu:0"] = J_PER_KWH
            clock.advance(1)
        assert span.emissions_g == pytest.approx(380.95)
        assert m.intensity().method == "fallback"
    assert not any("wrong-token" in r.getMessage() for r in caplog.records)


def test_library_search_ranks_like_the_cli():
    fr = [r["zone"] for r in carbon.regions("FR")]
    assert fr[0] == "FR" and fr.index("GF") < fr.index("CF")  # a name starting with "Fr" before one containing it
    de = [r["zone"] for r in carbon.regions("DE")]
    assert de[0] == "DE" and de.index("DK") < de.index("BD")


def test_report_of_an_auto_region_run_uses_the_zone_located_during_the_run(server, tmp_path, monkeypatch):
    """region="auto" is located while the run measures; a report made later (on a laptop in
    another country, or offline) uses the zone recorded then, and never geolocates again."""
    monkeypatch.setenv("METER_GEO_URL", server.url + "/json")
    m = meter.Meter(output_dir=str(tmp_path / "runs"), gpus="none", rapl_root=str(tmp_path / "none"), region="auto")
    with m.track("train"):
        pass
    src = m._carbon_source()
    for _ in range(200):
        if src.zone is not None:
            break
        time.sleep(0.01)
    m.close()
    assert src.zone == "US-CA"
    server.state.geo = {"ip": "203.0.113.9", "country": "FR"}  # the report is made elsewhere
    asked = len(server.state.requests)
    df = meter.load(str(tmp_path / "runs"))
    assert df["intensity_zone"].tolist() == ["US-CA"]
    assert df["intensity_method"].tolist() == ["ip-geolocation"]
    assert "while the run measured" in df["intensity_note"].iloc[0]
    assert len(server.state.requests) == asked  # no new lookup


def test_report_of_an_auto_region_run_that_located_nothing_says_so(server, tmp_path, monkeypatch):
    monkeypatch.setenv("METER_GEO_URL", "http://127.0.0.1:9/json")  # geolocation fails during the run
    m = meter.Meter(output_dir=str(tmp_path / "runs"), gpus="none", rapl_root=str(tmp_path / "none"), region="auto")
    with m.track("train"):
        pass
    m.close()
    monkeypatch.setenv("METER_GEO_URL", server.url + "/json")  # would answer now: must not be asked
    df = meter.load(str(tmp_path / "runs"))
    assert df["intensity_zone"].tolist() == ["WORLD"]
    assert df["intensity_method"].tolist() == ["region-unknown"]
    assert "located no zone" in df["intensity_note"].iloc[0]
    assert not any(p == "/json" for p, _ in server.state.requests)
