"""One optimizer step on ResNet-18's parameter set (11.2M) against float32 baselines, same run.

``python -m emulator.studies.torch_bench`` (or ``lpsgld bench-torch``) times, best of ``--repeat``:

* ``float32 SGLD``: ``p.add_(g, alpha=-lr); p.add_(torch.randn_like(p), alpha=sigma)`` per tensor;
* ``float VC (reference style)``: the variance-corrected step written as the paper's reference
  code does it, many elementwise float ops (gradient SR with ``torch.rand``, the branch logic in
  float) - not bit-exact, a speed baseline only;
* fixed VC at each lane count and temperature (branch A and B): the bit-exact update alone (the
  engine step on int64 words; on CPU also the kernel on int8 words in place) and the full
  ``LowPrecisionSGLD.step`` (gradient SR from the gradient stream, update, float weights out);
* BFP VC (``BfpConfig.paper``): the engine step and the full optimizer step;
* the full fixed VC optimizer step on the 784-100-10 MLP's parameters (per-call overhead),

and prints each one's ratio to the float32 SGLD step of the same parameter set, measured in the
same run (``--json``: one JSON object ``{"rows": [{"name", "ms", "ratio"}, ...]}``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..engines import cpu_kernels
from ..engines.torch_bfp_engine import TorchBfpEngine, quantize_torch
from ..engines.torch_engine import TorchEngine, torch_quantize
from ..optim import LowPrecisionSGLD
from ..spec.bfp import BfpConfig, BfpRegisters, bfp_registers
from ..spec.datapath import DatapathConfig, StepRegisters, Variant
from ..spec.formats import FixedFormat
from ..spec.host import HyperParams, step_registers


def resnet18_shapes(num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of the CIFAR ResNet-18 (3x3 stem, BasicBlocks [2, 2, 2, 2], BN affine)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 3, 3), (64,), (64,)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            shapes += [(cout, cin, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
            if s != 1 or cin != cout:
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    return [*shapes, (num_classes, 512), (num_classes,)]


def bench_config(variant: str = "vc", lanes: int = 1024) -> DatapathConfig:
    """The paper's CIFAR numbers: Q(8,8) weights and gradients, lr up to 1 (UQ(16,16) step register)."""
    u = dict(signed=False)
    acc = FixedFormat(24, 16) if variant in ("lp_f", "sgd_f") else None
    return DatapathConfig(Variant(variant), weight=FixedFormat(8, 8), grad=FixedFormat(8, 8), acc=acc,
                          step=FixedFormat(16, 16, **u), noise=FixedFormat(16, 22, **u),
                          decay=FixedFormat(12, 20, **u), lanes=lanes)


def reference_style_vc_step(params: list[Tensor], grads: list[Tensor], lr: float, var: float, lsb: float,
                            lo: float, hi: float, gen: torch.Generator) -> None:
    """Float VC step as the reference implementation writes it (speed baseline, not bit-exact)."""
    v0 = lsb * lsb / 4
    for p, g in zip(params, grads, strict=True):
        gq = torch.floor(g / lsb + torch.rand(g.shape, generator=gen, device=g.device)) * lsb  # gradient SR
        mu = p - lr * gq
        if var > v0:
            x = mu + math.sqrt(var - v0) * torch.randn(p.shape, generator=gen, device=p.device)
            q = torch.round(x / lsb) * lsb
            r = (x - q) / lsb
            ar = torch.abs(r)
            p_up = (0.5 + ar) ** 2 / 2
            p_down = (0.5 - ar) ** 2 / 2
            u = torch.rand(p.shape, generator=gen, device=p.device)
            c = (u < p_up).float() - ((u >= p_up) & (u < p_up + p_down)).float()
            new = q + torch.sign(r) * c * lsb
        else:
            t = mu / lsb
            fl = torch.floor(t)
            f = t - fl
            q = (fl + (torch.rand(p.shape, generator=gen, device=p.device) < f).float()) * lsb
            w = torch.clamp(var / (lsb * lsb) - f * (1 - f), min=0)
            u = torch.rand(p.shape, generator=gen, device=p.device)
            c = (u < w / 2).float() - ((u >= w / 2) & (u < w)).float()
            new = q + c * lsb
        p.copy_(torch.clamp(new, lo, hi))


