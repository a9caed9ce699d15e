"""Energy budgets and the whole-run forecast with real Trainers; energy from a FakeSensor that
spends a known amount per step, so the stopping step and the forecast are checkable."""

import json
import logging
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import meter  # noqa: E402
from meter.integrations.transformers import MeterCallback  # noqa: E402
from tests.trainer_util import Energy, SpendPerStep, ToyDataset, args, spans, tiny_bert  # noqa: E402


def make(tmp_path, cb_kw, spend_kw, **kw):
    energy = Energy(tmp_path)
    cb = MeterCallback(meter=energy.meter, **cb_kw)
    spend = SpendPerStep(energy, **spend_kw)
    trainer = transformers.Trainer(model=tiny_bert(), args=args(tmp_path / "out", **kw), train_dataset=ToyDataset(40, 1),
                                   callbacks=[spend, cb])
    return trainer, cb, energy, spend


def test_budget_stops_training_with_a_checkpoint_and_the_card_says_so(tmp_path, caplog):
    # 10 J per step; 55 J = 1.528e-5 kWh is passed at the end of step 6 (60 J)
    trainer, cb, energy, _ = make(tmp_path, {"budget_kwh": 55 / 3.6e6}, {"per_step": 10.0}, num_train_epochs=3,
                                  save_strategy="epoch")
    trainer.train()
    assert trainer.state.global_step == 6  # of 15
    assert (tmp_path / "out" / "checkpoint-6").is_dir()  # saved as the Trainer saves at stop
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    df = spans(energy.meter).set_index("path")
    assert df.loc["train", "energy_j"] == pytest.approx(60.0)
    assert df.loc["train", "tag_stopped_at_step"] == 6
    assert df.loc["train", "tag_budget_outcome"].startswith("stopped: energy 1.667e-05 kWh passed the budget")
    assert [r.message for r in caplog.records if "passed the budget" in r.message] == [
        "meter: energy 1.667e-05 kWh passed the budget of 1.52778e-05 kWh at step 6; stopping training (on_budget='stop')"]
    card = json.loads((tmp_path / "out" / "efficiency_card.json").read_text())
    (b,) = card["runs"][0]["budgets"]
    assert b["path"] == "train" and b["stopped_at_step"] == 6 and b["outcome"].startswith("stopped")
    md = (tmp_path / "out" / "efficiency_card.md").read_text()
    assert "## Budget and forecast" in md and "on_budget=stop" in md


def test_budget_warn_warns_once_and_training_runs_to_the_end(tmp_path, caplog):
    trainer, cb, energy, _ = make(tmp_path, {"budget_g": 1e-3, "on_budget": "warn"}, {"per_step": 10.0})
    trainer.train()
    assert trainer.state.global_step == 10
    g_per_j = energy.meter.intensity().g_per_kwh / 3.6e6  # FR, PUE 1
    first = next(k for k in range(1, 11) if 10 * k * g_per_j > 1e-3)
    msgs = [r.message for r in caplog.records if "budget" in r.message and "passed" in r.message]
    assert len(msgs) == 1 and f"at step {first};" in msgs[0] and "training continues" in msgs[0]
    df = spans(energy.meter).set_index("path")
    assert df.loc["train", "tag_budget_outcome"].startswith("exceeded (warned): emissions")


def test_forecast_within_its_band_on_a_steady_run(tmp_path):
    # 40 steps of 10 J +/- 3 J (seeded): the first forecast comes at 5% of the steps, then updates
    trainer, cb, energy, spend = make(tmp_path, {}, {"per_step": 10.0, "spread": 3.0, "seed": 7},
                                      num_train_epochs=8, logging_steps=1)
    trainer.train()
    actual_j = sum(spend.spent)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert "energy_forecast_kwh" not in logs[1] and "energy_forecast_kwh" in logs[2]  # after 3 steps (>= 5% of 40)
    first, last = logs[2], logs[-2]
    for h in (first, last):
        assert h["energy_forecast_low_kwh"] * 3.6e6 <= actual_j <= h["energy_forecast_high_kwh"] * 3.6e6
    width = [h["energy_forecast_high_kwh"] - h["energy_forecast_low_kwh"] for h in logs[2:-1]]
    assert width[-1] < width[0] / 5  # the band narrows as the run goes
    assert abs(last["energy_forecast_kwh"] * 3.6e6 - actual_j) < abs(first["energy_forecast_kwh"] * 3.6e6 - actual_j) + 1.0
    assert first["emissions_forecast_g"] == pytest.approx(first["energy_forecast_kwh"] * energy.meter.intensity().g_per_kwh)
    card = json.loads((tmp_path / "out" / "efficiency_card.json").read_text())
    (f,) = card["runs"][0]["forecasts"]
    assert f["at_step"] == 3 and f["steps"] == 40 and f["within_band"] is True
    assert f["actual_kwh"] * 3.6e6 == pytest.approx(actual_j)
    assert "| train | 3 of 40 |" in (tmp_path / "out" / "efficiency_card.md").read_text()


