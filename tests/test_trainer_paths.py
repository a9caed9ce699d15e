"""Every Trainer path with real Trainers on tiny models, energy from a FakeSensor the test drives:
fresh, evaluate/predict alone, a callback's eval-mode forward, a manual forward, generation,
resume from a mid-epoch checkpoint, a retry after an exception, logs equal to the card."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from meter.integrations.transformers import MeterCallback  # noqa: E402
from tests.trainer_util import Energy, Seq2SeqData, SpendPerStep, ToyDataset, args, spans, tiny_bert, tiny_t5  # noqa: E402


def run_trainer(tmp_path, energy=None, extra=(), trainer_kw=None, **kw):
    energy = energy or Energy(tmp_path)
    cb = MeterCallback(meter=energy.meter)
    spend = SpendPerStep(energy, per_step=10.0, per_eval_batch=1.0)
    train, evalset = ToyDataset(40, 1), ToyDataset(12, 2)
    trainer = transformers.Trainer(model=tiny_bert(), args=args(tmp_path / "out", **kw), train_dataset=train,
                                   eval_dataset=evalset, callbacks=[spend, cb, *extra], **(trainer_kw or {}))
    return trainer, cb, energy, train, evalset


def test_fresh_train_epochs_flops_and_logs_equal_the_card(tmp_path):
    trainer, cb, energy, train, evalset = run_trainer(tmp_path, eval_strategy="epoch", gradient_accumulation_steps=1)
    trainer.train()
    df = spans(energy.meter).set_index("path")
    assert set(df.index) == {"train", "train/epoch-1", "train/epoch-2", "train/epoch-1/evaluate", "train/epoch-2/evaluate"}
    # 5 steps of 8 per epoch; every epoch gets its FLOPs, and they add up to the Trainer's own
    assert df.loc["train/epoch-1", "samples"] == 40 and df.loc["train/epoch-2", "samples"] == 40
    assert df.loc["train/epoch-1", "flops"] == pytest.approx(df.loc["train/epoch-2", "flops"])
    assert df.loc["train/epoch-1", "flops"] + df.loc["train/epoch-2", "flops"] == pytest.approx(trainer.state.total_flos)
    assert df.loc["train", "flops"] == pytest.approx(trainer.state.total_flos)
    assert df.loc["train", "samples"] == 80 and df.loc["train", "tokens"] == 2 * train.tokens()
    # energy: 10 J per step, 1 J per evaluation batch (3 batches of 4), nothing else moved the counter
    assert df.loc["train", "energy_j"] == pytest.approx(10 * 10 + 2 * 3 * 1.0)
    assert df.loc["train/epoch-1/evaluate", "energy_j"] == pytest.approx(3.0)
    assert df.loc["train/epoch-1/evaluate", "samples"] == 12
    # the log's figures are the card's: J/sample excludes the nested evaluation, energy is inclusive
    card = json.loads((tmp_path / "out" / "efficiency_card.json").read_text())
    st = {s["path"]: s for s in card["runs"][0]["stages"]}
    last = [h for h in trainer.state.log_history if "train_runtime" in h][-1]
    assert st["train"]["energy_per_sample_j"] == pytest.approx(100.0 / 80)
    assert last["energy_per_sample_j"] == pytest.approx(st["train"]["energy_per_sample_j"])
    assert last["energy_kwh"] == pytest.approx(st["train"]["energy_kwh"])
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["eval_energy_per_sample_j"] for h in evals] == pytest.approx([3.0 / 12] * 2)
    assert st["train/epoch-1/evaluate"]["energy_per_sample_j"] == pytest.approx(3.0 / 12)
    # cumulative over training: the step logs grow by 10 J per step
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert [round(h["energy_kwh"] * 3.6e6, 6) for h in steps[:3]] == [10.0, 20.0, 30.0]


def test_eval_mode_forward_in_a_user_callback_is_not_an_evaluation(tmp_path):
    class SampleGeneration(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            model.eval()
            with torch.no_grad():
                model(input_ids=torch.ones(16, 8, dtype=torch.long))
            model.train()

    trainer, cb, energy, train, _ = run_trainer(tmp_path, extra=[SampleGeneration()], eval_strategy="no")
    trainer.train()
    df = spans(energy.meter).set_index("path")
    assert set(df.index) == {"train", "train/epoch-1", "train/epoch-2"}
    assert df.loc["train", "samples"] == 80 and df.loc["train", "tokens"] == 2 * train.tokens()


def test_evaluate_and_predict_without_training(tmp_path):
    trainer, cb, energy, _, evalset = run_trainer(tmp_path)
    # a manual forward long before evaluate() is not part of it, nor is the energy spent meanwhile
    trainer.model.eval()
    with torch.no_grad():
        trainer.model(input_ids=torch.ones(2, 8, dtype=torch.long))
    energy.add(500.0)
    metrics = trainer.evaluate()
    out = trainer.predict(evalset)
    df = spans(energy.meter)
    top = df[df["depth"] == 0].set_index("name")
    assert list(df["path"]) == ["evaluate", "predict"]
    assert top.loc["evaluate", "samples"] == 12 and top.loc["predict", "samples"] == 12
    assert top.loc["evaluate", "tokens"] == evalset.tokens()
    assert top.loc["evaluate", "energy_j"] == pytest.approx(3.0) and top.loc["predict", "energy_j"] == pytest.approx(3.0)
    assert metrics["eval_energy_kwh"] == pytest.approx(3.0 / 3.6e6)
    assert out.metrics["test_energy_kwh"] == pytest.approx(3.0 / 3.6e6)
    assert out.metrics["test_energy_per_sample_j"] == pytest.approx(3.0 / 12)
    # cards are written once, not per call: pending until write_cards() (or exit)
    assert not (tmp_path / "out" / "efficiency_card.json").exists()
    paths = cb.write_cards()
    card = json.loads((tmp_path / "out" / "efficiency_card.json").read_text())
    assert {s["path"] for s in card["runs"][0]["stages"]} == {"evaluate", "predict"}
    assert len(paths) == 3 and cb.write_cards() == paths


def test_cards_of_a_stand_alone_predict_are_written_at_exit(tmp_path):
    script = tmp_path / "predict.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {os.getcwd()!r}); sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
        import transformers
        from meter.integrations.transformers import MeterCallback
        from tests.trainer_util import ToyDataset, args, tiny_bert
        cb = MeterCallback(region="FR", gpus="none", rapl_root="/nonexistent")
        t = transformers.Trainer(model=tiny_bert(), args=args("out"), callbacks=[cb])
        t.predict(ToyDataset(6, 3))
        assert not __import__("os").path.exists("out/efficiency_card.json")
    """))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((tmp_path / "out" / "efficiency_card.json").read_text())
    assert [s["path"] for s in card["runs"][0]["stages"]] == ["predict"]
    assert card["runs"][0]["stages"][0]["samples"] == 6
    # the default run log is not a directory that could shadow `import meter`
    assert os.listdir(tmp_path / "out" / "meter-runs")


