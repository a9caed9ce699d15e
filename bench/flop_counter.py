"""Cost of FLOP counting (meter.integrations.torch.stage(flops=True)) on an eager CPU loop.

    python bench/flop_counter.py

Times the same training step of a small MLP with and without FlopCounterMode, interleaved in
one run, and prints the ratio.
"""

import statistics
import time

import torch

from meter.integrations.torch import FlopCount


def main():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 256)

    def step():
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()

    for _ in range(5):
        step()
    plain, counted = [], []
    for _ in range(30):
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        with FlopCount() as fc:
            step()
        t2 = time.perf_counter()
        plain.append(t1 - t0)
        counted.append(t2 - t1)
    p, c = statistics.median(plain), statistics.median(counted)
    print("| step | median ms | ratio |\n|---|---|---|")
    print(f"| plain | {p * 1e3:.2f} | 1.00 |")
    print(f"| with FlopCounterMode | {c * 1e3:.2f} | {c / p:.2f} |")
    print(f"\nFLOPs per step counted: {fc.total:,} (MLP 256-1024-256, batch 64, forward + backward)")


if __name__ == "__main__":
    main()
