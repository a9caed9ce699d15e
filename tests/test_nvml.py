"""NVML through a fake binding with pynvml's own names and NVMLError codes."""

import pynvml
import pytest

import meter
from meter.errors import ConfigError
from meter.sensors.nvml import open_nvml
from meter.testing import FakeGPU

A = "GPU-11111111-aaaa-0000-0000-000000000000"
B = "GPU-22222222-bbbb-0000-0000-000000000000"
C = "GPU-33333333-cccc-0000-0000-000000000000"


def gpu_meter(nv, clock, **kw):
    return meter.Meter(write=False, nvml=nv, clock=clock, interval_s=3600, rapl_root="/nonexistent", **kw)


def selected(nv, environ=None, gpus="visible"):
    sensor, unavailable, notes = open_nvml(gpus=gpus, binding=nv, environ=environ or {})
    return ([c.details["index"] for c in sensor.channels] if sensor else []), unavailable, notes


def test_counter_energy_is_exact(make_nvml, clock):
    nv = make_nvml(FakeGPU(uuid=A, power_w=250.0), FakeGPU(uuid=B, power_w=100.0))
    with gpu_meter(nv, clock) as m:
        with m.track("train") as span:
            nv.advance(2.0)
    gpu = span.energy_by_component["gpu"]
    assert gpu.provenance == "counter"
    assert gpu.energy_j == pytest.approx(700.0, rel=1e-6)
    per_dev = {d.key: d.energy_j for d in span.result.devices if d.component == "gpu"}
    assert per_dev == pytest.approx({"gpu:0": 500.0, "gpu:1": 200.0}, rel=1e-6)


