"""The benchmarks' emulated libnvidia-ml.so.1, loaded by the real pynvml and measured by meter
(small windows, loose tolerance), so that the benchmark keeps working."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import fake_nvml  # noqa: E402

DEVICES = [(100.0, 300.0, 0.4, 0.0), (80.0, 80.0, 1.0, 0.0)]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import fake_nvml, meter, pynvml
pynvml.nvmlInit()
names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
m = meter.Meter(write=False, rapl_root="/nonexistent", gpus="all", interval_s=0.05)
out = {"names": names, "windows": []}
for w in (0.3, 0.6):
    with m.track("w") as s:
        time.sleep(w)
    r = s.result
    for k in range(2):
        d = next(x for x in r.devices if x.key == f"gpu:{k}")
        out["windows"].append({"device": k, "j": d.energy_j, "prov": d.provenance,
                               "truth": fake_nvml.true_energy_j(json.loads(sys.argv[2])[k], s._start.t, s._end.t)})
m.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler; .ci/run's machine has gcc")
    return fake_nvml.build(str(tmp_path_factory.mktemp("lib")))


# With energy counters, spans under 1 s in the first second (period not learned yet) take their
# energy from integrated instantaneous power and say so; both labels are honest there.
@pytest.mark.parametrize("energy,prov,tol", [(True, {"counter", "power-integrated"}, 0.01), (False, {"power-integrated"}, 0.15)])
def test_pynvml_and_meter_read_the_emulated_gpus(lib, energy, prov, tol):
    env = {**os.environ, **fake_nvml.env(lib, DEVICES, energy=energy)}
    p = subprocess.run([sys.executable, "-c", CHILD, os.path.join(ROOT, "bench"), json.dumps(DEVICES)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(out["names"]) == 2 and "Emulated GPU" in out["names"][0]
    for w in out["windows"]:
        assert w["prov"] in prov
        # Counter: exact but for mJ truncation. Power only: a few 50 ms samples of a 0.4 s square wave.
        assert w["j"] == pytest.approx(w["truth"], rel=tol)


def test_truth_closed_form_matches_a_numeric_integral():
    dev = (100.0, 300.0, 0.5, 0.13)
    t0, t1 = 12.345, 14.9
    n = 200_000
    dt = (t1 - t0) / n

    def p(t):
        u = (t + dev[3]) % dev[2]
        return dev[1] if u < dev[2] / 2 else dev[0]

    numeric = sum(p(t0 + (i + 0.5) * dt) for i in range(n)) * dt
    assert fake_nvml.true_energy_j(dev, t0, t1) == pytest.approx(numeric, rel=1e-4)


EDGE_CHILD = r"""
import json, time
import pynvml
from meter.sensors.nvml import open_nvml
sensor, _, _ = open_nvml(gpus="all")
out = {"direct": sensor._raw is not None, "ordered": []}
for _ in range(200):
    a = sensor.read()
    b = sensor.read_edge()
    c = sensor.read()
    out["ordered"].append(all(x <= y <= z for x, y, z in zip(a, b, c)) and len(b) == 2)
out["types"] = [type(v).__name__ for v in sensor.read_edge()]
sensor.close()
print(json.dumps(out))
"""


def test_span_edges_read_the_counters_with_the_librarys_own_call(lib):
    # A span edge calls libnvidia-ml's energy function directly (buffers made once, checked against
    # pynvml's public call at start); its values sit between public reads made just before and after.
    env = {**os.environ, **fake_nvml.env(lib, DEVICES)}
    p = subprocess.run([sys.executable, "-c", EDGE_CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["direct"] is True
    assert all(out["ordered"])
    assert out["types"] == ["float", "float"]


REPIN_CHILD = r"""
import json, time
import meter
m = meter.Meter(write=False, rapl_root="/nonexistent", gpus="all", sync_cuda=False)
sm = None
with m.track("long"):  # no span comes or goes for 4 s: a grid re-pin falls due at 2 s but changes nothing
    sm = m._session.sampler
    odo = m._session.odometer
    time.sleep(4.0)
    quiet = {"repins": sm.repins, "burst_reads": sm.burst_reads, "pins": odo.grid_points()}
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:  # steps of 20 ms: the due re-pin runs now
        with m.track("step"):
            time.sleep(0.02)
