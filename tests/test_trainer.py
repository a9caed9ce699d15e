"""A real transformers.Trainer on a tiny random BERT, on the CPU, with MeterCallback."""

import json
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import meter  # noqa: E402
from meter.integrations.transformers import MeterCallback  # noqa: E402
from tests.trainer_util import SEQ, ToyDataset, tiny_bert  # noqa: E402,F401


@pytest.fixture
def trainer_run(tmp_path):
    train, evalset = ToyDataset(40, 1), ToyDataset(12, 2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8,
        per_device_eval_batch_size=4, gradient_accumulation_steps=2, eval_strategy="epoch", logging_steps=1,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3,
    )
    cb = MeterCallback(region="FR", rapl_root=str(tmp_path / "no-rapl"), gpus="none")
    trainer = transformers.Trainer(model=tiny_bert(), args=args, train_dataset=train, eval_dataset=evalset, callbacks=[cb])
    trainer.train()
    return trainer, cb, train, evalset, tmp_path


def test_span_tree_counts_and_logs(trainer_run):
    trainer, cb, train, evalset, tmp_path = trainer_run
    df = meter.load(cb.meter.run_dir).set_index("path")
    assert set(df.index) == {"train", "train/epoch-1", "train/epoch-2", "train/epoch-1/evaluate", "train/epoch-2/evaluate"}
    # samples from the batches actually seen: dataset size x epochs, plus eval nested inside
    eval_rows = df.loc[["train/epoch-1/evaluate", "train/epoch-2/evaluate"]]
    assert eval_rows["samples"].tolist() == [12, 12]
    assert eval_rows["tokens"].tolist() == [evalset.tokens()] * 2  # attention-mask tokens, not padding
    assert df.loc["train/epoch-1", "samples"] == 40
    assert df.loc["train", "samples"] == 2 * 40  # dataset size x epochs, evaluation not included
    assert df.loc["train", "tokens"] == 2 * train.tokens()
    assert df.loc["train", "flops"] == pytest.approx(trainer.state.total_flos)
    assert df.loc["train", "flops"] > 0
    # energy: inclusive parents, estimated CPU labelled
    assert df.loc["train", "energy_j"] >= df.loc["train/epoch-1", "energy_j"] + df.loc["train/epoch-2", "energy_j"] - 1e-9
    assert df.loc["train/epoch-1", "energy_j"] >= df.loc["train/epoch-1/evaluate", "energy_j"]
    assert df.loc["train", "cpu_provenance"] == "estimated"
    assert (df["emissions_g"] > 0).all()
    # the Trainer's own log history carries meter's figures, at logging steps and at evaluation
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    eval_logs = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert train_logs and all({"energy_kwh", "emissions_g", "power_w", "energy_per_sample_j"} <= set(h) for h in train_logs)
    assert len(eval_logs) == 2 and all("eval_energy_kwh" in h and "eval_energy_per_sample_j" in h for h in eval_logs)
    assert train_logs[-1]["energy_kwh"] > train_logs[0]["energy_kwh"]  # cumulative over training
    # the efficiency cards were written next to the model at the end of training
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*card*")) == ["climate_card.md", "efficiency_card.json", "efficiency_card.md"]
    card = json.loads((out / "efficiency_card.json").read_text())
    assert {s["path"] for s in card["runs"][0]["stages"]} == set(df.index)


def test_evaluate_and_predict_on_their_own(trainer_run):
    trainer, cb, train, evalset, tmp_path = trainer_run
    trainer.evaluate()
    trainer.predict(evalset)
    cb.meter.flush()
    df = meter.load(cb.meter.run_dir)
    top = df[df["depth"] == 0].set_index("name")
    assert {"evaluate", "predict"} <= set(top.index)
    assert top.loc["evaluate", "samples"] == 12 and top.loc["predict", "samples"] == 12
    assert "eval_energy_kwh" in trainer.state.log_history[-1] or any("eval_energy_kwh" in h for h in trainer.state.log_history)


def test_only_local_main_process_measures(tmp_path):
    class State:
        is_local_process_zero = False
        total_flos = 0.0
        epoch = 0

    cb = MeterCallback(output_dir=str(tmp_path / "x"))
    cb.on_train_begin(transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[]), State(), None)
    assert cb.meter is None and not os.path.exists(tmp_path / "x")