def test_pre_volta_power_is_integrated_and_labelled(make_nvml, clock):
    # Energy NOT_SUPPORTED: the instant power field (186) is used and integrated by the sampler.
    nv = make_nvml(FakeGPU(uuid=A, energy=False, power_w=lambda t: 100.0 + 50.0 * ((t // 0.5) % 2)))
    with gpu_meter(nv, clock) as m:
        assert m.start()._session.odometer.channels[0].details["power_source"].startswith("NVML_FI_DEV_POWER_INSTANT")
        with m.track("run") as span:
            for _ in range(40):  # 4 s sampled every 0.1 s
                nv.advance(0.1)
                m.flush()
    gpu = span.energy_by_component["gpu"]
    assert gpu.provenance == "power-integrated"
    # Truth: half the time 100 W, half 150 W over 4 s = 500 J. The trapezoid between 0.1 s samples
    # misplaces each power step by at most half an interval: 0.05 s x 50 W = 2.5 J per step; rising
    # and falling steps cancel, so two uncancelled steps (5 J, 1 %) bound the error.
    truth = nv.true_energy_j(0) - 5000.0
    assert truth == pytest.approx(500.0, abs=1e-6)
    assert gpu.energy_j == pytest.approx(truth, abs=5.0)


def test_power_usage_used_when_instant_field_missing(make_nvml, clock):
    nv = make_nvml(FakeGPU(uuid=A, energy=False, instant=False, power_w=80.0))
    with gpu_meter(nv, clock) as m:
        with m.track("run") as span:
            nv.advance(1.0)
        assert "nvmlDeviceGetPowerUsage" in m._session.odometer.channels[0].details["power_source"]
    assert span.energy_by_component["gpu"].energy_j == pytest.approx(80.0)


def test_cuda_visible_devices_indices_uuids_prefixes(make_nvml):
    nv = make_nvml(FakeGPU(uuid=A), FakeGPU(uuid=B), FakeGPU(uuid=C))
    assert selected(nv, {"CUDA_VISIBLE_DEVICES": "2,0"})[0] == [2, 0]
    assert selected(nv, {"CUDA_VISIBLE_DEVICES": B})[0] == [1]
    assert selected(nv, {"CUDA_VISIBLE_DEVICES": "GPU-3333"})[0] == [2]
    assert selected(nv, {"CUDA_VISIBLE_DEVICES": "gpu-2222"})[0] == [1]  # case-insensitive prefix
    assert selected(nv, {})[0] == [0, 1, 2]


def test_cuda_visible_devices_stops_at_first_invalid_entry_like_cuda(make_nvml):
    nv = make_nvml(FakeGPU(uuid=A), FakeGPU(uuid=B), FakeGPU(uuid=C))
    idx, _, notes = selected(nv, {"CUDA_VISIBLE_DEVICES": "1,7,2"})
    assert idx == [1]
    assert any("'7'" in n and "ignores" in n for n in notes)


def test_empty_cuda_visible_devices_hides_all(make_nvml):
    idx, unavailable, _ = selected(make_nvml(), {"CUDA_VISIBLE_DEVICES": ""})
    assert idx == []
    assert "no GPU is visible" in unavailable[0].reason


def test_heterogeneous_gpus_without_pci_order_are_flagged(make_nvml):
    nv = make_nvml(FakeGPU(uuid=A, name="NVIDIA A100"), FakeGPU(uuid=B, name="NVIDIA T4"))
    _, _, notes = selected(nv, {"CUDA_VISIBLE_DEVICES": "0"})
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in n for n in notes)
    _, _, notes = selected(nv, {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert notes == []


def test_mig_slice_is_whole_gpu_reading_flagged(make_nvml, clock):
    mig = "MIG-5d9bd3a8-9b1e-5f2b-a3b0-0123456789ab"
    nv = make_nvml(FakeGPU(uuid=A), FakeGPU(uuid=B, mig_uuids=[mig]))
    with gpu_meter(nv, clock, environ={"CUDA_VISIBLE_DEVICES": mig}) as m:
        with m.track("x") as span:
            nv.advance(0.5)
        ch = m._session.odometer.channels[0]
    assert ch.details["index"] == 1 and ch.shared and "MIG" in ch.scope
    assert any("MIG slice" in w and "whole GPU" in w for w in span.warnings)


def test_explicit_selection_errors_are_clear(make_nvml):
    nv = make_nvml()
    with pytest.raises(ConfigError, match="matches no GPU"):
        open_nvml(gpus=("5",), binding=nv, environ={})
    with pytest.raises(ConfigError, match="indices start at 0"):
        meter.Meter(write=False, gpus=-1)
    with pytest.raises(ConfigError, match="use 'visible'"):
        meter.Meter(write=False, gpus=3.5)


@pytest.mark.parametrize("code,kind", [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "missing"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "missing"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "permission"),
])
def test_init_failure_is_recorded_with_hint_never_raised(make_nvml, clock, code, kind):
    nv = make_nvml(init_error=code)
    with gpu_meter(nv, clock) as m:
        with m.track("x"):
            clock.advance(0.1)
        u = [u for u in m.discovery.unavailable if u.sensor == "nvml"][0]
    assert u.kind == kind and u.hint
    assert str(pynvml.NVMLError(code)) in u.reason


def test_gpu_lost_mid_run_keeps_energy_so_far(make_nvml, clock):
    nv = make_nvml(FakeGPU(uuid=A, power_w=100.0), FakeGPU(uuid=B, power_w=50.0))
    with gpu_meter(nv, clock) as m:
        with m.track("train") as span:
            nv.advance(1.0)
            m.flush()
            nv.gpus[0].fail_code = pynvml.NVML_ERROR_GPU_IS_LOST
            nv.advance(1.0)
            m.flush()
            nv.advance(1.0)
        with m.track("after") as after:
            nv.advance(1.0)
    per_dev = {d.key: d.energy_j for d in span.result.devices if d.component == "gpu"}
    assert per_dev["gpu:0"] == pytest.approx(100.0, rel=1e-6)  # up to the last good read
    assert per_dev["gpu:1"] == pytest.approx(150.0, rel=1e-6)  # the other GPU is unaffected
    assert any("gpu:0" in w and "GPU is lost" in w for w in span.warnings)
    assert any("gpu:0" in w and "missing" in w for w in after.warnings)
    assert len([f for f in m._session.odometer.faults if f.key == "gpu:0"]) == 1  # one record per cause


def test_short_span_uses_edge_power_not_zero(make_nvml, clock):
    nv = make_nvml(FakeGPU(uuid=A, power_w=200.0, update_period_s=0.1))
    with gpu_meter(nv, clock) as m:
        with m.track("warmup"):
            for _ in range(100):  # the sampler learns the 100 ms update period
                nv.advance(0.01)
                m.flush()
        assert m._session.odometer.period_s(0) == pytest.approx(0.09, abs=0.011)
        e0 = nv.true_energy_j(0)
        with m.track("tiny") as span:
            nv.advance(0.02)
        truth = nv.true_energy_j(0) - e0
    gpu = span.result.devices[0]
    assert gpu.corrected
    assert gpu.energy_j == pytest.approx(truth, rel=0.05)
    assert any("too short for the counter" in w for w in span.warnings)


def test_counter_reset_is_not_negative(make_nvml, clock):
    nv = make_nvml(FakeGPU(uuid=A, power_w=100.0))
    with gpu_meter(nv, clock) as m:
        with m.track("x") as span:
            nv.advance(1.0)
            m.flush()
            nv._energy_j[0] = 0.0  # driver reload: the counter restarts from zero
            nv.advance(1.0)
    assert span.energy_j > 0
    assert any("restarted far below" in w for w in span.warnings)