busy = {"repins": sm.repins, "burst_reads": sm.burst_reads, "pins": odo.grid_points(),
        "period": odo.period_s(0)}
m.close()
print(json.dumps({"quiet": quiet, "busy": busy}))
"""


def test_grids_are_re_pinned_only_while_spans_come_and_go_and_only_around_updates(lib):
    env = {**os.environ, **fake_nvml.env(lib, [(100.0, 300.0, 0.7, 0.0), (80.0, 250.0, 0.7, 0.2)], update_s=0.1)}
    p = subprocess.run([sys.executable, "-c", REPIN_CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["quiet"]["repins"] == 0 and out["quiet"]["burst_reads"] == 0
    assert out["busy"]["repins"] >= 1
    # Both grids pinned again, each from 1 ms reads within a few ms of a predicted update (a
    # burst through two whole periods, as before, made ~200 reads).
    assert all(out["busy"]["pins"][k] > out["quiet"]["pins"][k] for k in out["quiet"]["pins"])
    assert out["busy"]["burst_reads"] <= 40 * out["busy"]["repins"]
    # The period is the pinned grid's least-squares fit (pins within ~1 ms over >= 5 periods),
    # not the longest flat stretch, which sparse 20 ms reads pulled down to 0.082-0.099 s.
    assert abs(out["busy"]["period"] - 0.1) < 0.003


SLOW_INIT_CHILD = r"""
import json, threading, time
import pynvml
calls = []
real_init = pynvml.nvmlInit
def slow_init(*a, **kw):
    # As on a large multi-GPU host without persistence mode, where nvmlInit takes 100s of ms.
    first = not calls
    calls.append(threading.current_thread().name)
    if first:
        time.sleep(0.4)
    return real_init(*a, **kw)
pynvml.nvmlInit = slow_init
import meter
m = meter.Meter(write=False, rapl_root="/nonexistent", gpus="all", sync_cuda=False)
time.sleep(0.6)  # a Trainer's set-up between the callback's Meter() and its first step
t0 = time.perf_counter()
m.start()
start_s = time.perf_counter() - t0
with m.track("w") as s:
    time.sleep(0.2)
gpus = sorted(d.key for d in s.result.devices if d.key.startswith("gpu"))
m.close()
print(json.dumps({"calls": calls, "start_s": start_s, "gpus": gpus}))
"""


def test_nvml_is_initialised_off_the_users_thread(lib):
    env = {**os.environ, **fake_nvml.env(lib, DEVICES)}
    p = subprocess.run([sys.executable, "-c", SLOW_INIT_CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # The slow first initialisation ran on meter's warm-up thread; start() on the user's thread
    # then only takes NVML's next reference (immediate) instead of waiting 0.4 s.
    assert out["calls"][0] == "meter-prefetch" and out["calls"][1:] == ["MainThread"]
    assert out["start_s"] < 0.2
    assert out["gpus"] == ["gpu:0", "gpu:1"]


FIRST_SECOND_CHILD = r"""
import json, random, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import fake_nvml, meter
devices = json.loads(sys.argv[2])
rng = random.Random(5)
m = meter.Meter(write=False, rapl_root="/nonexistent", gpus="all", sync_cuda=False)
t0 = time.monotonic()
errors = []
with m.track("first"):  # as a Trainer's first stage: short spans from the very start
    sm, odo = m._session.sampler, m._session.odometer
    while time.monotonic() - t0 < 1.0:
        with m.track("step") as s:
            time.sleep(rng.uniform(0.03, 0.08))
        time.sleep(rng.uniform(0.0, 0.03))
        for k in range(2):
            d = next(x for x in s.result.devices if x.key == f"gpu:{k}")
            truth = fake_nvml.true_energy_j(devices[k], s._start.t, s._end.t)
            errors.append(abs(d.energy_j - truth) / truth)
    while odo.learning and time.monotonic() - t0 < 3.0:
        time.sleep(0.01)
    out = {"median": statistics.median(errors), "worst": max(errors), "n": len(errors), "reads": sm.probe_reads,
           "learned_s": time.monotonic() - t0 if not odo.learning else None, "period": [odo.period_s(0), odo.period_s(1)]}
