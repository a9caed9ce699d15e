"""A real Lightning Trainer on a tiny model, on the CPU, with MeterCallback; energy from a FakeSensor
that the test spends per batch, so every figure is known exactly."""

import json
import os

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

import meter  # noqa: E402
from meter.integrations.lightning import MeterCallback  # noqa: E402
from meter.testing import FakeSensor  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self, fail_at=None):
        super().__init__()
        self.net = torch.nn.Linear(8, 2)
        self.fail_at = fail_at

    def training_step(self, batch, i):
        if self.fail_at is not None and self.global_step == self.fail_at:
            self.fail_at = None
            raise RuntimeError("stop here")
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def test_step(self, batch, i):
        self.validation_step(batch, i)

    def predict_step(self, batch, i):
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    ds = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    return torch.utils.data.DataLoader(ds, batch_size=5)


class Spend(pl.Callback):
    """10 J per training batch (+ ``spread`` seeded noise), 1 J per validation/test/predict batch."""

    def __init__(self, sensor, spread=0.0):
        import random

        self.sensor, self.spread, self.rng, self.spent = sensor, spread, random.Random(3), []

    def _add(self, j):
        self.sensor.values["gpu:0"] += j

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        j = 10.0 + (self.rng.uniform(-self.spread, self.spread) if self.spread else 0.0)
        self.spent.append(j)
        self._add(j)

    def on_validation_batch_end(self, *a, **k):
        self._add(1.0)

    on_test_batch_end = on_predict_batch_end = on_validation_batch_end


def make(tmp_path, cb_kw=None, spread=0.0, **kw):
    sensor = FakeSensor.counter()
    m = meter.Meter(region="DE", sensors=[sensor], output_dir=str(tmp_path / "runs"), interval_s=3600)
    cb = MeterCallback(meter=m, **(cb_kw or {}))
    opts = dict(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path), callbacks=[Spend(sensor, spread), cb])
    opts.update(kw)
    return pl.Trainer(**opts), cb, m


def rows(m):
    m.flush()
    return meter.load(m.run_dir)


def test_fit_validate_predict_spans_cumulative_logs_and_card(tmp_path):
    trainer, cb, m = make(tmp_path, num_sanity_val_steps=1)
    model = Tiny()
    trainer.fit(model, loader(20, 0), loader(10, 1))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.predict(model, loader(15, 2))
    df = rows(m).set_index("path")
    assert set(df.index) == {"fit", "fit/sanity-check", "fit/epoch-1", "fit/epoch-2", "fit/epoch-1/validate",
                             "fit/epoch-2/validate", "predict"}
    assert df.loc["fit/sanity-check", "tag_kind"] == "evaluate" and df.loc["fit/sanity-check", "samples"] == 5
    assert df.loc["fit", "samples"] == 40 and df.loc["fit/epoch-2", "samples"] == 20
    assert df.loc["fit/epoch-1/validate", "samples"] == 10 and df.loc["predict", "samples"] == 15
    # 8 training batches x 10 J, 1 sanity + 2 x 2 validation batches x 1 J
    assert df.loc["fit", "energy_j"] == pytest.approx(85.0)
    # cumulative over fit (not per epoch), J/sample without the nested validation, as in the card
    assert logged["energy_kwh"] == pytest.approx(85.0 / 3.6e6)
    assert logged["energy_per_sample_j"] == pytest.approx(80.0 / 40)
    assert logged["val_energy_kwh"] == pytest.approx(2.0 / 3.6e6)
    assert cb.metrics["predict"]["predict_energy_per_sample_j"] == pytest.approx(3.0 / 15)
    card = json.loads((tmp_path / "efficiency_card.json").read_text())  # written at the end of fit
    st = {s["path"]: s for s in card["runs"][0]["stages"]}
    assert st["fit"]["energy_per_sample_j"] == pytest.approx(logged["energy_per_sample_j"])
    assert st["fit/sanity-check"]["kind"] == "evaluate"
    assert "predict" not in st  # the stand-alone predict is in the card written later
    cb.write_cards()
    card = json.loads((tmp_path / "efficiency_card.json").read_text())
    assert "predict" in {s["path"] for s in card["runs"][0]["stages"]}


