"""One optimizer step on ResNet-18's parameter set (11.2M) against float32 baselines, same run.

``python -m emulator.studies.torch_bench`` (or ``lpsgld bench-torch``) times, best of ``--repeat``:

* ``float32 SGLD``: ``p.add_(g, alpha=-lr); p.add_(torch.randn_like(p), alpha=sigma)`` per tensor;
* ``float VC (reference style)``: the variance-corrected step written as the paper's reference
  code does it, many elementwise float ops (gradient SR with ``torch.rand``, the branch logic in
  float) - not bit-exact, a speed baseline only;
* the bit-exact engine step (int64 words in and out) and the full ``LowPrecisionSGLD.step``
  (gradient quantization from the xoroshiro gradient stream, engine, float weights out),

and prints each one's ratio to the float32 SGLD step.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..engines.torch_engine import TorchEngine, torch_quantize
from ..optim import LowPrecisionSGLD
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


def run(device: str = "cpu", lanes: Sequence[int] = (1024, 8), repeat: int = 3, lr: float = 0.5,
        temperatures: Sequence[float] = (1.0, 1e-3), dataset_size: int = 50000,
        compiled: bool = False) -> list[dict[str, object]]:
    """Print and return the rows; ``compiled`` adds the ``compile=True`` engine and optimizer rows
    (each warmed up by one untimed call, which compiles)."""
    dev = torch.device(device)
    sync: Callable[[], None] = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=dev).manual_seed(0)
    shapes = resnet18_shapes()
    n = sum(math.prod(s) for s in shapes)
    params = [0.05 * torch.randn(s, generator=gen, device=dev) for s in shapes]
    grads = [0.05 * torch.randn(s, generator=gen, device=dev) for s in shapes]
    print(f"ResNet-18 parameter set: {len(shapes)} tensors, {n:,} parameters; device {dev}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {repeat}")

    def float_sgld() -> None:
        sigma = math.sqrt(2 * lr / dataset_size)
        for p, g in zip(params, grads, strict=True):
            p.add_(g, alpha=-lr)
            p.add_(torch.randn_like(p), alpha=sigma)

    base = _best(float_sgld, repeat, sync)
    rows: list[dict[str, object]] = [{"step": "float32 SGLD", "seconds": base, "ratio": 1.0}]
    print(f"{'step':<54} {'ms':>9} {'x float32':>10}")
    print(f"{'float32 SGLD (add_, randn_like)':<54} {base * 1e3:9.1f} {1.0:10.2f}")

    def row(name: str, seconds: float) -> None:
        rows.append({"step": name, "seconds": seconds, "ratio": seconds / base})
        print(f"{name:<54} {seconds * 1e3:9.1f} {seconds / base:10.2f}", flush=True)

    wf = FixedFormat(8, 8)
    for temp in temperatures:
        var = 2 * lr * temp / dataset_size
        branch = "A" if var > wf.lsb**2 / 4 else "B"
        work = [p.clone() for p in params]
        row(f"float VC, reference style (T={temp:g}, {branch})",
            _best(lambda: reference_style_vc_step(work, grads, lr, var, wf.lsb, wf.min_value,  # noqa: B023
                                                  wf.max_value, gen), repeat, sync))
    for L in lanes:
        cfg = bench_config("vc", L)
        theta = [torch_quantize(p, cfg.weight) for p in params]
        gw = [torch_quantize(g, cfg.grad) for g in grads]
        for temp in temperatures:
            regs = step_registers(cfg, HyperParams(lr, temp, dataset_size))
            branch = "A" if regs.vc_noise else "B"
            for comp in (False, True) if compiled else (False,):
                tag = ", compiled" if comp else ""
                eng = TorchEngine(cfg, 1, device=dev, compile=comp)

                def engine_step(eng: TorchEngine = eng, regs: StepRegisters = regs, theta: list[Tensor] = theta,
                                gw: list[Tensor] = gw) -> None:
                    for t, g in zip(theta, gw, strict=True):
                        eng.step(t, g, regs)

                if comp:
                    engine_step()  # compiles
                row(f"bit-exact VC engine, L={L} (T={temp:g}, {branch}{tag})", _best(engine_step, repeat, sync))
                ps = [torch.nn.Parameter(p.clone()) for p in params]
                for p, g in zip(ps, grads, strict=True):
                    p.grad = g
                opt = LowPrecisionSGLD(ps, lr=lr, config=cfg, temperature=temp, dataset_size=dataset_size, seed=1,
                                       compile=comp)
                opt.step()  # first step initializes the words (and compiles)
                row(f"LowPrecisionSGLD.step vc, L={L} (T={temp:g}, {branch}{tag})", _best(opt.step, repeat, sync))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lanes", type=int, nargs="+", default=[1024, 8])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile engine and optimizer")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.device, args.lanes, args.repeat, compiled=args.compile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