m.close()
print(json.dumps(out))
"""


def test_the_probe_sleeps_through_flat_periods_and_spans_stay_right(lib):
    devices = [(100.0, 300.0, 0.7, 0.0), (80.0, 250.0, 0.7, 0.2)]
    env = {**os.environ, **fake_nvml.env(lib, devices, update_s=0.1)}
    p = subprocess.run([sys.executable, "-c", FIRST_SECOND_CHILD, os.path.join(ROOT, "bench"), json.dumps(devices)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # Learned in about 1.4 s, as with 2 ms reads throughout, but from ~200 reads instead of ~700:
    # after two flat stretches only the few ms around each predicted update are read (plus power
    # polls every ~10 ms while spans come and go).
    assert out["learned_s"] is not None and out["learned_s"] < 2.5
    assert out["reads"] <= 400
    assert all(abs(p - 0.1) < 0.003 for p in out["period"])
    # Issue 11's target for spans of 30-80 ms in the first second: median <= 5 %, worst <= 50 %.
    assert out["n"] >= 20 and out["median"] <= 0.05 and out["worst"] <= 0.5


def test_the_trainer_callback_starts_the_warm_up_when_it_is_made(lib, tmp_path):
    # A user makes MeterCallback() before the Trainer; its Meter comes at the end of
    # Trainer.__init__. The warm-up (nvmlInit included) starts with the callback, so it is done by
    # then instead of competing with on_train_begin.
    child = SLOW_INIT_CHILD.split("import meter\n")[0] + (
        "from meter.integrations.transformers import MeterCallback\n"
        f"cb = MeterCallback(output_dir={str(tmp_path)!r})\n"
        "time.sleep(0.6)\n"
        "print(json.dumps({'calls': calls, 'meter': cb.meter is not None}))\n")
    env = {**os.environ, **fake_nvml.env(lib, DEVICES)}
    p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"calls": ["meter-prefetch"], "meter": False}


OVERLAP_CHILD = r"""
import json, threading, time
import pynvml
spans = []
real_init = pynvml.nvmlInit
def slow_init(*a, **kw):
    t0 = time.monotonic()
    if not spans:
        time.sleep(0.3)
    r = real_init(*a, **kw)
    spans.append((threading.current_thread().name, t0, time.monotonic()))
    return r
pynvml.nvmlInit = slow_init
import meter
m = meter.Meter(write=False, rapl_root="/nonexistent", gpus="all", sync_cuda=False)
with m.track("at-once") as s:  # start() right away, while the warm-up's nvmlInit is still running
    time.sleep(0.1)
gpus = sorted(d.key for d in s.result.devices if d.key.startswith("gpu"))
m.close()
print(json.dumps({"spans": spans, "gpus": gpus}))
"""


def test_start_right_after_meter_waits_for_the_warm_up_nvml_init(lib):
    # NVML is never initialised from two threads at once: the emulated library re-reads its
    # devices at each init, so a concurrent init once showed a torchrun rank 2 GPUs of 3.
    env = {**os.environ, **fake_nvml.env(lib, [(50, 50, 1, 0), (100, 100, 1, 0), (150, 150, 1, 0)])}
    p = subprocess.run([sys.executable, "-c", OVERLAP_CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    (warm, _, warm_end), (user, user_start, _) = out["spans"]
    assert (warm, user) == ("meter-prefetch", "MainThread") and user_start >= warm_end
    assert out["gpus"] == ["gpu:0", "gpu:1", "gpu:2"]
