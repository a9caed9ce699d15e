"""The estimate sensor: TDP table lookup, CPU-time share, RAM per GB, labels."""

import os
import time

import pytest

from meter.sensors import discover
from meter.sensors.estimate import DEFAULT_TDP_W, RAM_W_PER_GB, EstimateSensor, lookup_tdp


@pytest.mark.parametrize("model,tdp,row", [
    ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", 150.0, "Intel Xeon Gold 6248"),
    ("AMD EPYC 7763 64-Core Processor", 280.0, "AMD EPYC 7763"),
    ("Intel(R) Core(TM) i7-8700K CPU @ 3.70GHz", 95.0, "Intel Core i7-8700K"),
])
def test_tdp_from_codecarbon_table(model, tdp, row):
    got, source = lookup_tdp(model)
    assert got == tdp and row in source


def test_unknown_model_has_no_tdp_and_says_so():
    got, source = lookup_tdp("Intel(R) Xeon(R) Processor @ 2.30GHz")
    assert got is None and "not in codecarbon's cpu_power.csv" in source


def test_cpu_energy_is_tdp_times_cpu_time_share():
    s = EstimateSensor(cpu_tdp_w=64.0, ram=False)
    t0 = time.process_time()
    before = s.read()[0]
    x = 0
    while time.process_time() - t0 < 0.3:  # burn ~0.3 s of CPU
        x += 1
    after = s.read()[0]
    cpu_s = time.process_time() - t0
    expected = 64.0 * s.channels[0].details["sockets"] * cpu_s / os.cpu_count()
    # The bracketing process_time() calls sit outside the sensor's reads: within 1 ms of CPU.
    assert after - before == pytest.approx(expected, abs=64.0 * 0.001 / os.cpu_count())
    ch = s.channels[0]
    assert ch.provenance == "estimated" and ch.details["tdp_source"] == "given by the user (cpu_tdp_w)"


def test_ram_power_is_rss_times_w_per_gb():
    import psutil

    s = EstimateSensor(cpu=False)
    w = s.read()[0]
    rss = psutil.Process().memory_info().rss
    assert w == pytest.approx(rss / 1e9 * RAM_W_PER_GB, rel=0.2)
    assert "Green Algorithms" in s.channels[0].details["source"]


def test_discover_estimates_only_what_rapl_lacks(tmp_path):
    from meter.testing import write_rapl_tree

    write_rapl_tree(str(tmp_path), {"intel-rapl:0": {"name": "package-0"}})  # AMD-like: no dram zone
    found = discover(gpus=(), rapl_root=str(tmp_path))
    keys = [c.key for c in found.channels]
    assert keys == ["cpu:package-0", "dram:estimate"]
    assert any("dram energy is estimated" in n for n in found.notes)


def test_unknown_model_uses_documented_default_and_records_it():
    s = EstimateSensor(ram=False, model="Mystery CPU 9000")
    assert s.tdp_w == DEFAULT_TDP_W * s.channels[0].details["sockets"]
    assert s.channels[0].details["tdp_source"].startswith(f"default {DEFAULT_TDP_W:g} W per socket")
