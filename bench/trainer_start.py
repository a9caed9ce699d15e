"""Meter start inside a Trainer run: ``train_runtime`` with ``MeterCallback`` / without, on a tiny
model (a 1-layer BERT from a config, random weights, toy data, CPU), each run in a fresh process,
with and without alternating, several repetitions; the median ratio.

    python bench/trainer_start.py [--reps 11] [--samples 3000] [--gpus] [--out bench/results/trainer_start.md]

(``--out`` appends, so both runs land in one file.)

``--gpus``: the run sees two emulated GPUs (bench/fake_nvml, counters updated every 100 ms), so
meter also opens NVML and runs its 1.5 s probe of the counters' update period during training.
Bytecode caching is left on (``PYTHONDONTWRITEBYTECODE`` is removed), as on a user's machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fake_nvml  # noqa: E402

CHILD = r"""
import json, sys, tempfile
import torch, transformers
with_meter = sys.argv[1] == "1"
out = tempfile.mkdtemp()
SEQ = 16
g = torch.Generator().manual_seed(0)
items = []
for _ in range(int(sys.argv[2])):
    ids = torch.randint(1, 30, (SEQ,), generator=g)
    items.append({"input_ids": ids, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": int((ids == 5).any())})
cfg = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=SEQ, num_labels=2)
torch.manual_seed(0)
model = transformers.BertForSequenceClassification(cfg)
args = transformers.TrainingArguments(output_dir=out, num_train_epochs=1, per_device_train_batch_size=8, report_to=[],
                                      use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=10**9)
callbacks = []
if with_meter:
    from meter.integrations.transformers import MeterCallback
    callbacks = [MeterCallback(output_dir=out + "/meter-runs")]
trainer = transformers.Trainer(model=model, args=args, train_dataset=items, callbacks=callbacks)
res = trainer.train()
print(json.dumps({"train_runtime": res.metrics["train_runtime"]}))
"""


def run(py: str, with_meter: bool, n: int, env: dict) -> float:
    p = subprocess.run([py, "-c", CHILD, "1" if with_meter else "0", str(n)], capture_output=True, text=True, env=env,
                       timeout=600)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])["train_runtime"]


def bootstrap_median(xs: list[float], n: int = 5000, seed: int = 1) -> tuple[float, float]:
    """The 5th and 95th percentiles of the median of ``xs`` resampled with replacement: on this
    noisy a machine the median alone says too little."""
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.05 * n)], meds[int(0.95 * n) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--samples", type=int, default=3000, help="training samples (batch 8): sets the run's length")
    ap.add_argument("--gpus", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if a.gpus:
        lib = fake_nvml.build(os.path.join(HERE, ".work", "lib"))
        env.update(fake_nvml.env(lib, [(100.0, 300.0, 0.7, 0.0), (80.0, 250.0, 0.7, 0.2)], update_s=0.1))
    else:
        env["METER_GPUS"] = "none"
    py = sys.executable
    run(py, True, 16, env)  # warm the file cache and bytecode once
    run(py, False, 16, env)
    ratios, w, wo = [], [], []
    for i in range(a.reps):
        order = (True, False) if i % 2 == 0 else (False, True)
        got = {m: run(py, m, a.samples, env) for m in order}
        w.append(got[True])
        wo.append(got[False])
        ratios.append(got[True] / got[False])
    import meter

    lo, hi = bootstrap_median(ratios)
    lines = [f"meter {meter.__version__}, {time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
             f"transformers {__import__('transformers').__version__}; {'2 emulated GPUs' if a.gpus else 'no GPU (METER_GPUS=none)'}; "
             f"{a.samples} samples, batch 8, {a.reps} pairs in fresh processes, alternating", "",
             "| measure | with MeterCallback | without | ratio | target |", "|---|---|---|---|---|",
             f"| train_runtime (median) | {statistics.median(w):.3f} s | {statistics.median(wo):.3f} s | "
             f"{statistics.median(ratios):.3f} (median of pair ratios) | ≤ 1.10 (goal 1.05) |",
             "", f"90 % bootstrap interval of the median ratio: {lo:.3f}-{hi:.3f}",
             "", "Pair ratios: " + ", ".join(f"{r:.3f}" for r in ratios)]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        new = not os.path.exists(a.out)  # the run without and the one with --gpus go in one file
        with open(a.out, "a") as f:
            f.write(("# bench/trainer_start.py\n\n" if new else "\n") + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
