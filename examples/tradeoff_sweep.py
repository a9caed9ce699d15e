"""Model size against context length: a small sweep of a tiny transformer on the CPU, with a
fine-tuning stage and an inference stage per configuration, a real accuracy on a synthetic task,
the sweep report: one row per configuration and the Pareto frontier of accuracy against energy.

    python examples/tradeoff_sweep.py [--region FR] [--output meter-runs/sweep] [--steps 120]

The task: a 128-token document of random tokens is positive when token 7 occurs more often than
token 9, and the model reads only its first 16, 48 or 128 tokens: a longer context carries more
evidence and costs more energy, a bigger model costs more per token. 2 sizes x 3 sequence lengths; under
three minutes on a laptop CPU. Writes sweep.md, report.html (overview, Pareto plot, every run) and
pareto.png; `meter report OUTPUT --metric accuracy --format html` gives the same report.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import meter
from meter.integrations.torch import counted
from meter.report import cards, plots
from meter.report.render import overview_table

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
    # Tags are the sweep's parameters; the quality metric is the tag "metric.accuracy", which
    # `meter report` puts in the overview and uses for the Pareto frontier.
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
            pred.tags["metric.accuracy"] = float((net(x).argmax(1) == y).float().mean())
        return m.run_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", default="FR", help="grid zone for emissions (see `meter regions`)")
    ap.add_argument("--output", default="meter-runs/sweep", help="output directory for the six runs and the reports")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps per configuration")
    args = ap.parse_args(argv)
    run_dirs = [run_config(size, L, args) for size in SIZES for L in SEQ_LENS]

    # The same report as `meter report DIR... --metric accuracy --format md|html`.
    rep = cards.report(run_dirs, live=False, metric="accuracy")
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "sweep.md"), "w") as f:
        f.write(rep.markdown())
    with open(os.path.join(args.output, "report.html"), "w") as f:
        f.write(rep.html())
    plots.sweep_pareto(rep.card).savefig(os.path.join(args.output, "pareto.png"), dpi=110)
    head, rows, _ = overview_table(rep.card)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    front = [r["title"] for r in rep.card["sweep"]["rows"] if r["pareto"]]
    a = rep.card["all_experiments"]
    print(f"\nPareto-optimal: {', '.join(front)}")
    print(f"wrote {args.output}/sweep.md, pareto.png, report.html; all experiments "
          f"{a['energy_kwh']:.3g} kWh, {a['emissions_g']:.3g} gCO2eq")


if __name__ == "__main__":
    main()
