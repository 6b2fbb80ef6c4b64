"""The paper's Gaussian toy (Figure 1) run with the hardware's own arithmetic.

Target N(0, 1): U(theta) = theta^2 / 2, stochastic gradient theta + sigma_g * N(0, 1)
(sigma_g = 0.1), theta_0 = 0, W = 8, F = 3. Every chain is one lane of the
datapath; the gradient is converted to the gradient format by stochastic
rounding on the host with an explicit seeded generator. Float SGLD runs in
float64 beside them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..analysis.markov import stationary, transition_matrix
from ..analysis.reference import sgld_step
from ..engines.numpy_engine import NumpyEngine
from ..spec.datapath import DatapathConfig, Variant
from ..spec.formats import FixedFormat
from ..spec.gaussian import GaussianSpec
from ..spec.host import HyperParams, step_registers
from .workers import pool_size, supervised_pool

TOY_VARIANTS = ("fp", "lp_f", "naive", "vc")
REG_WIDTH = 16  # step and noise register widths


@dataclass(frozen=True)
class ToySettings:
    alphas: tuple[float, ...] = (2e-3, 1e-3, 1e-4)
    variants: tuple[str, ...] = TOY_VARIANTS
    width: int = 8
    frac: int = 3
    sr_bits: int | None = None
    gaussian: GaussianSpec = field(default_factory=GaussianSpec)
    grad_noise: float = 0.1
    chains: int = 4096
    burn: float = 2.5  # burn-in, in units of 1/alpha steps (variance within e^-5 of stationary)
    collect: float = 4.0  # collection window, in units of 1/alpha steps
    min_collect_steps: int = 10_000  # large steps mix fast: collect longer for the same precision
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.alphas or any(not (0 < a < 1) for a in self.alphas):
            raise ValueError(f"step sizes must be in (0, 1), got {self.alphas}")
        bad = [v for v in self.variants if v not in TOY_VARIANTS]
        if bad:
            raise ValueError(f"unknown toy variant(s) {bad}; choose from {TOY_VARIANTS}")
        if not 1 <= self.chains <= 1 << 24:
            raise ValueError(f"chains must be in [1, 2**24], got {self.chains}")
        if not 0 <= self.seed < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")
        if not 0 < self.grad_noise < 1e3:
            raise ValueError(f"grad_noise must be in (0, 1000), got {self.grad_noise}")
        for v in self.variants:
            if v != "fp":
                for a in self.alphas:
                    toy_config(v, self, a)  # every format and register width checked before any run
        if self.burn < 0 or self.collect <= 0 or self.min_collect_steps < 0:
            raise ValueError(
                f"burn and min_collect_steps must be >= 0 and collect > 0, "
                f"got {self.burn}, {self.min_collect_steps}, {self.collect}"
            )


def _unsigned_format(max_value: float) -> FixedFormat:
    """A 16-bit unsigned register format whose range just holds ``max_value``."""
    frac = math.floor(math.log2(((1 << REG_WIDTH) - 1) / max_value))
    return FixedFormat(REG_WIDTH, frac, signed=False)


def toy_config(variant: str, settings: ToySettings, alpha: float | None = None) -> DatapathConfig:
    """The datapath configuration the toy uses for ``variant`` (not for 'fp') at step size ``alpha``.

    The step and noise registers are sized for ``alpha`` alone (default: the largest of
    ``settings.alphas``), so ``lpsgld gaussian`` and ``lpsgld stationary`` run the same chain at a
    given step size whatever other step sizes the run holds.
    """
    a = max(settings.alphas) if alpha is None else alpha
    w = FixedFormat(settings.width, settings.frac)
    g = settings.gaussian
    max_noise = math.sqrt(2 * a) / g.std
    return DatapathConfig(
        variant=Variant(variant),
        weight=w,
        grad=w,
        acc=FixedFormat(settings.width + 16, settings.frac + 13) if variant == "lp_f" else None,
        step=_unsigned_format(a),
        noise=_unsigned_format(max_noise),
        gaussian=g,
        sr_bits=settings.sr_bits,
        lanes=settings.chains,
    )


def _job_seeds(seed: int, alpha: float, vi: int) -> tuple[int, np.random.Generator]:
    """The streams of one (step size, variant) job: from the step size's value, not its position in
    the run, so ``--alpha 1e-4`` alone samples the same chains as the default three-step run."""
    bits = int(np.float64(alpha).view(np.uint64))
    ss = np.random.SeedSequence([seed, bits, vi])
    engine_seed = int(ss.generate_state(1, dtype=np.uint64)[0])
    return engine_seed, np.random.Generator(np.random.PCG64(ss.spawn(1)[0]))


def run_chain_set(
    variant: str,
    alpha: float,
    settings: ToySettings,
    ai: int = 0,
    vi: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``settings.chains`` chains of one variant at one step size; return moments and a histogram."""
    burn = math.ceil(settings.burn / alpha)
    steps = burn + max(math.ceil(settings.collect / alpha), settings.min_collect_steps)
    engine_seed, grng = _job_seeds(settings.seed, alpha, vi)
    wfmt = FixedFormat(settings.width, settings.frac)
    lsb = wfmt.lsb
    n_bins = wfmt.max_word - wfmt.min_word + 1
    hist = np.zeros(n_bins, dtype=np.int64)
    s1 = s2 = 0.0
    count = 0
    chains = settings.chains
    if variant == "fp":
        theta: np.ndarray = np.zeros(chains)
    else:
        cfg = toy_config(variant, settings, alpha)
        eng = NumpyEngine(cfg, engine_seed)
        regs = step_registers(cfg, HyperParams(alpha))
        state = np.zeros(chains, dtype=np.int64)
        weight = state
    t0 = time.time()
    next_report = 0.1
    for t in range(steps):
        if variant == "fp":
            grad = theta + settings.grad_noise * grng.standard_normal(chains)
            theta = sgld_step(theta, grad, alpha, 2 * alpha, grng)
            sample = theta
            words = wfmt.quantize(theta)
        else:
            gfloat = weight * lsb + settings.grad_noise * grng.standard_normal(chains)
            grad_w = cfg.grad.quantize(gfloat, "stochastic", grng)
            state, weight = eng.step(state, grad_w, regs)
            sample = weight * lsb
            words = weight
        if t >= burn:
            s1 += float(sample.sum())
            s2 += float(np.dot(sample, sample))
            count += chains
            hist += np.bincount(words - wfmt.min_word, minlength=n_bins)
        if progress is not None and (t + 1) / steps >= next_report:
            progress(f"{variant:>5} alpha={alpha:g}: {100 * (t + 1) // steps:3d}% of {steps} steps")
            next_report += 0.1
    mean = s1 / count
    std = math.sqrt(max(s2 / count - mean * mean, 0.0))
    return {
        "alpha": alpha,
        "variant": variant,
        "mean": mean,
        "std": std,
        "samples": count,
        "chains": chains,
        "steps": steps,
        "burn_in": burn,
        "seconds": time.time() - t0,
        "hist": hist.tolist(),
    }


