"""RAPL through real powercap trees written to disk."""

import os
import threading
import time

import pytest

import meter
from meter.sensors.rapl import PERMISSION_HINT, open_rapl
from meter.testing import FakeSensor, write_rapl_tree

RANGE = 262143328850  # µJ, a real max_energy_range_uj


def keys(sensor):
    return [c.key for c in sensor.channels]


def test_packages_and_dram_only_nested_zones_not_added(tmp_path):
    zones = {
        "intel-rapl:0": {"name": "package-0"},
        "intel-rapl:0:0": {"name": "core"},
        "intel-rapl:0:1": {"name": "uncore"},
        "intel-rapl:0:2": {"name": "dram"},
        "intel-rapl:1": {"name": "psys"},
    }
    write_rapl_tree(str(tmp_path), zones)
    sensor, unavailable, notes = open_rapl(str(tmp_path))
    assert keys(sensor) == ["cpu:package-0", "dram:package-0"]
    assert unavailable == []
    assert any("psys" in n and "not added" in n for n in notes)
    sensor.close()


def test_energy_is_exact_deltas_per_socket(tmp_path, clock):
    tree = write_rapl_tree(str(tmp_path / "pc"))
    with meter.Meter(write=False, rapl_root=str(tmp_path / "pc"), gpus="none", clock=clock, interval_s=3600) as m:
        with m.track("work") as span:
            tree.add("intel-rapl:0", 12.5)
            tree.add("intel-rapl:1", 7.25)
            tree.add("intel-rapl:0:0", 3.0)  # core: inside package, must not be added
            tree.add("intel-rapl:0:1", 2.0)
            tree.add("intel-rapl:1:0", 1.0)
            clock.advance(1.0)
    comp = span.energy_by_component
    assert comp["cpu"].energy_j == pytest.approx(19.75, abs=1e-6)
    assert comp["cpu"].provenance == "counter"
    assert comp["dram"].energy_j == pytest.approx(3.0, abs=1e-6)
    assert span.energy_j == pytest.approx(22.75, abs=1e-6)
    assert span.result.estimated_energy_j == 0.0
    assert span.avg_power_w == pytest.approx(22.75)


def test_several_wraps_inside_one_span(tmp_path, clock):
    rng = 10_000_000  # 10 J range: wraps quickly
    # 10 J at a stated 100 W max wraps at most every 0.1 s: the sampler interval becomes 25 ms.
    zone = {"name": "package-0", "max_energy_range_uj": rng, "energy_uj": 9_000_000, "constraint_0_max_power_uw": 100_000_000}
    tree = write_rapl_tree(str(tmp_path), {"intel-rapl:0": zone})
    with meter.Meter(write=False, rapl_root=str(tmp_path), gpus="none", clock=clock, interval_s=3600) as m:
        with m.track("long") as span:
            for _ in range(7):  # 9 J + 7 x 6 J = 51 J: wraps at 10, 20, 30, 40 and 50 J
                tree.add("intel-rapl:0", 6.0)
                clock.advance(0.1)
                m.flush()
        assert m._session.odometer.wraps[0] == 5
    assert span.energy_by_component["cpu"].energy_j == pytest.approx(42.0, abs=1e-6)
    assert not any("cpu" in w for w in span.warnings)


def test_interval_is_shortened_when_counter_could_wrap_between_ticks(tmp_path, caplog):
    # 1 J range at an assumed 500 W max wraps every 2 ms: a 1 s interval would miss wraps.
    write_rapl_tree(str(tmp_path), {"intel-rapl:0": {"name": "package-0", "max_energy_range_uj": 1_000_000}})
    m = meter.Meter(write=False, rapl_root=str(tmp_path), gpus="none", interval_s=1.0)
    m.start()
    try:
        assert m._session.interval_s == pytest.approx(0.0005)
        assert any("wrap" in n for n in m.discovery.notes)
    finally:
        m.close()


def test_missing_energy_file_and_garbage_are_reported_not_fatal(tmp_path):
    zones = {
        "intel-rapl:0": {"name": "package-0", "energy_uj": "not-a-number"},
        "intel-rapl:1": {"name": "package-1", "energy_uj": None},
        "intel-rapl:2": {"name": "package-2"},
    }
    write_rapl_tree(str(tmp_path), zones)
    sensor, unavailable, notes = open_rapl(str(tmp_path))
    assert keys(sensor) == ["cpu:package-2"]
    assert any("not an integer" in u.reason for u in unavailable)
    assert any("intel-rapl:1" in n and "no energy_uj" in n for n in notes)
    sensor.close()


