"""Quickstart: train a tiny model on the CPU in nested stages and print what each cost.

    python examples/quickstart.py [--region FR] [--output meter-runs]

Runs in well under a minute on a laptop CPU. On a machine without RAPL or an NVIDIA GPU, CPU and
RAM energy are estimated (and the table says "est"); with them, they are measured ("ctr").
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import meter
from meter.report.table import stage_table


def make_data(n=32768, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = (x @ w > 0).long()
    return x, y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", default="FR", help="grid zone for emissions (see `meter regions`)")
    ap.add_argument("--output", default="meter-runs", help="output directory for the run log")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    x, y = make_data()
    x_train, y_train, x_test, y_test = x[:28672], y[:28672], x[28672:], y[28672:]
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    with meter.Meter(region=args.region, output_dir=args.output, run_name="quickstart") as m:
        with m.track("finetune", tags={"model": "mlp-64-512-512-2"}):
            for epoch in range(1, args.epochs + 1):
                with m.track(f"epoch-{epoch}") as ep:
                    for i in range(0, len(x_train), 64):
                        xb, yb = x_train[i:i + 64], y_train[i:i + 64]
                        opt.zero_grad()
                        loss_fn(model(xb), yb).backward()
                        opt.step()
                        ep.add(samples=len(xb))
        with m.track("evaluate", samples=len(x_test)) as ev, torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
            ev.tags["metric.accuracy"] = accuracy  # shown by `meter report` and used for sweeps
        run_dir = m.run_dir

    df = meter.load(run_dir)
    df = df.sort_values("span_id")
    print(stage_table(df))
    total = df[df["depth"] == 0]
    print(f"\naccuracy {accuracy:.3f}; total {total['energy_j'].sum():.1f} J, "
          f"{total['emissions_g'].sum():.4f} gCO2eq at {df['intensity_g_per_kwh'].iloc[0]:.0f} g/kWh "
          f"({df['intensity_zone'].iloc[0]}, {df['intensity_method'].iloc[0]}); run log in {run_dir}")


if __name__ == "__main__":
    main()
