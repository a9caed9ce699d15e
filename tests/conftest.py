import logging

import pytest

from meter.testing import FakeClock, FakeGPU, FakeNVML


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_nvml(clock):
    def make(*gpus, **kw):
        gpus = gpus or (FakeGPU(uuid="GPU-11111111-aaaa"), FakeGPU(uuid="GPU-22222222-bbbb"))
        return FakeNVML(list(gpus), clock=clock, **kw)

    return make


@pytest.fixture(autouse=True)
def _meter_logs(caplog):
    caplog.set_level(logging.WARNING, logger="meter")
    yield


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch, tmp_path):
    # Tests must not pick up the developer's settings or this repo's pyproject.
    for k in ("METER_REGION", "METER_PUE", "METER_OUTPUT_DIR", "METER_INTERVAL_S", "METER_RAPL_ROOT",
              "METER_GPUS", "METER_CARBON", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "METER_ELECTRICITYMAPS_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("METER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
