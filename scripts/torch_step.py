"""PyTorch CPU baseline for the README's step-time table: one training step
(forward, backward, Adam update) of TinyConv at batch 64 on CIFAR-shaped inputs,
the same model, batch, loss and optimizer as `benches/benches/train_step.rs`.

    python3 scripts/torch_step.py [--threads 2] [--steps 30]

Prints the median and the quartiles of the step time in milliseconds. PyTorch is
not a dependency of the project: install it (CPU only) into a virtual environment
to run this, e.g. `pip install --no-deps torch` plus `numpy sympy networkx jinja2
fsspec filelock typing-extensions`.
"""

import argparse
import statistics
import time

import torch
from torch import nn


def tiny_conv() -> nn.Module:
    """REX-SC's TinyConv in float (specs/sc-rexsc.md §8.1), as `approx` builds it."""
    layers = []
    ch = 3
    for out in (32, 32, 64):
        layers += [
            nn.Conv2d(ch, out, 5, padding=2, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Hardtanh(0.0, 1.0),
        ]
        ch = out
    layers += [nn.Conv2d(ch, 10, 4, bias=False), nn.Flatten(), nn.BatchNorm1d(10)]
    return nn.Sequential(*layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = tiny_conv()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    n = args.batch * 3 * 32 * 32
    x = (torch.arange(n) * 7919 % 256).float().div(255.0).reshape(args.batch, 3, 32, 32)
    y = torch.arange(args.batch) % 10

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    q = statistics.quantiles(times, n=4)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}: "
        f"median {statistics.median(times):.1f} ms (quartiles {q[0]:.1f}-{q[2]:.1f})"
    )


if __name__ == "__main__":
    main()