def stderr_progress(msg: str) -> None:
    """Progress lines for long runs: stderr, flushed (stdout stays for tables and JSON)."""
    print(msg, file=sys.stderr, flush=True)


def _job(args: tuple[str, float, ToySettings, int, int, bool]) -> dict[str, Any]:
    variant, alpha, settings, ai, vi, verbose = args
    return run_chain_set(variant, alpha, settings, ai, vi, stderr_progress if verbose else None)


def run_toy(settings: ToySettings, jobs: int = 2, verbose: bool = True) -> dict[str, Any]:
    """All (step size, variant) pairs, largest jobs first, on ``jobs`` processes."""
    tasks = [
        (v, a, settings, ai, TOY_VARIANTS.index(v), verbose)
        for ai, a in enumerate(settings.alphas)
        for v in settings.variants
    ]
    tasks.sort(key=lambda t: -1 / t[1])
    t0 = time.time()
    workers = pool_size(jobs, len(tasks))  # never more processes than tasks or cores
    if workers > 1:
        with supervised_pool(workers) as pool:
            results = list(pool.map(_job, tasks))
    else:
        results = [_job(t) for t in tasks]
    order = {(a, v): i for i, (a, v) in enumerate((a, v) for a in settings.alphas for v in settings.variants)}
    results.sort(key=lambda r: order[(r["alpha"], r["variant"])])
    settings_d = asdict(settings)
    return {"settings": settings_d, "seconds": time.time() - t0, "results": results}