def test_forecast_over_budget_is_warned_before_the_budget_is_reached(tmp_path, caplog):
    trainer, cb, energy, _ = make(tmp_path, {"budget_kwh": 80 / 3.6e6, "on_budget": "warn"}, {"per_step": 10.0})
    with caplog.at_level(logging.WARNING, logger="meter"):
        trainer.train()
    msgs = [r.message for r in caplog.records if "forecast" in r.message]
    assert len(msgs) == 1 and "forecast to use 2.778e-05 kWh" in msgs[0]
    order = [r.message for r in caplog.records if "budget" in r.message]
    assert "forecast" in order[0] and "passed the budget" in order[1]


@pytest.mark.parametrize("bad, match", [({"budget_kwh": 0}, "budget_kwh=0"), ({"budget_g": "1"}, "budget_g='1'"),
                                        ({"budget_kwh": 1, "on_budget": "halt"}, "on_budget='halt'")])
def test_bad_budget_is_a_clear_error(bad, match):
    with pytest.raises(meter.ConfigError, match=match):
        MeterCallback(**bad)


def test_forecast_reads_the_span_only_when_it_decides_something(tmp_path, monkeypatch):
    # 200 steps, logged every 25, no budget: after the first forecast (step 10, 5%) the training
    # span is read at logging steps and the last step only (interval_s=3600 here), not per step.
    reads = []
    real = meter.Span.snapshot
    monkeypatch.setattr(meter.Span, "snapshot", lambda self: reads.append(self.name) or real(self))
    energy = Energy(tmp_path)
    cb = MeterCallback(meter=energy.meter)
    spend = SpendPerStep(energy, per_step=10.0, spread=3.0, seed=3)
    trainer = transformers.Trainer(model=tiny_bert(), args=args(tmp_path / "out", num_train_epochs=4, logging_steps=25),
                                   train_dataset=ToyDataset(400, 1), callbacks=[spend, cb])
    trainer.train()
    assert trainer.state.global_step == 200
    train_reads = reads.count("train")
    assert train_reads <= 10 + 2 * 8 + 3  # per step to the first forecast, then per log (+ on_log's own)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == list(range(25, 201, 25))
    actual_j = sum(spend.spent)
    for h in logs:
        assert h["energy_forecast_low_kwh"] * 3.6e6 <= actual_j <= h["energy_forecast_high_kwh"] * 3.6e6
    # Each log's forecast was read at its own step (a logging step forces a reading): the band
    # narrows at every log, as the remaining steps fall.
    width = [h["energy_forecast_high_kwh"] - h["energy_forecast_low_kwh"] for h in logs]
    assert all(b < a for a, b in zip(width, width[1:], strict=False))
    assert h["energy_forecast_kwh"] * 3.6e6 == pytest.approx(actual_j, rel=1e-6)  # at the last step: exact


def test_grouped_readings_estimate_the_per_step_spread():
    # Per-step energies N(10, 3) read in groups of 1-20 steps: the spread of group means gives the
    # per-step sd back (weighted Welford), where treating each group mean as one step would give
    # about 3 / sqrt(10). With groups of 1 it is the plain per-step estimate.
    from meter.integrations._common import Forecast

    rng = random.Random(11)
    grouped, single, steps = Forecast(), Forecast(), []
    grouped.step(0.0), single.step(0.0)  # the warm-up reading is left out of the statistics
    while len(steps) < 20000:
        k = rng.randint(1, 20)
        group = [rng.gauss(10.0, 3.0) for _ in range(k)]
        steps += group
        grouped.step(sum(group) / k, k)
        for e in group:
            single.step(e)
    for f in (grouped, single):
        f.update(sum(steps), 0.0, len(steps), 2 * len(steps), False, 50.0, 1.0)
    n = len(steps)  # remaining = done = k: band = 2 sd sqrt(n (1 + n / k)) = 2 sd sqrt(2 n)
    sd = {name: (f.last["energy_forecast_high_kwh"] - f.last["energy_forecast_kwh"]) * 3.6e6 / (2 * (2 * n) ** 0.5)
          for name, f in (("grouped", grouped), ("single", single))}
    assert sd["single"] == pytest.approx(3.0, rel=0.03)  # 20000 samples: sd of the sd estimate ~0.5%
    assert sd["grouped"] == pytest.approx(3.0, rel=0.1)  # ~1900 groups: ~1.6% sd; 10% is 6 sigma
    assert grouped.k == single.k == len(steps)
