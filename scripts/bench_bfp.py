"""Throughput of the BFP update (numpy engine, torch CPU kernel) against a float32 numpy SGLD step, same run.

Usage: .venv/bin/python scripts/bench_bfp.py [--rows 1000] [--cols 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from emulator.engines.bfp_engine import BfpEngine
from emulator.engines.numpy_engine import stream_words
from emulator.spec.bfp import BfpConfig, BfpFormat, BfpTensor, bfp_registers, update
from emulator.spec.host import HyperParams


def best(fn, repeat):
    t = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--cols", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    n = a.rows * a.cols
    rng = np.random.default_rng(0)
    t32 = rng.standard_normal((a.rows, a.cols), dtype=np.float32)
    g32 = rng.standard_normal((a.rows, a.cols), dtype=np.float32)
    def sgld32():
        return t32 - np.float32(1e-3) * g32 + np.float32(0.04) * rng.standard_normal(t32.shape, dtype=np.float32)

    base = best(sgld32, a.repeat)
    print(f"{n:,} elements ({a.rows} rows); float32 numpy SGLD step: {base * 1e3:.1f} ms = {n / base / 1e6:.1f} M/s")
    print(f"{'variant':>8} {'backend':>12} {'ms':>9} {'M elem/s':>9} {'x float32':>10}")
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        torch = None
    for variant in ("vc", "naive", "lp_f", "sgd_l"):
        cfg = BfpConfig(variant, acc=BfpFormat(16, 8) if variant == "lp_f" else None, lanes=64)
        regs = bfp_registers(cfg, HyperParams(1e-3, 1.0, 1))
        th = cfg.state.quantize(t32.astype(np.float64))
        g = cfg.grad.quantize(g32.astype(np.float64))
        eng = BfpEngine(cfg, 0)
        t = best(lambda eng=eng, th=th, g=g, regs=regs: eng.step(th, g, regs), a.repeat)
        print(f"{variant:>8} {'numpy engine':>12} {t * 1e3:9.1f} {n / t / 1e6:9.1f} {t / base:10.2f}")
        if torch is not None:
            words = torch.from_numpy(stream_words(BfpEngine(cfg, 0).rng, n).view(np.int64).copy())
            tt = BfpTensor(torch.from_numpy(th.mant), torch.from_numpy(th.exp))
            gt = BfpTensor(torch.from_numpy(g.mant), torch.from_numpy(g.exp))
            t = best(lambda cfg=cfg, tt=tt, gt=gt, regs=regs, words=words: update(cfg, tt, gt, regs, words), a.repeat)
            print(f"{variant:>8} {'torch kernel':>12} {t * 1e3:9.1f} {n / t / 1e6:9.1f} {t / base:10.2f}")


if __name__ == "__main__":
    main()