def format_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    alphas = sorted({r["alpha"] for r in rows}, reverse=True)
    variants = [v for v in TOY_VARIANTS if any(r["variant"] == v for r in rows)]
    names = {"fp": "float SGLD", "lp_f": "SGLDLP-F", "naive": "naive SGLDLP-L", "vc": "VC SGLDLP-L"}
    head = f"{'step':>8} | " + " | ".join(f"{names[v]:>20}" for v in variants)
    lines = [head, "-" * len(head)]
    for a in alphas:
        cells = []
        for v in variants:
            r = next(r for r in rows if r["alpha"] == a and r["variant"] == v)
            cells.append(f"{'mean ' + format(r['mean'], '+.3f') + ' std ' + format(r['std'], '.3f'):>20}")
        lines.append(f"{a:>8g} | " + " | ".join(cells))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["settings"]
    fmt = FixedFormat(s["width"], s["frac"])
    centers = np.arange(fmt.min_word, fmt.max_word + 1) * fmt.lsb
    rows = report["results"]
    alphas = sorted({r["alpha"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 4), squeeze=False)
    xs = np.linspace(-4.5, 4.5, 400)
    colors = {"fp": "black", "lp_f": "tab:blue", "naive": "tab:red", "vc": "tab:green"}
    for ax, a in zip(axes[0], alphas, strict=True):
        ax.plot(xs, np.exp(-xs**2 / 2) / math.sqrt(2 * math.pi), color="0.6", lw=3, label="N(0, 1)")
        for r in (r for r in rows if r["alpha"] == a):
            h = np.asarray(r["hist"], dtype=float)
            dens = h / h.sum() / fmt.lsb
            ax.step(centers, dens, where="mid", color=colors[r["variant"]], lw=1.2,
                    label=f"{r['variant']} (std {r['std']:.3f})")
        ax.set_xlim(-6, 6)
        ax.set_title(f"step size {a:g}, Q({s['width']},{s['frac']})")
        ax.set_xlabel("theta")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("density")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_expectations(report: dict[str, Any], tol: float = 0.02) -> list[str]:
    """The paper's claims on this run: VC and LP-F std within ``tol`` of SGLD's; naive inflated and growing.

    SGLD's own stationary std on this target is 1 / sqrt(1 - alpha/2) (1.0005 at 2e-3).
    """
    problems = []
    rows = report["results"]
    for r in rows:
        target = 1 / math.sqrt(1 - r["alpha"] / 2)
        if r["variant"] in ("vc", "lp_f", "fp") and abs(r["std"] - target) > tol:
            problems.append(f"{r['variant']} at {r['alpha']:g}: std {r['std']:.3f} not within {tol} of {target:.4f}")
    naive = sorted((r for r in rows if r["variant"] == "naive"), key=lambda r: -r["alpha"])
    for r in naive:
        if r["std"] < 1 / math.sqrt(1 - r["alpha"] / 2) + 5 * tol:
            problems.append(f"naive at {r['alpha']:g}: std {r['std']:.3f} not inflated")
    for big, small in itertools.pairwise(naive):
        if small["std"] <= big["std"]:
            problems.append(f"naive std does not grow as the step shrinks ({big['alpha']:g} -> {small['alpha']:g})")
    return problems


def summary_rows(report: dict[str, Any]) -> Sequence[dict[str, Any]]:
    keys = ("alpha", "variant", "mean", "std", "samples")
    return [{k: r[k] for k in keys} for r in report["results"]]


def toy_stationary(variant: str, alpha: float, settings: ToySettings | None = None) -> dict[str, Any]:
    """Exact long-run mean and std of the toy chain for a ``-L`` variant (naive, vc, sgd_l)."""
    # variants left as they are: ToySettings lists the sampled toy's variants, and sgd_l is not one
    settings = dataclasses.replace(settings or ToySettings(), alphas=(alpha,))
    cfg = toy_config(variant, settings, alpha)
    regs = step_registers(cfg, HyperParams(alpha))
    pi = stationary(transition_matrix(cfg, regs, settings.grad_noise))
    x = np.arange(cfg.state.min_word, cfg.state.max_word + 1) * cfg.state.lsb
    mean = float(pi @ x)
    std = math.sqrt(max(float(pi @ (x * x)) - mean * mean, 0.0))
    return {"alpha": alpha, "variant": variant, "mean": mean, "std": std, "pi": pi}
