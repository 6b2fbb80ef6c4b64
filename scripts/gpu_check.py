#!/usr/bin/env python3
"""GPU check: the torch backend and the Triton kernels on CUDA equal the CPU reference bit for bit; speed.

    python3 scripts/gpu_check.py                        # on a machine with CUDA (torch + triton, no installs)
    python3 scripts/gpu_check.py --device cpu --small   # dry run of the same checks on CPU

Checks (each compares integer words with torch.equal; device against the CPU reference path):
  1. torch_stream_words on the device == on CPU (lanes 1, 8, 1024; 1 and 2 words; several calls);
  2. TorchEngine on the device, paths "kernel" (= the Triton lane kernels on CUDA), "fused" and "reference",
     every preset (every variant), lanes 1 / 8 / 1024, both VC branches, decay on/off, several calls with
     partial last cycles; the torch.compile fused kernel for a few configurations (CUDA only);
  3. TorchBfpEngine on the device ("kernel" = Triton, and "reference"), every variant, both VC branches;
  4. LowPrecisionSGLD on the device == on CPU (words / mantissas and exponents, float weights, both streams),
     every variant, fixed point and BFP, 3 steps (on CUDA its group step is gpu_kernels.*_group_step);
  5. `pytest -k cuda` (the test suite's device tests), when pytest is installed.
Then times, on the ResNet-18 parameter set (11.2M), the float32 SGLD step, the Triton update alone
(int8 and int64 words) and the full LowPrecisionSGLD.step (fixed VC, BFP VC; Triton and the torch
reference path) at L = 8, 1024, 65536, and reports the achieved memory bandwidth (bytes that must
move / time) against the device's peak (nominal from its name, and a measured device-to-device copy).
Prints progress to stderr and one JSON object to stdout. Exit status: 0 all equal, 1 a mismatch,
2 the device is not available.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package (the GPU image)
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from emulator.engines.torch_bfp_engine import TorchBfpEngine  # noqa: E402
from emulator.engines.torch_engine import TorchEngine, TorchLaneRng, torch_quantize, torch_stream_words  # noqa: E402
from emulator.optim import LowPrecisionSGLD  # noqa: E402
from emulator.spec.bfp import BfpConfig, BfpFormat, BfpTensor, bfp_registers  # noqa: E402
from emulator.spec.formats import FixedFormat  # noqa: E402
from emulator.spec.host import HyperParams, step_registers  # noqa: E402
from emulator.spec.presets import PRESETS, preset  # noqa: E402
from emulator.spec.rng import XoroshiroSpec  # noqa: E402
from emulator.studies.torch_bench import bench_config, resnet18_shapes  # noqa: E402

VARIANTS = ("vc", "naive", "lp_f", "sgd_l", "sgd_f")
# (lr, temperature) per preset family: VC branch A, then branch B
_LRS = {"w4": ((0.5, 1.0), (0.5, 0.01)), "w8": ((2e-3, 1.0), (1e-4, 1.0)), "w16": ((1e-3, 1.0), (1e-3, 1e-6))}
# nominal peak memory bandwidth (GB/s) by device name; the measured copy bandwidth is reported beside it
_PEAK_GBS = (("H200", 4800.0), ("H100 SXM", 3350.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
             ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0), ("L40S", 864.0),
             ("L4", 300.0))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Checker:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def equal(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu()):
            self.passed += 1
        else:
            self.failed.append(name)
            log(f"MISMATCH {name}")

    def error(self, name: str, e: Exception) -> None:  # report and go on: one failing path must not hide others
        self.failed.append(f"{name}: {type(e).__name__}: {e}")
        log(f"ERROR {self.failed[-1]}")


def _regs(cfg, family):
    out = []
    for lr, temp in _LRS[family]:
        for wd in (0.0, 0.05):
            try:
                out.append(step_registers(cfg, HyperParams(lr, temp, weight_decay=wd)))
            except ValueError:
                continue
    return out


_NO_TRITON = False  # --no-triton: a dry run without the (slow) interpreter


def _triton_ok(dev: torch.device) -> bool:
    """The Triton paths run on CUDA, and on CPU only under the interpreter (TRITON_INTERPRET=1)."""
    return dev.type == "cuda" or (os.environ.get("TRITON_INTERPRET") == "1" and not _NO_TRITON)


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
    paths = ["fused", "reference"]
    if _triton_ok(dev):
        paths.insert(0, "kernel" if dev.type == "cuda" else "triton")
    for name in presets:
        for lanes in (1, 8, 1024):
            cfg = preset(name, lanes)
            regs = _regs(cfg, name.split("-")[0])
            ref = TorchEngine(cfg, 3, path="reference")
            engines = {p: TorchEngine(cfg, 3, device=dev, path=p) for p in paths
                       if not (p == "triton" and small and lanes != 8)}  # the interpreter is slow: one lane count
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
                    except Exception as e:
                        ck.error(f"engine {name} L={lanes} {path} call {i}", e)
                        continue
                    ck.equal(f"engine {name} L={lanes} {path} call {i} state", want.state, got.state)
                    ck.equal(f"engine {name} L={lanes} {path} call {i} weight", want.weight, got.weight)
            for path, eng in engines.items():
                ck.equal(f"engine {name} L={lanes} {path} lane states", ref.rng.s0, eng.rng.s0)
        log(f"  engines: {name} done ({ck.passed} equal, {len(ck.failed)} mismatches)")


def _bfp_cfg(variant: str, lanes: int) -> BfpConfig:
    acc = BfpFormat(16, 8) if variant in ("lp_f", "sgd_f") else None
    return BfpConfig(variant, weight=BfpFormat(8, 8), grad=BfpFormat(8, 8), acc=acc, lanes=lanes,
                     decay=FixedFormat(12, 24, signed=False), headroom=2 if variant == "vc" else 1)


def check_bfp_engines(ck: Checker, dev: torch.device, small: bool) -> None:
    shapes = [(9, 5), (64, 3, 3, 3), (1000,)] if small else [(9, 5), (512, 256, 3, 3), (100_003,)]
    paths = ["reference"] + (["kernel" if dev.type == "cuda" else "triton"] if _triton_ok(dev) else [])
    for variant in VARIANTS:
        for lanes in (1, 1024) if not small else (4,):
            cfg = _bfp_cfg(variant, lanes)
            ref = TorchBfpEngine(cfg, 3, path="reference")
            engines = {p: TorchBfpEngine(cfg, 3, device=dev, path=p) for p in paths}
            rng = np.random.default_rng(lanes)
            for i, shape in enumerate(shapes):
                temp = (1.0, 1e-3, 0.3)[i % 3]  # both VC branches across rows and calls
                regs = bfp_registers(cfg, HyperParams(3e-3, temp, 1, 5e-2))
                rows = shape[0]
                st, gf = cfg.state, cfg.grad
                th = BfpTensor(torch.from_numpy(rng.integers(-st.max_mant, st.max_mant + 1, shape)),
                               torch.from_numpy(rng.integers(-20, 10, rows)))
                g = BfpTensor(torch.from_numpy(rng.integers(-gf.max_mant, gf.max_mant + 1, shape)),
                              torch.from_numpy(rng.integers(-25, 5, rows)))
                want = ref.step(th, g, regs)
                for path, eng in engines.items():
                    try:
                        got = eng.step(BfpTensor(th.mant.to(dev), th.exp.to(dev)),
                                       BfpTensor(g.mant.to(dev), g.exp.to(dev)), regs)
                    except Exception as e:
                        ck.error(f"bfp {variant} L={lanes} {path} call {i}", e)
                        continue
                    for part in ("state", "weight"):
                        w, r = getattr(want, part), getattr(got, part)
                        ck.equal(f"bfp {variant} L={lanes} {path} call {i} {part} mant", w.mant, r.mant)
                        ck.equal(f"bfp {variant} L={lanes} {path} call {i} {part} exp", w.exp, r.exp)
            for path, eng in engines.items():
                ck.equal(f"bfp {variant} L={lanes} {path} lane states", ref.rng.s0, eng.rng.s0)
    log(f"  bfp engines done ({ck.passed} equal, {len(ck.failed)} mismatches)")


def _optimizer_path(dev: torch.device, variant: str) -> str | None:
    """The device run's path: the default on CUDA (Triton); the dry run takes the interpreter for VC only."""
    if dev.type == "cuda":
        return None
    return "triton" if _triton_ok(dev) and variant == "vc" else "reference"


