"""Low-precision cyclical SGLD on scikit-learn's digits: an MLP trained with LowPrecisionSGLD
(8-bit BFP VC, registers sized from lr/T/N), a standard torch scheduler, sample collection, Bayesian
model averaging and checkpoint/resume. Run: python examples/digits_sgld.py [--epochs 24] [--ckpt c.pt]"""
import argparse
import pathlib

import torch
from sklearn.datasets import load_digits
from torch import nn

from emulator.metrics.evaluation import BayesianAverage
from emulator.optim import LowPrecisionSGLD

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=24)
ap.add_argument("--cycles", type=int, default=3)
ap.add_argument("--samples-per-cycle", type=int, default=2)
ap.add_argument("--n-train", type=int, default=1297)
ap.add_argument("--ckpt", type=pathlib.Path, default=None)
ap.add_argument("--stop-after", type=int, default=None)                 # epochs; simulates an interrupted run
args = ap.parse_args()

x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
x_train, y_train, x_test, y_test = x[:args.n_train], y[:args.n_train], x[1297:], y[1297:]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
opt = LowPrecisionSGLD(model.parameters(), lr=0.1, temperature=1.0, dataset_size=len(x_train),
                       weight_decay=5e-4, seed=1)                       # default config: 'bfp8-vc'
cycle = args.epochs // args.cycles
sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cycle)  # stepped once per epoch
bma, order, start = BayesianAverage(), torch.Generator().manual_seed(2), 0
if args.ckpt is not None and args.ckpt.exists():                        # resume where the last run stopped
    ck = torch.load(args.ckpt, weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    order.set_state(ck["order"])
    bma.load_state_dict(ck["bma"])
    start = ck["epoch"]
for epoch in range(start, args.epochs):
    perm = torch.randperm(len(x_train), generator=order)
    for i in range(0, len(perm), 64):
        idx = perm[i:i + 64]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
    sched.step()
    if epoch % cycle >= cycle - args.samples_per_cycle:                 # low-lr end of each cycle: a sample
        model.eval()
        with torch.no_grad():
            bma.add_logits(model(x_test).double().numpy())
        model.train()
    if args.ckpt is not None:
        st = bma.state_dict()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "order": order.get_state(), "epoch": epoch + 1,
                    "bma": {"sum": None if st["sum"] is None else torch.from_numpy(st["sum"]),
                            "samples": st["samples"]}}, args.ckpt)
    if epoch + 1 == args.stop_after:
        raise SystemExit(f"stopped after epoch {epoch + 1}")
m = bma.metrics(y_test.numpy())
print(f"samples {bma.samples}  BMA error {m['error']:.4f}  NLL {m['nll']:.4f}  ECE {m['ece']:.4f}")
print("weights", [float(p.detach().double().abs().sum()) for p in model.parameters()], "telemetry", opt.telemetry())