def test_generation_counts_inputs_and_generated_tokens(tmp_path):
    energy = Energy(tmp_path)
    cb = MeterCallback(meter=energy.meter)
    spend = SpendPerStep(energy, per_eval_batch=2.0)
    data = Seq2SeqData(10, 4)
    model = tiny_t5()
    gen_args = transformers.Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_eval_batch_size=4, predict_with_generate=True,
        generation_max_length=12, report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = transformers.Seq2SeqTrainer(model=model, args=gen_args, data_collator=_pad_collator, callbacks=[spend, cb])
    out = trainer.predict(data)
    df = spans(energy.meter).set_index("path")
    assert list(df.index) == ["predict"]
    row = df.loc["predict"]
    assert row["samples"] == 10  # inputs, not decoding steps
    assert row["tokens"] == data.tokens()
    preds = torch.as_tensor(out.predictions)
    generated = int(((preds[:, 1:] != 0) & (preds[:, 1:] != -100)).sum())
    assert generated > 10 and row["output_tokens"] == generated
    assert row["energy_j"] == pytest.approx(3 * 2.0)  # 3 batches
    assert out.metrics["test_energy_per_output_token_j"] == pytest.approx(6.0 / generated)
    assert out.metrics["test_energy_per_sample_j"] == pytest.approx(6.0 / 10)
    cb.write_cards()
    card = json.loads((tmp_path / "out" / "efficiency_card.json").read_text())
    st = card["runs"][0]["stages"][0]
    assert st["kind"] == "predict" and st["energy_per_output_token_j"] == pytest.approx(6.0 / generated)
    assert "J/output token" in (tmp_path / "out" / "efficiency_card.md").read_text()