def check_optimizer(ck: Checker, dev: torch.device, small: bool) -> None:
    shapes = [(64, 3, 3, 3), (64,), (10, 512), ()]
    for kind in ("fixed", "bfp"):
        for variant in VARIANTS:
            cfg: Any = bench_config(variant, 64) if kind == "fixed" else \
                BfpConfig.paper(variant, lanes=64, temperature=1.0, dataset_size=50000)
            gen = torch.Generator().manual_seed(1)
            init = [0.05 * torch.randn(s, generator=gen) for s in shapes]
            runs = []
            for d, path in ((torch.device("cpu"), "reference"), (dev, _optimizer_path(dev, variant))):
                ps = [torch.nn.Parameter(x.clone().to(d)) for x in init]
                opt = LowPrecisionSGLD(ps, lr=0.5, config=cfg, temperature=1.0, dataset_size=50000, seed=5,
                                       weight_decay=5e-4, path=path)
                g2 = torch.Generator().manual_seed(2)
                for _ in range(3):
                    for p in ps:
                        p.grad = (0.05 * torch.randn(p.shape, generator=g2)).to(d)
                    opt.step()
                runs.append((ps, opt))
            (pa, oa), (pb, ob) = runs
            for i in range(len(shapes)):
                ck.equal(f"optimizer {kind} {variant} weights {i}", pa[i].detach(), pb[i].detach())
                for key, val in oa.state[pa[i]].items():
                    if isinstance(val, torch.Tensor):
                        ck.equal(f"optimizer {kind} {variant} {key} {i}", val, ob.state[pb[i]][key])
            ra, rb = oa._runtime[0], ob._runtime[0]
            ck.equal(f"optimizer {kind} {variant} lane states", ra.engine.rng.s0, rb.engine.rng.s0)
            ck.equal(f"optimizer {kind} {variant} gradient stream", ra.grad_rng.s0, rb.grad_rng.s0)
    log(f"  optimizer done ({ck.passed} equal, {len(ck.failed)} mismatches)")


