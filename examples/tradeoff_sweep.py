"""Model size against context length: a small sweep of a tiny transformer on the CPU, with a
fine-tuning stage and an inference stage per configuration, a real accuracy on a synthetic task,
the trade-off table and the Pareto frontier of accuracy against energy.

    python examples/tradeoff_sweep.py [--region FR] [--output meter-runs/sweep] [--steps 120]

The task: a 128-token document of random tokens is positive when token 7 occurs more often than
token 9, and the model reads only its first 16, 48 or 128 tokens: a longer context carries more
evidence and costs more energy, a bigger model costs more per token. 2 sizes x 3 sequence lengths; under
three minutes on a laptop CPU. Writes sweep.md (the table), pareto.png and report.html.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd
import torch
from torch import nn

import meter
from meter.integrations.torch import counted
from meter.report import analysis, model, plots
from meter.report.html import render as render_html
from meter.report.render import fmt, md_table
from meter.runlog import find_runs, read_run

SIZES = {"small": dict(d=32, layers=1, heads=2), "base": dict(d=64, layers=2, heads=4)}
SEQ_LENS = (16, 48, 128)
VOCAB = 16
FULL_LEN = 128


class Classifier(nn.Module):
    def __init__(self, d, layers, heads, seq_len):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(seq_len, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, batch_first=True, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        return self.head(self.enc(self.emb(x) + self.pos).mean(1))


def make_data(n, seq_len, seed):
    """Labels come from a 128-token document; the model reads its first ``seq_len`` tokens."""
    g = torch.Generator().manual_seed(seed)
    doc = torch.randint(0, VOCAB, (n, FULL_LEN), generator=g)
    y = ((doc == 7).sum(1) > (doc == 9).sum(1)).long()
    return torch.utils.data.TensorDataset(doc[:, :seq_len].contiguous(), y)


def run_config(size, seq_len, args):
    torch.manual_seed(0)
    net = Classifier(seq_len=seq_len, **SIZES[size])
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    train = torch.utils.data.DataLoader(make_data(args.steps * 32, seq_len, 1), batch_size=32, shuffle=True)
    test = make_data(1024, seq_len, 2)
    tags = {"model": size, "seq_len": seq_len, "params": sum(p.numel() for p in net.parameters())}
    with meter.Meter(region=args.region, output_dir=args.output, run_name=f"{size}-seq{seq_len}") as m:
        with m.track("finetune", tags=tags):
            net.train()
            for xb, yb in counted(train, tokens=False):
                opt.zero_grad()
                nn.functional.cross_entropy(net(xb), yb).backward()
                opt.step()
        net.eval()
        with m.track("predict", samples=len(test), tokens=len(test) * seq_len, tags=tags) as pred, torch.no_grad():
            x, y = test.tensors
            acc = float((net(x).argmax(1) == y).float().mean())
            pred.tags["accuracy"] = acc
        return m.run_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", default="FR")
    ap.add_argument("--output", default="meter-runs/sweep")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps per configuration")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run_dirs = [run_config(size, L, args) for size in SIZES for L in SEQ_LENS]

    df = meter.load(run_dirs)
    ft = df[df["name"] == "finetune"].set_index("run_id")
    pr = df[df["name"] == "predict"].set_index("run_id")
    table = pd.DataFrame({
        "model": ft["tag_model"], "seq_len": ft["tag_seq_len"].astype(int), "params": ft["tag_params"].astype(int),
        "accuracy": pr["tag_accuracy"], "finetune_s": ft["duration_s"], "finetune_J": ft["energy_j"],
        "predict_J_per_sample": pr["energy_j"] / pr["samples"], "predict_samples_per_s": pr["samples"] / pr["duration_s"],
        "total_J": ft["energy_j"] + pr["energy_j"], "gCO2eq": ft["emissions_g"] + pr["emissions_g"],
    })
    front = analysis.pareto_front(table.reset_index(), quality="accuracy", cost="total_J")
    table["pareto"] = table.index.isin(front["run_id"])
    table["label"] = table["model"] + "/" + table["seq_len"].astype(str)
    os.makedirs(args.output, exist_ok=True)
    shown = table.drop(columns=["label"]).reset_index()
    head = list(shown.columns)
    rows = [[fmt(v) if isinstance(v, float) else str(v) for v in r] for r in shown.itertuples(index=False)]
    with open(os.path.join(args.output, "sweep.md"), "w") as f:
        f.write("\n".join(md_table(head, rows)) + "\n")
    print(table.drop(columns=["label"]).to_string(float_format=lambda v: f"{v:.4g}"))
    fig = plots.pareto_plot(table, quality="accuracy", cost="total_J", label="label")
    fig.savefig(os.path.join(args.output, "pareto.png"), dpi=110)
    card = model.build(run_dirs, live=False, df=df)
    html = render_html(card, [read_run(d) for d in find_runs(run_dirs)],
                       extra_figures=[("Pareto frontier: accuracy against fine-tuning + inference energy",
                                       plots.pareto_plot(table, quality="accuracy", cost="total_J", label="label"))])
    with open(os.path.join(args.output, "report.html"), "w") as f:
        f.write(html)
    print(f"\nPareto-optimal: {', '.join(table[table['pareto']]['label'])}")
    print(f"wrote {args.output}/sweep.md, pareto.png, report.html; all experiments "
          f"{card['all_experiments']['energy_kwh']:.3g} kWh, {card['all_experiments']['emissions_g']:.3g} gCO2eq")


if __name__ == "__main__":
    main()