def _best(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    best = math.inf
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _reps(key: str, repeat: int) -> int:
    """Best of ``repeat`` for the ResNet-18 set; 20 times more for the small MLP steps (sub-ms, scheduler noise)."""
    return repeat * 20 if key == "mlp" else repeat


def mlp_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of the 784-100-10 MLP (per-call overhead dominates its step)."""
    return [(100, 784), (100,), (10, 100), (10,)]


def _float_sgld(params: list[Tensor], grads: list[Tensor], lr: float, sigma: float) -> Callable[[], None]:
    def step() -> None:
        for p, g in zip(params, grads, strict=True):
            p.add_(g, alpha=-lr)
            p.add_(torch.randn_like(p), alpha=sigma)

    return step


def _optimizer(params: list[Tensor], grads: list[Tensor], cfg: DatapathConfig | BfpConfig, lr: float, temp: float,
               dataset_size: int, path: str | None) -> LowPrecisionSGLD:
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(ps, grads, strict=True):
        p.grad = g
    opt = LowPrecisionSGLD(ps, lr=lr, config=cfg, temperature=temp, dataset_size=dataset_size, seed=1,
                           weight_decay=5e-4, path=path)
    opt.step()  # the first step initializes the state words (and loads or compiles the kernels)
    return opt


def run(device: str = "cpu", lanes: Sequence[int] = (8, 1024, 65536), repeat: int = 3, lr: float = 0.5,
        temperatures: Sequence[float] = (1.0, 1e-3), dataset_size: int = 50000, path: str | None = None,
        quiet: bool = False) -> list[dict[str, object]]:
    """Rows ``{"name", "ms", "ratio"}`` (best of ``repeat``), ratios to the float32 SGLD step of the same
    parameter set measured in the same run; printed as a table unless ``quiet``.

    ``path``: the engines' and the optimizer's path (default: the compiled kernels on CPU).
    """
    dev = torch.device(device)
    sync: Callable[[], None] = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=dev).manual_seed(0)
    say: Callable[[str], None] = (lambda _: None) if quiet else (lambda t: print(t, flush=True))
    rows: list[dict[str, object]] = []
    base = {"resnet18": 0.0, "mlp": 0.0}

    def row(name: str, seconds: float, ref: str) -> None:
        r = seconds / base[ref] if base[ref] else 1.0
        rows.append({"name": name, "ms": round(seconds * 1e3, 3), "ratio": round(r, 4)})
        say(f"{name:<62} {seconds * 1e3:10.2f} {r:10.2f}")

    sets = {}
    for key, shapes in (("resnet18", resnet18_shapes()), ("mlp", mlp_shapes())):
        params = [0.05 * torch.randn(s, generator=gen, device=dev) for s in shapes]
        grads = [0.05 * torch.randn(s, generator=gen, device=dev) for s in shapes]
        sets[key] = (params, grads)
    n = sum(p.numel() for p in sets["resnet18"][0])
    say(f"ResNet-18 parameter set: {len(sets['resnet18'][0])} tensors, {n:,} parameters; MLP 784-100-10: "
        f"{sum(p.numel() for p in sets['mlp'][0]):,}; device {dev}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; best of {repeat}")
    say(f"{'step':<62} {'ms':>10} {'x float32':>10}")
    sigma = math.sqrt(2 * lr / dataset_size)
    for key in ("resnet18", "mlp"):
        params, grads = sets[key]
        work = [p.clone() for p in params]
        base[key] = _best(_float_sgld(work, grads, lr, sigma), _reps(key, repeat), sync)
        row(f"float32 SGLD (add_, randn_like), {key}", base[key], key)
    params, grads = sets["resnet18"]
    wf = FixedFormat(8, 8)
    var = 2 * lr * temperatures[0] / dataset_size
    work = [p.clone() for p in params]
    row(f"float VC, reference style (T={temperatures[0]:g}), resnet18",
        _best(lambda: reference_style_vc_step(work, grads, lr, var, wf.lsb, wf.min_value, wf.max_value, gen),
              repeat, sync), "resnet18")
    for L in lanes:
        cfg = bench_config("vc", L)
        theta = [torch_quantize(p, cfg.weight) for p in params]
        gw = [torch_quantize(g, cfg.grad) for g in grads]
        for temp in temperatures:
            regs = step_registers(cfg, HyperParams(lr, temp, dataset_size, 5e-4))
            tag = f"L={L}, T={temp:g}, branch {'A' if regs.vc_noise else 'B'}"
            eng = TorchEngine(cfg, 1, device=dev, path=path)

            def engine_step(eng: TorchEngine = eng, regs: StepRegisters = regs, theta: list[Tensor] = theta,
                            gw: list[Tensor] = gw) -> None:
                for t, g in zip(theta, gw, strict=True):
                    eng.step(t, g, regs, check_words=False)

            engine_step()
            row(f"fixed VC update alone (engine, int64 words), {tag}", _best(engine_step, repeat, sync), "resnet18")
            if dev.type == "cpu" and eng.path == "kernel":
                narrow = [t.to(torch.int8) for t in theta]
                g8 = [g.to(torch.int8) for g in gw]
                s0, s1 = eng.rng.s0.numpy(), eng.rng.s1.numpy()

                def kernel_step(regs: StepRegisters = regs, cfg: DatapathConfig = cfg, narrow: list[Tensor] = narrow,
                                g8: list[Tensor] = g8, s0: Any = s0, s1: Any = s1) -> None:
                    for t, g in zip(narrow, g8, strict=True):
                        a = t.view(-1).numpy()
                        cpu_kernels.fixed_update(cfg, regs, s0, s1, a, g.view(-1).numpy(), a, None)

                kernel_step()
                row(f"fixed VC update alone (kernel, int8 words in place), {tag}", _best(kernel_step, repeat, sync),
                    "resnet18")
            opt = _optimizer(params, grads, cfg, lr, temp, dataset_size, path)
            row(f"LowPrecisionSGLD.step fixed VC, {tag}", _best(opt.step, repeat, sync), "resnet18")
        bcfg = BfpConfig.paper("vc", lanes=L, max_lr=lr, temperature=temperatures[-1], dataset_size=dataset_size)
        bregs = bfp_registers(bcfg, HyperParams(lr, temperatures[-1], dataset_size, 5e-4), underflow="flush")
        btag = f"L={L}, T={temperatures[-1]:g}"
        beng = TorchBfpEngine(bcfg, 1, device=dev, **({} if path is None else {"path": path}))
        bt = [quantize_torch(p, bcfg.weight, headroom=bcfg.headroom) for p in params]
        bg = [quantize_torch(g, bcfg.grad) for g in grads]

        def bfp_step(beng: TorchBfpEngine = beng, bregs: BfpRegisters = bregs, bt: list[Any] = bt,
                     bg: list[Any] = bg) -> None:
            for t, g in zip(bt, bg, strict=True):
                beng.step(t, g, bregs, check_words=False)

        bfp_step()
        row(f"BFP VC update alone (engine, int64 words), {btag}", _best(bfp_step, repeat, sync), "resnet18")
        opt = _optimizer(params, grads, bcfg, lr, temperatures[-1], dataset_size, path)
        row(f"LowPrecisionSGLD.step BFP VC, {btag}", _best(opt.step, repeat, sync), "resnet18")
    mp, mg = sets["mlp"]
    for L in lanes:
        for temp in temperatures:
            cfg = bench_config("vc", L)
            opt = _optimizer(mp, mg, cfg, lr, temp, dataset_size, path)
            row(f"LowPrecisionSGLD.step fixed VC, mlp, L={L}, T={temp:g}", _best(opt.step, _reps("mlp", repeat), sync),
                "mlp")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lanes", type=int, nargs="+", default=[8, 1024, 65536])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--path", default=None, choices=["kernel", "fused", "reference"],
                    help="engine / optimizer path (default: the compiled kernels on CPU)")
    ap.add_argument("--json", action="store_true", help='print one JSON object {"rows": [...]} instead of a table')
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.lanes, args.repeat, path=args.path, quiet=args.json)
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