def _best(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    best = math.inf
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_bandwidth(dev: torch.device, sync: Callable[[], None]) -> dict[str, Any]:
    """Nominal peak (from the device name) and a measured device-to-device copy (read + write), GB/s."""
    out: dict[str, Any] = {"nominal_gbs": None, "copy_gbs": None}
    if dev.type != "cuda":
        return out
    name = torch.cuda.get_device_name(dev)
    out["nominal_gbs"] = next((bw for key, bw in _PEAK_GBS if key in name), None)
    a = torch.empty(1 << 28, dtype=torch.uint8, device=dev)  # 256 MiB: far beyond the L2 cache
    b = torch.empty_like(a)
    b.copy_(a)
    t = _best(lambda: b.copy_(a), 5, sync)
    out["copy_gbs"] = 2 * a.numel() / t / 1e9
    return out


def timing(dev: torch.device, small: bool, lanes_list: list[int], repeat: int) -> dict[str, Any]:
    from emulator.engines import gpu_kernels

    sync: Callable[[], None] = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    shapes = resnet18_shapes() if not small else [(16, 3, 3), (16,)]  # small: the interpreter's dry run
    n = sum(math.prod(s) for s in shapes)
    gen = torch.Generator(device=dev).manual_seed(0)
    params = [0.05 * torch.randn(s, generator=gen, device=dev) for s in shapes]
    grads = [0.05 * torch.randn(s, generator=gen, device=dev) for s in shapes]
    lr, rows = 0.5, []
    peak = peak_bandwidth(dev, sync)

    def float_sgld() -> None:
        for p, g in zip(params, grads, strict=True):
            p.add_(g, alpha=-lr)
            p.add_(torch.randn_like(p), alpha=0.01)

    float_sgld()
    base = _best(float_sgld, repeat, sync)

    def row(name: str, seconds: float, bytes_per_param: float) -> None:
        gbs = bytes_per_param * n / seconds / 1e9
        frac = gbs / peak["nominal_gbs"] if peak["nominal_gbs"] else None
        rows.append({"name": name, "ms": seconds * 1e3, "ratio": seconds / base, "gbs": gbs,
                     "bytes_per_param": bytes_per_param, "fraction_of_peak": frac})
        log(f"  {name:<58} {seconds * 1e3:9.2f} ms {seconds / base:7.2f}x {gbs:8.1f} GB/s")

    # float SGLD moves p (read, write), g (read), the noise (write, read): 5 x 4 B
    row("float32 SGLD step (add_, randn_like)", base, 20)
    for L in lanes_list:
        cfg = bench_config("vc", L)
        regs = step_registers(cfg, HyperParams(lr, 1.0, 50000))
        for dt, size in ((torch.int8, 1), (torch.int64, 8)):
            theta = [torch_quantize(p, cfg.weight).to(dt) for p in params]
            gw = [torch_quantize(g, cfg.grad).to(dt) for g in grads]
            out = [torch.empty_like(t) for t in theta]
            eng = TorchEngine(cfg, 1, device=dev, path="kernel" if dev.type == "cuda" else "triton")

            def update(eng: TorchEngine = eng, theta: list = theta, gw: list = gw, out: list = out,
                       cfg: Any = cfg, regs: Any = regs) -> None:
                for t, g, o in zip(theta, gw, out, strict=True):
                    gpu_kernels.fixed_update(cfg, regs, eng.rng.s0, eng.rng.s1, t, g, o, o)

            update()  # compiles
            # theta and gradient words in, state words out
            row(f"Triton VC update, {dt} words, L={L}", _best(update, repeat, sync), 3 * size)
        for kind, config in (("fixed VC", cfg), ("BFP VC", BfpConfig.paper("vc", lanes=L))):
            for path in ("kernel", "fused" if kind == "fixed VC" else "reference"):
                if dev.type != "cuda" and path != "kernel":
                    continue
                ps = [torch.nn.Parameter(p.clone()) for p in params]
                for p, g in zip(ps, grads, strict=True):
                    p.grad = g
                opt = LowPrecisionSGLD(ps, lr=lr, config=config, temperature=1e-3 if kind == "BFP VC" else 1.0,
                                       dataset_size=50000, path=path if dev.type == "cuda" else "triton")
                opt.step()  # initializes the state words and compiles
                t = _best(opt.step, repeat if path == "kernel" else 1, sync)
                # float g in, state words (or mantissas) in and out, float p out; exponents per row: negligible
                st = opt.state[ps[0]]
                word = (st["words"] if "words" in st else st["mant"]).element_size()
                row(f"LowPrecisionSGLD.step {kind}, L={L}, path {path}", t, 2 * ps[0].element_size() + 2 * word)
    return {"parameters": n, "peak": peak, "rows": rows}


def run_pytest_cuda() -> dict[str, Any]:
    """`pytest -k cuda` over the suite (the device tests), when pytest and hypothesis are installed."""
    try:
        import hypothesis  # noqa: F401
        import pytest  # noqa: F401
    except ImportError as e:
        return {"ran": False, "reason": f"not installed: {e.name}"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    for line in tail:
        log(f"  pytest: {line}")
    return {"ran": True, "returncode": proc.returncode, "tail": tail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    ap.add_argument("--small", action="store_true", help="small sizes (the test suite's dry run)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-pytest", action="store_true")
    ap.add_argument("--no-triton", action="store_true", help="CPU dry run: skip the Triton paths (interpreter)")
    ap.add_argument("--lanes", type=int, nargs="+", default=[8, 1024, 65536], help="lane counts timed")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS, help="engine checks (default all)")
    args = ap.parse_args(argv)
    global _NO_TRITON
    _NO_TRITON = args.no_triton and args.device == "cpu"
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available on this machine (torch.cuda.is_available() is False); nothing to check. "
              "Run on a CUDA machine, or use --device cpu --small for a dry run on CPU.", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (dry run)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    log(f"gpu_check: device {dev} = {name}; torch {torch.__version__}; triton {triton_version}")
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "triton": triton_version}
    ck = Checker()
    t0 = time.perf_counter()
    check_streams(ck, dev, args.small)
    check_engines(ck, dev, args.small, args.presets)
    check_bfp_engines(ck, dev, args.small)
    check_optimizer(ck, dev, args.small)
    report["equality"] = {"equal": ck.passed, "mismatches": len(ck.failed), "failed": ck.failed[:50],
                          "seconds": time.perf_counter() - t0}
    log(f"equality checks: {ck.passed} equal, {len(ck.failed)} mismatches ({time.perf_counter() - t0:.1f} s)")
    if not args.skip_timing and not ck.failed and (dev.type == "cuda" or _triton_ok(dev)):
        report["timing"] = timing(dev, args.small, args.lanes if not args.small else [8], args.repeat)
    if not args.skip_pytest and dev.type == "cuda":
        report["pytest_cuda"] = run_pytest_cuda()
    ok = not ck.failed and report.get("pytest_cuda", {}).get("returncode", 0) == 0  # 5 (no CUDA test ran) fails
    report["ok"] = ok
    print(json.dumps(report, indent=1))
    log("all checks passed" if ok else "FAILED: " + ", ".join(ck.failed[:20]))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
