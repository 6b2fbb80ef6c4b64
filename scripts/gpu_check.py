#!/usr/bin/env python
"""GPU check: the torch backend on CUDA equals the CPU reference bit for bit; step time and bandwidth.

    python scripts/gpu_check.py                 # on a machine with CUDA
    python scripts/gpu_check.py --device cpu --small    # dry run of the same checks on CPU

Checks (each compares integer words with torch.equal):
  1. torch_stream_words on the device == on CPU (lanes 1, 8, 1024; 1 and 2 words; several calls);
  2. TorchEngine on the device (fused and reference paths) == the CPU reference path, every preset,
     lanes 1 / 8 / 1024, every register case (both VC branches, decay on/off), several calls with
     partial last cycles; on CUDA also the torch.compile fused kernel (a few configurations);
  3. LowPrecisionSGLD on the device == on CPU (words and float weights), every variant, 3 steps.
Then times one engine step and one optimizer step on the ResNet-18 parameter set (11.2M) next to a
float32 SGLD step, and reports the achieved memory bandwidth (bytes that must move / time).
Exit status: 0 all equal, 1 a mismatch, 2 the device is not available.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from emulator.engines.torch_engine import TorchEngine, TorchLaneRng, torch_quantize, torch_stream_words
from emulator.optim import LowPrecisionSGLD
from emulator.spec.host import HyperParams, step_registers
from emulator.spec.presets import PRESETS, preset
from emulator.spec.rng import XoroshiroSpec
from emulator.studies.torch_bench import bench_config, resnet18_shapes

_LRS = {"w4": (0.5, 0.25, 0.0625), "w8": (2e-3, 1e-3, 1e-4), "w16": (1e-3, 5e-4, 1e-5)}


class Checker:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def equal(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu()):
            self.passed += 1
        else:
            self.failed.append(name)
            print(f"MISMATCH {name}", flush=True)


def _regs(cfg, family):
    out = []
    for lr in _LRS[family]:
        for wd in (0.0, 0.05):
            try:
                out.append(step_registers(cfg, HyperParams(lr, weight_decay=wd)))
            except ValueError:
                continue
    return out


def check_streams(ck: Checker, dev: torch.device, small: bool) -> None:
    sizes = (5, 1, 1025, 7001 if small else 3_000_001, 3)
    for lanes in (1, 8, 1024):
        for words in (1, 2):
            a = TorchLaneRng.seeded(XoroshiroSpec(), 7, lanes, words, "cpu")
            b = TorchLaneRng.seeded(XoroshiroSpec(), 7, lanes, words, dev)
            for n in sizes:
                ck.equal(f"stream L={lanes} W={words} n={n}", torch_stream_words(a, n), torch_stream_words(b, n))
            ck.equal(f"stream state L={lanes} W={words}", a.s0, b.s0)


def check_engines(ck: Checker, dev: torch.device, small: bool, presets: list[str]) -> None:
    sizes = (37, 1, 1030, 5, 2051) if small else (37, 1, 1030, 5, 200_003)
    compiled = {("w8-vc", 1024), ("w8-lpf", 1024), ("w16-naive", 8)} if dev.type == "cuda" else set()
    for name in presets:
        for lanes in (1, 8, 1024):
            cfg = preset(name, lanes)
            regs = _regs(cfg, name.split("-")[0])
            ref = TorchEngine(cfg, 3, path="reference")
            engines = {p: TorchEngine(cfg, 3, device=dev, path=p) for p in ("fused", "reference")}
            if (name, lanes) in compiled:
                engines["compiled"] = TorchEngine(cfg, 3, device=dev, compile=True)
            rng = np.random.default_rng(lanes)
            for i, n in enumerate(sizes):
                r = regs[i % len(regs)]
                theta = torch.from_numpy(rng.integers(cfg.state.min_word, cfg.state.max_word + 1, n))
                grad = torch.from_numpy(rng.integers(cfg.grad.min_word, cfg.grad.max_word + 1, n))
                want = ref.step(theta, grad, r)
                for path, eng in engines.items():
                    try:
                        got = eng.step(theta.to(dev), grad.to(dev), r)
                    except Exception as e:  # report and go on: one failing path must not hide the others
                        ck.failed.append(f"engine {name} L={lanes} {path} call {i}: {type(e).__name__}: {e}")
                        print(f"ERROR {ck.failed[-1]}", flush=True)
                        continue
                    ck.equal(f"engine {name} L={lanes} {path} call {i} state", want.state, got.state)
                    ck.equal(f"engine {name} L={lanes} {path} call {i} weight", want.weight, got.weight)
        print(f"  engines: {name} done ({ck.passed} equal, {len(ck.failed)} mismatches)", flush=True)


def check_optimizer(ck: Checker, dev: torch.device) -> None:
    for variant in ("vc", "naive", "lp_f", "sgd_l", "sgd_f"):
        cfg = bench_config(variant, 64)
        gen = torch.Generator().manual_seed(1)
        shapes = [(64, 3, 3, 3), (64,), (10, 512)]
        init = [0.05 * torch.randn(s, generator=gen) for s in shapes]
        runs = []
        for d in (torch.device("cpu"), dev):
            ps = [torch.nn.Parameter(x.clone().to(d)) for x in init]
            opt = LowPrecisionSGLD(ps, lr=0.5, config=cfg, temperature=1.0, dataset_size=50000, seed=5,
                                   weight_decay=5e-4)
            g2 = torch.Generator().manual_seed(2)
            for _ in range(3):
                for p in ps:
                    p.grad = (0.05 * torch.randn(p.shape, generator=g2)).to(d)
                opt.step()
            runs.append(([opt.state[p]["words"] for p in ps], [p.detach() for p in ps]))
        for i in range(len(shapes)):
            ck.equal(f"optimizer {variant} words {i}", runs[0][0][i], runs[1][0][i])
            ck.equal(f"optimizer {variant} weights {i}", runs[0][1][i], runs[1][1][i])


def _best(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    best = math.inf
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def timing(dev: torch.device, small: bool, ck_failed: list[str]) -> None:
    sync: Callable[[], None] = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    shapes = resnet18_shapes() if not small else [(64, 64, 3, 3), (64,)]
    n = sum(math.prod(s) for s in shapes)
    gen = torch.Generator(device=dev).manual_seed(0)
    params = [0.05 * torch.randn(s, generator=gen, device=dev) for s in shapes]
    grads = [0.05 * torch.randn(s, generator=gen, device=dev) for s in shapes]
    lr, repeat = 0.5, 3

    def float_sgld() -> None:
        for p, g in zip(params, grads, strict=True):
            p.add_(g, alpha=-lr)
            p.add_(torch.randn_like(p), alpha=0.01)

    base = _best(float_sgld, repeat, sync)
    # bytes that must move: float SGLD reads p, g and the noise, writes p and the noise (5 x 4 B);
    # the engine reads theta and grad words and writes state words (3 x 8 B, int64).
    print(f"timing on {dev}: {n:,} parameters")
    print(f"  float32 SGLD step: {base * 1e3:.2f} ms, {20 * n / base / 1e9:.1f} GB/s")
    for temp in (1.0, 1e-3):
        for L in (1024, 65536):
            cfg = bench_config("vc", L)
            regs = step_registers(cfg, HyperParams(lr, temp, 50000))
            theta = [torch_quantize(p, cfg.weight) for p in params]
            gw = [torch_quantize(g, cfg.grad) for g in grads]
            modes = [("fused", False), ("compiled", True)] if dev.type == "cuda" else [("fused", False)]
            for label, comp in modes:
                if comp and any("compiled" in f for f in ck_failed):
                    print("  (compiled kernel skipped: it failed the equality checks)")
                    continue
                eng = TorchEngine(cfg, 1, device=dev, compile=comp)

                def step(eng: TorchEngine = eng, regs=regs, theta=theta, gw=gw) -> None:
                    for t, g in zip(theta, gw, strict=True):
                        eng.step(t, g, regs)

                step()  # warm-up (compiles)
                t = _best(step, repeat, sync)
                print(f"  VC engine {label} L={L} branch {'A' if regs.vc_noise else 'B'}: {t * 1e3:.2f} ms "
                      f"({t / base:.2f}x float32), {24 * n / t / 1e9:.1f} GB/s", flush=True)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(ps, grads, strict=True):
        p.grad = g
    opt = LowPrecisionSGLD(ps, lr=lr, config=bench_config("vc", 1024), temperature=1.0, dataset_size=50000)
    opt.step()
    t = _best(opt.step, repeat, sync)
    print(f"  LowPrecisionSGLD.step vc L=1024: {t * 1e3:.2f} ms ({t / base:.2f}x float32)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    ap.add_argument("--small", action="store_true", help="small sizes (the test suite's dry run)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS, help="engine checks (default all)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available on this machine (torch.cuda.is_available() is False); nothing to check. "
              "Run on a CUDA machine, or use --device cpu --small for a dry run on CPU.", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (dry run)"
    print(f"gpu_check: device {dev} = {name}; torch {torch.__version__}", flush=True)
    ck = Checker()
    t0 = time.perf_counter()
    check_streams(ck, dev, args.small)
    check_engines(ck, dev, args.small, args.presets)
    check_optimizer(ck, dev)
    print(f"equality checks: {ck.passed} equal, {len(ck.failed)} mismatches ({time.perf_counter() - t0:.1f} s)")
    if not args.skip_timing:
        timing(dev, args.small, ck.failed)
    if ck.failed:
        print("FAILED: " + ", ".join(ck.failed[:20]))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