def test_no_powercap_directory_falls_back_to_labelled_estimate(tmp_path):
    m = meter.Meter(write=False, rapl_root=str(tmp_path / "absent"), gpus="none")
    with m.track("x") as span:
        sum(range(10000))
    m.close()
    assert span.energy_by_component["cpu"].provenance == "estimated"
    assert span.energy_by_component["dram"].provenance == "estimated"
    assert any("estimated" in w for w in span.warnings)
    assert any(u.sensor == "rapl" and "does not exist" in u.reason for u in m.discovery.unavailable)


def test_mmio_duplicate_and_mirrored_dies_read_once(tmp_path):
    zones = {
        "intel-rapl:0": {"name": "package-0", "energy_uj": 5_000_000},
        "intel-rapl:1": {"name": "package-1", "energy_uj": 5_000_000},  # a die mirror of package-0
    }
    tree = write_rapl_tree(str(tmp_path), zones)
    stop = threading.Event()

    def writer():  # both counters move together, as mirrored die counters do
        while not stop.is_set():
            tree.add("intel-rapl:0", 0.01)
            tree.add("intel-rapl:1", 0.01)
            time.sleep(0.001)
    os.makedirs(tmp_path / "intel-rapl-mmio" / "intel-rapl-mmio:0")
    for k, v in {"name": "package-0", "energy_uj": 77, "max_energy_range_uj": RANGE}.items():
        (tmp_path / "intel-rapl-mmio" / "intel-rapl-mmio:0" / k).write_text(f"{v}\n")
    t = threading.Thread(target=writer)
    t.start()
    try:
        sensor, _, notes = open_rapl(str(tmp_path))
    finally:
        stop.set()
        t.join()
    assert keys(sensor) == ["cpu:package-0"]
    assert any("MMIO" in n for n in notes)
    assert any("mirrors" in n for n in notes)
    sensor.close()


ROOT_ONLY_CHILD = r"""
import json, sys
import meter
m = meter.Meter(write=False, rapl_root=sys.argv[1], gpus="none")
m.start()
try:
    u = [u for u in m.discovery.unavailable if u.sensor == "rapl"]
    print(json.dumps({"unavailable": [[x.kind, x.hint] for x in u],
                      "channels": [c.key for c in m._session.odometer.channels]}))
finally:
    m.close()
"""


def test_root_only_energy_file_gives_hint_and_estimate(tmp_path):
    # Linux >= 5.10 makes energy_uj root-only (CVE-2020-8694); users train unprivileged. The Meter
    # runs in a real child process reading a real mode-000 file; under root (CI, this container)
    # the child first gives up the capabilities by which root reads any file.
    import json
    import subprocess
    import sys
    import tempfile

    root = tempfile.mkdtemp(prefix="meter-rapl-perm-")
    try:
        os.chmod(root, 0o755)
        write_rapl_tree(root, {"intel-rapl:0": {"name": "package-0"}})
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o444)
        energy = os.path.join(root, "intel-rapl", "intel-rapl:0", "energy_uj")
        os.chmod(energy, 0o000)

        def unprivileged():
            # Root keeps uid 0 (the interpreter may live under /root) but loses the two
            # capabilities that let it read any file, from the bounding set, so the exec'd child
            # has them in neither its permitted nor its effective set.
            if os.geteuid() == 0:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

        env = {**os.environ, "HOME": root, "METER_OUTPUT_DIR": root}
        p = subprocess.run([sys.executable, "-c", ROOT_ONLY_CHILD, root], capture_output=True, text=True,
                           env=env, timeout=120, preexec_fn=unprivileged, cwd=root)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.strip().splitlines()[-1])
        kinds = [k for k, _ in out["unavailable"]]
        assert kinds == ["permission"], out
        assert "CVE-2020-8694" in out["unavailable"][0][1]
        assert "cpu:estimate" in out["channels"] and "cpu:package-0" not in out["channels"]
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_permission_fault_via_sensor(clock):
    """A counter that becomes unreadable mid-run: a permanent fault with the fix, no crash."""
    from meter.sensors import Fault

    s = FakeSensor.counter("cpu:package-0", "cpu")
    with meter.Meter(write=False, sensors=[s], clock=clock, interval_s=3600) as m:
        with m.track("run") as span:
            s.values["cpu:package-0"] = 5.0
            clock.advance(1)
            m.flush()
            s.values["cpu:package-0"] = Fault("RAPL read refused: [Errno 13] Permission denied", PERMISSION_HINT, True)
            clock.advance(1)
    assert span.energy_j == pytest.approx(5.0)
    assert any("Permission denied" in w and "missing" in w for w in span.warnings)
    assert m._session.odometer.faults[0].hint == PERMISSION_HINT
