"""A plain PyTorch loop measured per stage, with FLOP counting, per-100-step spans and J/W in a tqdm bar.

    python examples/torch_loop.py [--region FR]
"""

import argparse

import torch
from tqdm import tqdm

import meter
from meter.integrations.torch import counted, stage
from meter.report.table import stage_table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", default="FR")
    ap.add_argument("--output", default="meter-runs/torch")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(8192, 128)
    y = (x[:, :4].sum(1) > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with meter.Meter(region=args.region, output_dir=args.output, run_name="torch-loop") as m:
        with stage("train", meter_=m, flops=True):
            for epoch in range(2):
                with m.track(f"epoch-{epoch + 1}"):
                    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False)
                    for xb, yb in counted(bar, every=100, progress=True):
                        opt.zero_grad()
                        torch.nn.functional.cross_entropy(model(xb), yb).backward()
                        opt.step()
        with stage("evaluate", meter_=m, flops=True, samples=len(x)), torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
    df = meter.load(m.run_dir).sort_values("span_id")
    print(stage_table(df))
    train = df[df["path"] == "train"].iloc[0]
    print(f"\naccuracy {acc:.3f}; training: {train['flops']:.3g} FLOPs, {train['flops'] / train['duration_s']:.3g} FLOP/s, "
          f"{train['flops'] / train['energy_j']:.3g} FLOP/J")
    from meter.report.model import build

    card_train = next(s for s in build(m.run_dir)["runs"][0]["stages"] if s["path"] == "train")
    print(f"train counted no samples itself; the card sums its epochs: {card_train['samples']:.0f} samples "
          f"({', '.join(card_train['counts_from_children'])} from sub-stages), {card_train['energy_per_sample_j']:.3g} J/sample")


if __name__ == "__main__":
    main()
