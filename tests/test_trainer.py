"""A real transformers.Trainer on a tiny random BERT, on the CPU, with MeterCallback."""

import json
import os
import subprocess
import sys
import textwrap

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


DDP = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[2])
    import transformers
    from trainer_util import ToyDataset, args, tiny_bert
    from meter.integrations.transformers import MeterCallback
    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)  # one GPU per rank, as Slurm's gpu-bind gives
    a = args(out, num_train_epochs=2, per_device_train_batch_size=4, logging_steps=2, ddp_backend="gloo")
    cb = MeterCallback(region="FR", rapl_root=os.path.join(out, "no-rapl"), interval_s=0.05)
    tr = transformers.Trainer(model=tiny_bert(), args=a, train_dataset=ToyDataset(24, 1), callbacks=[cb])
    tr.train()
    logs = [h for h in tr.state.log_history if "meter_ranks" in h]
    print("RUN", json.dumps({"rank": rank, "run_dir": cb.meter.run_dir, "cards": cb.card_paths, "logs": logs}))
""")


def test_every_rank_measures_under_ddp_and_the_card_is_the_jobs(tmp_path):
    """2 real torchrun ranks on gloo, each with its own emulated GPU (100 W and 200 W, constant):
    both ranks measure, the job record and card from rank 0 count both GPUs and every sample."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler for the emulated NVML; .ci/run's machine has gcc")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "bench"))
    import fake_nvml

    lib = fake_nvml.build(str(tmp_path / "lib"))
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    out = tmp_path / "out"
    env = {**os.environ, **fake_nvml.env(lib, [(100, 100, 1, 0), (200, 200, 1, 0)]), "METER_JOB_ID": "ddp",
           "OMP_NUM_THREADS": "1", "METER_GATHER_TIMEOUT_S": "20"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=2",
                        str(script), str(out), os.path.dirname(os.path.abspath(__file__))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    runs = {r["rank"]: r for r in (json.loads(ln[4:]) for ln in p.stdout.splitlines() if ln.startswith("RUN "))}
    assert sorted(runs) == [0, 1] and all(r["run_dir"] for r in runs.values())
    infos = [json.load(open(os.path.join(runs[r]["run_dir"], "run.json"))) for r in (0, 1)]
    assert [i["distributed"]["owned_gpus"] for i in infos] == [["GPU-e0000000-0000-0000-0000-000000000000"],
                                                               ["GPU-e0000000-0000-0000-0000-000000000001"]]
    job = json.load(open(out / "meter-runs" / "job-ddp.json"))
    assert job["missing_ranks"] == [] and job["world_size"] == 2
    train = job["stages"]["train"]
    assert train["samples"] == 24 * 2  # dataset size x epochs, each rank counted its own shard
    df = meter.load(out / "meter-runs")
    gpu = df[df["name"] == "train"].groupby("rank")["gpu_energy_j"].sum()
    dur = df[df["name"] == "train"].groupby("rank")["duration_s"].sum()
    # constant power: each GPU's energy is its power x its rank's train time (mJ counter)
    assert gpu[0] == pytest.approx(100 * dur[0], rel=0.02) and gpu[1] == pytest.approx(200 * dur[1], rel=0.02)
    assert train["gpu_energy_j"] == pytest.approx(gpu[0] + gpu[1], rel=1e-9)
    assert {d["uuid"]: d["ranks"] for d in job["devices"].values() if d.get("uuid")} == {
        "GPU-e0000000-0000-0000-0000-000000000000": [0], "GPU-e0000000-0000-0000-0000-000000000001": [1]}
    assert runs[1]["cards"] == [] and runs[0]["cards"]
    # logged figures on the main process are the job's: both GPUs' power (100 + 200 W, plus a RAM
    # estimate under 1 W), samples of both shards
    logs = runs[0]["logs"]
    assert logs and all(h["meter_ranks"] == 2 for h in logs)
    assert logs[-1]["power_w"] == pytest.approx(300.0, rel=0.03)
    card = json.load(open(out / "efficiency_card.json"))
    assert len(card["runs"]) == 1 and card["runs"][0]["world_size"] == 2
    assert [r["rank"] for r in card["runs"][0]["ranks"]] == [0, 1]
    top = {s["path"]: s for s in card["runs"][0]["stages"]}
    assert top["train"]["samples"] == 48
    assert top["train"]["components"]["gpu"]["energy_j"] == pytest.approx(gpu[0] + gpu[1], rel=1e-6)