def _pad_collator(items):
    n = max(len(x["input_ids"]) for x in items)
    m = max(len(x["labels"]) for x in items)
    return {
        "input_ids": torch.tensor([x["input_ids"] + [0] * (n - len(x["input_ids"])) for x in items]),
        "attention_mask": torch.tensor([x["attention_mask"] + [0] * (n - len(x["attention_mask"])) for x in items]),
        "labels": torch.tensor([x["labels"] + [-100] * (m - len(x["labels"])) for x in items]),
    }


class StopAt(transformers.TrainerCallback):
    def __init__(self, step, exc=RuntimeError):
        self.step, self.exc, self.fired = step, exc, False

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step and not self.fired:
            self.fired = True
            raise self.exc(f"interrupted at step {self.step}")


def test_resume_from_a_mid_epoch_checkpoint(tmp_path):
    first, first_cb = run_trainer(tmp_path / "a", extra=[StopAt(6)], save_strategy="steps", save_steps=4)[:2]
    with pytest.raises(RuntimeError):
        first.train()
    first_cb.meter.close()  # that process ends here; its open spans are recorded as incomplete
    ckpt = tmp_path / "a" / "out" / "checkpoint-4"
    saved = json.loads((ckpt / "trainer_state.json").read_text())
    assert saved["epoch"] == pytest.approx(0.8)
    trainer, cb, energy, train, _ = run_trainer(tmp_path / "b", save_strategy="no")
    trainer.train(resume_from_checkpoint=str(ckpt))
    df = spans(energy.meter).set_index("path")
    assert list(df.index) == ["train/epoch-1", "train/epoch-2", "train"]  # epoch 1 resumed, no epoch named twice
    assert df.loc["train/epoch-1", "samples"] == 8 and df.loc["train/epoch-1", "tag_resumed_at_step"] == 4
    assert df.loc["train/epoch-2", "samples"] == 40
    # FLOPs of this run only: the Trainer's total includes the 4 steps done before the resume
    assert df.loc["train", "flops"] == pytest.approx(trainer.state.total_flos - saved["total_flos"])
    assert df.loc["train", "flops"] == pytest.approx(df.loc["train/epoch-1", "flops"] + df.loc["train/epoch-2", "flops"])
    assert df.loc["train", "energy_j"] == pytest.approx(6 * 10.0)


def test_retry_after_an_exception_starts_a_clean_tree(tmp_path, monkeypatch):
    trainer, cb, energy, _, _ = run_trainer(tmp_path, extra=[StopAt(3, KeyboardInterrupt)])
    try:
        trainer.train()
    except KeyboardInterrupt as exc:
        monkeypatch.setattr(sys, "last_value", exc, raising=False)  # what a notebook records
    trainer.train()
    df = spans(energy.meter)
    assert df[df["depth"] == 0]["name"].tolist() == ["train", "train"]
    assert set(df["path"]) == {"train", "train/epoch-1", "train/epoch-2"}
    first = df[df["run_id"].notna()].sort_values("start_utc")
    broken = first[first["tag_interrupted"] == True]  # noqa: E712
    assert set(broken["path"]) == {"train", "train/epoch-1"}
    assert set(broken["tag_exception"]) == {"KeyboardInterrupt"}
    assert set(broken["status"]) == {"incomplete"}
    ok = df[(df["depth"] == 0) & (df["tag_interrupted"] != True)]  # noqa: E712
    assert ok["samples"].tolist() == [80]