def test_default_run_log_directory_cannot_shadow_the_package(tmp_path):
    cb = MeterCallback(region="DE", gpus="none", rapl_root=str(tmp_path / "none"))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[cb])
    trainer.fit(Tiny(), loader(10, 0))
    assert os.path.dirname(cb.meter.run_dir) == str(tmp_path / "meter-runs")
    assert not (tmp_path / "meter").exists()


def test_exception_closes_spans_and_a_new_fit_starts_a_clean_tree(tmp_path):
    trainer, cb, m = make(tmp_path)
    model = Tiny(fail_at=3)
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.fit(model, loader(20, 0))
    again = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=list(trainer.callbacks[:1]) + [cb])
    again.fit(model, loader(20, 0))
    df = rows(m)
    assert df[df["depth"] == 0]["name"].tolist() == ["fit", "fit"]
    assert set(df["path"]) == {"fit", "fit/epoch-1", "fit/epoch-2"}
    broken = df[df["tag_interrupted"] == True]  # noqa: E712
    assert set(broken["path"]) == {"fit", "fit/epoch-1"} and set(broken["tag_exception"]) == {"RuntimeError"}
    assert set(broken["status"]) == {"incomplete"}
    assert broken.set_index("path").loc["fit", "samples"] == 15  # 3 batches before the interrupt


def test_budget_stops_fit_and_checkpoints(tmp_path, caplog):
    trainer, cb, m = make(tmp_path, {"budget_kwh": 55 / 3.6e6}, max_epochs=5, enable_checkpointing=True)
    trainer.fit(Tiny(), loader(40, 0))
    assert trainer.global_step == 6  # 60 J > 55 J after the 6th batch; Lightning stops at once
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch=0-step=6.ckpt"]
    df = rows(m).set_index("path")
    assert df.loc["fit", "tag_budget_outcome"].startswith("stopped: energy 1.667e-05 kWh")
    assert df.loc["fit", "tag_stopped_at_step"] == 6
    assert sum("passed the budget" in r.message for r in caplog.records) == 1


def test_forecast_within_its_band_on_a_steady_run(tmp_path):
    trainer, cb, m = make(tmp_path, spread=3.0, max_epochs=5)
    spend = trainer.callbacks[0]
    trainer.fit(Tiny(), loader(40, 0))  # 8 batches per epoch, 40 steps
    actual = sum(spend.spent)
    f = cb.metrics["fit"]
    assert f["energy_forecast_low_kwh"] * 3.6e6 <= actual <= f["energy_forecast_high_kwh"] * 3.6e6
    card = json.loads((tmp_path / "efficiency_card.json").read_text())
    (fc,) = card["runs"][0]["forecasts"]
    assert fc["at_step"] == 3 and fc["steps"] == 40 and fc["within_band"] is True


def test_stand_alone_validate_and_test_are_measured_and_logged(tmp_path):
    trainer, cb, m = make(tmp_path)
    model = Tiny()
    (val,) = trainer.validate(model, loader(10, 1))
    (test,) = trainer.test(model, loader(15, 2))
    df = rows(m).set_index("path")
    assert list(df.index) == ["validate", "test"]
    assert df.loc["validate", "samples"] == 10 and df.loc["test", "samples"] == 15
    assert df.loc["validate", "energy_j"] == pytest.approx(2.0) and df.loc["test", "energy_j"] == pytest.approx(3.0)
    assert val["val_energy_kwh"] == pytest.approx(2.0 / 3.6e6) and test["test_energy_per_sample_j"] == pytest.approx(3.0 / 15)
    assert not (tmp_path / "efficiency_card.json").exists()
    cb.write_cards()
    card = json.loads((tmp_path / "efficiency_card.json").read_text())
    assert [s["kind"] for s in card["runs"][0]["stages"]] == ["evaluate", "evaluate"]
