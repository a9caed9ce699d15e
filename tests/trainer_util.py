"""Shared pieces of the Trainer tests: a tiny BERT and T5 from configs, data made here, and energy
from a FakeSensor that the tests drive, so that every figure is known exactly."""

import random

import torch
import transformers

import meter
from meter.testing import FakeSensor

SEQ = 16


class ToyDataset(torch.utils.data.Dataset):
    """Padded sequences of random length: label = whether token 5 occurs."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(4, SEQ + 1, (1,), generator=g))
            ids = torch.zeros(SEQ, dtype=torch.long)
            ids[:length] = torch.randint(1, 30, (length,), generator=g)
            mask = torch.zeros(SEQ, dtype=torch.long)
            mask[:length] = 1
            self.items.append({"input_ids": ids, "attention_mask": mask, "labels": int((ids == 5).any())})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def tokens(self):
        return int(sum(int(x["attention_mask"].sum()) for x in self.items))


def tiny_bert():
    cfg = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=SEQ, num_labels=2)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def args(out, **kw):
    base = dict(output_dir=str(out), num_train_epochs=2, per_device_train_batch_size=8, per_device_eval_batch_size=4,
                logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3)
    base.update(kw)
    return transformers.TrainingArguments(**base)


class Energy:
    """A FakeSensor counter (exact joules) and a Meter reading it, on the real clock."""

    def __init__(self, tmp_path, region="FR"):
        self.sensor = FakeSensor.counter()
        self.meter = meter.Meter(region=region, sensors=[self.sensor], output_dir=str(tmp_path / "runs"), interval_s=3600)

    def add(self, joules):
        self.sensor.values["gpu:0"] += joules

    @property
    def total_j(self):
        return self.sensor.values["gpu:0"]


class SpendPerStep(transformers.TrainerCallback):
    """Spends energy as a training step would: ``per_step(step)`` J at each step's start, and
    ``per_eval_batch`` J for each evaluation batch."""

    def __init__(self, energy, per_step=10.0, per_eval_batch=0.0, seed=None, spread=0.0):
        self.energy, self.per_step, self.per_eval_batch = energy, per_step, per_eval_batch
        self.rng = random.Random(seed)
        self.spread = spread
        self.spent = []

    def on_step_begin(self, args, state, control, **kw):
        j = self.per_step + (self.rng.uniform(-self.spread, self.spread) if self.spread else 0.0)
        self.spent.append(j)
        self.energy.add(j)

    def on_prediction_step(self, args, state, control, **kw):
        self.energy.add(self.per_eval_batch)


def spans(m):
    m.flush()
    return meter.load(m.run_dir)


def tiny_t5():
    cfg = transformers.T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                                num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(cfg)


class Seq2SeqData(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(3, 9, (1,), generator=g))
            ids = torch.randint(2, 40, (length,), generator=g).tolist() + [1]
            self.items.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(reversed(ids[:-1])) + [1]})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def tokens(self):
        return sum(len(x["input_ids"]) for x in self.items)
