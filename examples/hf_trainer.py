"""Fine-tune a tiny random BERT with the Hugging Face Trainer, measured per stage, with a forecast.

    python examples/hf_trainer.py [--region FR] [--budget-kwh 2e-4 [--on-budget warn]]

No download: the model is built from a BertConfig with random weights and the task is
synthetic (does token 5 occur in the sequence?). Runs on the CPU in well under a minute.
"""

import argparse

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import meter
from meter.integrations.transformers import MeterCallback
from meter.report.table import stage_table

SEQ = 32


class Toy(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            length = int(torch.randint(8, SEQ + 1, (1,), generator=g))
            ids = torch.zeros(SEQ, dtype=torch.long)
            ids[:length] = torch.randint(1, 60, (length,), generator=g)
            mask = (ids != 0).long()
            self.rows.append({"input_ids": ids, "attention_mask": mask, "labels": int((ids == 5).any())})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", default="FR")
    ap.add_argument("--output", default="meter-runs/hf")
    ap.add_argument("--budget-kwh", type=float, default=None, help="stop (or warn) when training passes this energy")
    ap.add_argument("--on-budget", choices=("stop", "warn"), default="stop")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=SEQ, num_labels=2)
    model = BertForSequenceClassification(cfg)
    targs = TrainingArguments(output_dir=args.output, num_train_epochs=2, per_device_train_batch_size=16,
                              per_device_eval_batch_size=32, eval_strategy="epoch", logging_steps=20, report_to=[],
                              use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=5e-4)
    trainer = Trainer(model=model, args=targs, train_dataset=Toy(1024, 1), eval_dataset=Toy(256, 2))
    # attach(): ahead of the reporters, so TensorBoard / W&B / MLflow log meter's keys too
    cb = MeterCallback(region=args.region, budget_kwh=args.budget_kwh, on_budget=args.on_budget).attach(trainer)
    trainer.train()
    preds = trainer.predict(Toy(256, 3))
    cb.write_cards()  # the stand-alone predict joins the cards now rather than at exit
    df = meter.load(cb.meter.run_dir).sort_values("span_id")
    print(stage_table(df))
    print(f"\naccuracy on the predict set: {(preds.predictions.argmax(-1) == preds.label_ids).mean():.3f}")
    first = next((h for h in trainer.state.log_history if "energy_forecast_kwh" in h), None)
    train = df[df["path"] == "train"].iloc[0]
    if first is not None:
        print(f"forecast at step {first['step']}: {first['energy_forecast_kwh']:.3g} kWh "
              f"({first['energy_forecast_low_kwh']:.3g} to {first['energy_forecast_high_kwh']:.3g}); "
              f"actual {train['energy_j'] / 3.6e6:.3g} kWh")
    if "tag_budget_outcome" in df.columns:
        print(f"budget: {train['tag_budget_outcome']}")
    print("meter's figures in predict()'s metrics:", {k: f"{v:.3g}" for k, v in preds.metrics.items() if "energy" in k})
    print(f"run log: {cb.meter.run_dir}; cards: {', '.join(cb.card_paths)}")


if __name__ == "__main__":
    main()