def test_token_counts_are_read_from_the_device_at_logs_and_closes_only(tmp_path):
    from tests.device_reads import DeviceReads

    def collate(items):
        batch = transformers.default_data_collator(items)
        batch["attention_mask"] = batch["attention_mask"].as_subclass(DeviceReads)
        return batch

    trainer, cb, energy, train, _ = run_trainer(tmp_path, logging_steps=5, trainer_kw={"data_collator": collate})
    DeviceReads.reads = 0
    trainer.train()
    df = spans(energy.meter).set_index("path")
    assert df.loc["train", "tokens"] == 2 * train.tokens()
    # 10 steps: one read for train at each of the 2 step logs (the final log finds nothing new) and one
    # at each of the 2 epoch closes; never one per step
    assert DeviceReads.reads == 4


def test_attach_puts_meter_keys_in_front_of_reporters(tmp_path):
    class Reporter(transformers.TrainerCallback):  # what TensorBoard, W&B and MLflow do with on_log
        def __init__(self):
            self.seen = []

        def on_log(self, args, state, control, logs=None, **kw):
            self.seen.append(set(logs))

    energy = Energy(tmp_path)
    late, early = Reporter(), Reporter()
    trainer = transformers.Trainer(model=tiny_bert(), args=args(tmp_path / "out", num_train_epochs=1),
                                   train_dataset=ToyDataset(16, 1), callbacks=[late])
    cb = MeterCallback(meter=energy.meter).attach(trainer)
    trainer.add_callback(early)
    trainer.train()
    assert all("energy_kwh" in keys for keys in late.seen) and all("energy_kwh" in keys for keys in early.seen)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names[:3] == ["DefaultFlowCallback", "MeterCallback", "Reporter"]
    assert cb in trainer.callback_handler.callbacks


def test_without_attach_a_callback_listed_before_meter_misses_its_keys(tmp_path):
    seen = []

    class Reporter(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(set(logs))

    energy = Energy(tmp_path)
    trainer = transformers.Trainer(model=tiny_bert(), args=args(tmp_path / "out", num_train_epochs=1),
                                   train_dataset=ToyDataset(16, 1), callbacks=[Reporter(), MeterCallback(meter=energy.meter)])
    trainer.train()
    assert seen and not any("energy_kwh" in keys for keys in seen)  # why the docs say: attach(), or list meter first
    assert all("energy_kwh" in h for h in trainer.state.log_history)  # the history has them either way


def test_eval_on_start_and_several_eval_sets(tmp_path):
    energy = Energy(tmp_path)
    cb = MeterCallback(meter=energy.meter)
    spend = SpendPerStep(energy, per_step=10.0, per_eval_batch=1.0)
    evals = {"a": ToyDataset(8, 2), "b": ToyDataset(4, 3)}
    trainer = transformers.Trainer(model=tiny_bert(), args=args(tmp_path / "out", num_train_epochs=1, eval_strategy="epoch",
                                                                eval_on_start=True),
                                   train_dataset=ToyDataset(16, 1), eval_dataset=evals, callbacks=[spend, cb])
    trainer.train()
    df = spans(energy.meter)
    # before the first epoch the evaluations nest under train; after it, under the epoch
    assert df["path"].tolist() == ["train/evaluate", "train/evaluate", "train/epoch-1/evaluate", "train/epoch-1/evaluate",
                                   "train/epoch-1", "train"]
    assert df["samples"].tolist() == [8, 4, 8, 4, 16, 16]
    assert df["energy_j"].tolist()[:4] == pytest.approx([2.0, 1.0, 2.0, 1.0])
    logs = [h for h in trainer.state.log_history if "eval_a_loss" in h or "eval_b_loss" in h]
    assert [round(h.get("eval_a_energy_per_sample_j", h.get("eval_b_energy_per_sample_j")), 6) for h in logs] == [0.25] * 4
    assert df.set_index("path").loc["train", "energy_j"] == pytest.approx(2 * 10.0 + 6.0)
