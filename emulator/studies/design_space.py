"""Hardware design-space studies: SR random bits, Gaussian generator quality, word length.

Three axes, each varied alone around the default datapath (SR with every dropped bit, the
4 x 8-bit inversion-table Gaussian, ``Q(8,3)`` toy / ``Q(8,8)`` BNN weights):

* **Toy, exact.** The paper's Gaussian toy as a finite Markov chain (:mod:`emulator.analysis.markov`):
  exact stationary mean and std of the ``-L`` variants, no Monte Carlo error, so differences
  of 1e-5 are real. Each row also says how many random bits one update reads (and how many
  the lane's field layout wires, which is what a generator must deliver per clock), the VC
  branch, and the exact worst-case SR bias. A configuration the datapath rejects (e.g. more
  random bits than one 64-bit generator word) is reported as invalid, not raised.
* **Gaussian generators, exact.** Moments and tails of each generator by enumerating its
  output distribution (:meth:`GaussianSpec.pmf`): variance, excess kurtosis, tail reach and
  P(|z| > 3 sigma), P(|z| > 4 sigma) against the true Gaussian's.
* **BNN, sampled.** An MLP on scikit-learn digits trained with the hardware's arithmetic
  (:func:`emulator.studies.training.train_run`), test NLL / ECE / error as mean and std over seeds.

:func:`run_design_space` runs everything; :func:`write_outputs` writes JSON, a Markdown
table file and PNG plots. ``lpsgld design-space`` is the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.exact import used_fields
from ..analysis.markov import stationary, transition_matrix
from ..spec.datapath import WORD_BITS, DatapathConfig, Variant
from ..spec.formats import sr_bias
from ..spec.gaussian import GaussianSpec
from ..spec.host import HyperParams, step_registers, step_registers_flushed
from .store import atomic_write_json, json_safe
from .toy import ToySettings, toy_config

Progress = Callable[[str], None]

TOY_VARIANTS = ("naive", "vc", "sgd_l")
SAMPLER_VARIANTS = ("naive", "vc")  # the ones whose target is N(0, 1); sgd_l is a noise-free reference
BNN_METHODS = ("vc", "naive", "sgdlp-l", "sgldlp-f")
BNN_DATASETS = ("digits", "fashion-mnist")
DEFAULT_GAUSSIANS = ("table4x8", "table1x8", "table2x8", "clt4x8", "clt1x8", "table1x16", "table4x4", "clt8x4",
                     "clt12x4")
DEFAULT_BNN_GAUSSIANS = ("table4x8", "table1x8", "table2x8", "clt4x8", "clt1x8")  # training.GAUSSIANS keys
MAX_TOY_WIDTH = 12  # the exact solver's matrix has 4^W entries: W = 10 takes seconds, W = 12 minutes

_GAUSS_RE = re.compile(r"^(table|clt):?(\d+)x(\d+)(?:(?::|f)(\d+))?$")


# ---- parsing and naming -------------------------------------------------------------


def parse_gaussian(text: str) -> GaussianSpec:
    """``table4x8``, ``table:4x8``, ``table:4x8:10`` (frac 10) or ``clt4x8``; ValueError naming ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"Gaussian spec must be a string, got {text!r}")
    m = _GAUSS_RE.match(text.strip())
    if m is None:
        raise ValueError(f"bad Gaussian spec {text!r}: expected KIND TERMSxBITS, e.g. 'table4x8' or 'clt:4x8'")
    kind, terms, bits, frac = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    try:
        if kind == "clt":
            if frac is not None and int(frac) != 0:
                raise ValueError(f"clt generator has frac 0, got {frac}")
            return GaussianSpec("clt", terms, bits, 0)
        return GaussianSpec("table", terms, bits, 8 if frac is None else int(frac))
    except ValueError as e:
        raise ValueError(f"bad Gaussian spec {text!r}: {e}") from None


def gaussian_name(g: GaussianSpec) -> str:
    """The short name used in tables: ``table4x8`` (``table4x8f10`` for a non-default frac), ``clt4x8``."""
    base = f"{g.kind}{g.terms}x{g.index_bits}"
    return base + (f"f{g.frac}" if g.kind == "table" and g.frac != 8 else "")


def parse_sr_bits(text: str) -> int | None:
    """``full`` (or ``none``): every dropped bit; else an int >= 1. ValueError naming ``text``."""
    t = str(text).strip().lower()
    if t in ("full", "none", "exact"):
        return None
    try:
        k = int(t)
    except ValueError:
        raise ValueError(f"bad SR bits {text!r}: expected an int >= 1 or 'full'") from None
    if k < 1:
        raise ValueError(f"bad SR bits {text!r}: must be >= 1 (or 'full')")
    return k


def sr_label(k: int | None) -> str:
    return "full" if k is None else str(k)


# ---- settings ------------------------------------------------------------------------


def _check_tuple(name: str, values: Sequence[Any]) -> None:
    if not values:
        raise ValueError(f"{name} must not be empty")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has duplicates: {list(values)}")


@dataclass(frozen=True)
class DesignSpaceSettings:
    """What the study runs. Defaults: the three axes of issue 5 point 4 around the default datapath."""

    alphas: tuple[float, ...] = (2e-3, 1e-3, 1e-4)
    toy_variants: tuple[str, ...] = TOY_VARIANTS
    sr_bits: tuple[int | None, ...] = (1, 2, 4, 8, 12, 16, None)
    gaussians: tuple[str, ...] = DEFAULT_GAUSSIANS
    widths: tuple[int, ...] = (6, 8, 10)
    toy_int_bits: int = 4  # toy word Q(W, W - 1 - 4): the range [-16, 16) stays, the LSB moves with W
    toy_width: int = 8  # the default toy word Q(8, 3) of the SR and Gaussian axes
    bnn: bool = True
    bnn_dataset: str = "digits"
    bnn_n_train: int | None = None
    bnn_n_test: int | None = None
    bnn_methods: tuple[str, ...] = ("vc", "naive", "sgdlp-l")
    bnn_gaussians: tuple[str, ...] = DEFAULT_BNN_GAUSSIANS
    bnn_widths: tuple[int, ...] = (6, 8, 10)
    bnn_int_bits: int = 0  # BNN word Q(W, W): the training default's range [-0.5, 0.5) stays
    bnn_temperatures: tuple[float, ...] = (1e-3, 1.0)
    bnn_seeds: int = 3
    bnn_lr: float = 0.5
    bnn_epochs: int = 20
    bnn_burnin: int = 10
    bnn_lanes: int = 8192
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("alphas", "toy_variants", "sr_bits", "gaussians", "widths"):
            _check_tuple(name, getattr(self, name))
        if any(not (isinstance(a, (int, float)) and 0 < a < 1) for a in self.alphas):
            raise ValueError(f"step sizes must be in (0, 1), got {self.alphas}")
        bad = [v for v in self.toy_variants if v not in TOY_VARIANTS]
        if bad:
            raise ValueError(f"unknown toy variant(s) {bad}; choose from {TOY_VARIANTS}")
        for k in self.sr_bits:
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
                raise ValueError(f"sr_bits entries must be ints >= 1 or None (full), got {k!r}")
        for g in self.gaussians:
            parse_gaussian(g)
        if not 0 <= self.toy_int_bits <= 8:
            raise ValueError(f"toy_int_bits must be in [0, 8], got {self.toy_int_bits}")
        for w in (*self.widths, self.toy_width):
            if isinstance(w, bool) or not isinstance(w, int) or not self.toy_int_bits + 2 <= w <= MAX_TOY_WIDTH:
                raise ValueError(
                    f"toy word length {w!r} must be an int in [{self.toy_int_bits + 2}, {MAX_TOY_WIDTH}] "
                    f"(toy_int_bits={self.toy_int_bits} and at least one fractional bit; the exact solver is O(4^W))"
                )
        if not self.bnn:
            return
        from .training import GAUSSIANS, METHODS

        for name in ("bnn_methods", "bnn_gaussians", "bnn_widths", "bnn_temperatures"):
            _check_tuple(name, getattr(self, name))
        if self.bnn_dataset not in BNN_DATASETS:
            raise ValueError(f"unknown BNN data set {self.bnn_dataset!r}; expected one of {BNN_DATASETS}")
        bad = [m for m in self.bnn_methods if m not in METHODS or METHODS[m] == "fp"]
        if bad:
            raise ValueError(f"BNN methods must be low-precision methods of {tuple(METHODS)}, got {bad}")
        bad = [g for g in self.bnn_gaussians if g not in GAUSSIANS]
        if bad:
            raise ValueError(f"unknown BNN Gaussian(s) {bad}; the training runs take keys of {tuple(GAUSSIANS)}")
        if not 0 <= self.bnn_int_bits <= 8:
            raise ValueError(f"bnn_int_bits must be in [0, 8], got {self.bnn_int_bits}")
        for w in self.bnn_widths:
            if isinstance(w, bool) or not isinstance(w, int) or not 4 <= w <= 16:
                raise ValueError(f"BNN word length {w!r} must be an int in [4, 16]")
        if any(not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0) for t in self.bnn_temperatures):
            raise ValueError(f"BNN temperatures must be finite and > 0, got {self.bnn_temperatures}")
        for name, lo in (("bnn_seeds", 1), ("bnn_epochs", 1), ("bnn_burnin", 0), ("bnn_lanes", 1), ("threads", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if self.bnn_burnin >= self.bnn_epochs:
            raise ValueError(f"bnn_burnin ({self.bnn_burnin}) must be smaller than bnn_epochs ({self.bnn_epochs})")

    def toy_frac(self, width: int) -> int:
        return width - 1 - self.toy_int_bits

    def bnn_frac(self, width: int) -> int:
        return width - self.bnn_int_bits

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- random-bit accounting -----------------------------------------------------------


def bits_read(cfg: DatapathConfig, regs: Any) -> int:
    """Random bits one update actually reads under ``regs`` (VC reads one branch's fields)."""
    return sum(cfg.fields[n].width for n in used_fields(cfg, regs))


def bits_wired(cfg: DatapathConfig) -> int:
    """Random bits the lane's field layout occupies: what its generator must deliver per update.

    VC's slot 2 is shared by the SR field (branch B) and the Gaussian (branch A), so it is the
    wider of the two; fields are packed LSB-first and never straddle a 64-bit word.
    """
    return max(f.word * WORD_BITS + f.offset + f.width for f in cfg.fields.values())


def sr_bias_worst(drop_bits: int, k: int) -> Fraction:
    """Exact worst-case SR bias (output LSBs, always <= 0) over every input, with ``k`` of ``drop_bits`` random bits.

    The bias of x is -(x mod 2^(s-k)) / 2^s (:func:`emulator.spec.formats.sr_bias`); the worst residue
    is 2^(s-k) - 1, just under 2^-k LSB.
    """
    k = min(k, drop_bits)
    return sr_bias((1 << (drop_bits - k)) - 1, drop_bits, k)


def sr_bias_mean(drop_bits: int, k: int) -> Fraction:
    """Exact SR bias averaged over uniformly distributed dropped bits: -(2^(s-k) - 1) / 2^(s+1) LSB."""
    k = min(k, drop_bits)
    return -Fraction((1 << (drop_bits - k)) - 1, 1 << (drop_bits + 1))


# ---- Gaussian generators, exact ----------------------------------------------------------


def gaussian_exact(g: GaussianSpec) -> dict[str, Any]:
    """Exact moments and tails of ``g`` by enumerating its output distribution (integer sums).

    Independent of :meth:`GaussianSpec.moments` (which adds per-term cumulants): the variance
    here comes from the convolved pmf, so the two agree only if both are right.
    """
    zmin, counts = g.pmf()
    total = 1 << g.bits
    z = list(range(zmin, zmin + len(counts)))
    c = [int(x) for x in counts]
    if sum(c) != total:
        raise AssertionError(f"{gaussian_name(g)}: pmf counts sum to {sum(c)}, not 2^{g.bits}")
    s1 = sum(ci * zi for ci, zi in zip(c, z, strict=True))
    mean = Fraction(s1, total)
    m2 = sum((ci * (zi - mean) ** 2 for ci, zi in zip(c, z, strict=True)), Fraction(0)) / total
    m4 = sum((ci * (zi - mean) ** 4 for ci, zi in zip(c, z, strict=True)), Fraction(0)) / total
    sigma = math.sqrt(m2)
    zs = np.abs(np.asarray(z, dtype=np.float64) - float(mean)) / sigma
    cs = np.asarray(counts, dtype=np.float64)
    out: dict[str, Any] = {
        "name": gaussian_name(g),
        "kind": g.kind,
        "terms": g.terms,
        "index_bits": g.index_bits,
        "random_bits": g.bits,
        "rom_entries": 0 if g.kind == "clt" else 1 << g.index_bits,
        "mean_z": float(mean),
        "variance_z": m2,  # Fraction: exact, in units of z (2^-frac real units)
        "variance": float(m2 / (1 << (2 * g.frac))),
        "excess_kurtosis_exact": m4 / (m2 * m2) - 3,  # Fraction
        "excess_kurtosis": float(m4 / (m2 * m2) - 3),
        "tail_reach_sigma": float(zs.max()),
        "support": int((cs > 0).sum()),
    }
    for k in (3, 4):
        p = float(cs[zs > k].sum()) / total
        ideal = math.erfc(k / math.sqrt(2.0))
        out[f"p_gt_{k}sigma"] = p
        out[f"p_gt_{k}sigma_ratio"] = p / ideal
    return out


def survival(g: GaussianSpec, ts: np.ndarray) -> np.ndarray:
    """Exact P(|z| > t sigma) of ``g`` at each t of ``ts``."""
    zmin, counts = g.pmf()
    sigma = math.sqrt(g.moments()["variance"])
    za = np.abs(np.arange(zmin, zmin + len(counts), dtype=np.float64)) / sigma
    cs = counts.astype(np.float64) / float(1 << g.bits)
    return np.array([cs[za > t].sum() for t in ts])


# ---- the toy, exact ---------------------------------------------------------------------------


def toy_datapath(variant: str, alpha: float, width: int, frac: int, sr_bits: int | None,
                 gaussian: GaussianSpec) -> DatapathConfig:
    """The toy's datapath for one step size (as :func:`emulator.studies.toy.toy_config` builds it).

    ``sgd_l`` (not a toy sampling variant) gets the naive configuration with the variant
    swapped: the same formats and registers, no noise.
    """
    base = "naive" if variant == "sgd_l" else variant
    settings = ToySettings(alphas=(alpha,), variants=(base,), width=width, frac=frac, sr_bits=sr_bits,
                           gaussian=gaussian)
    cfg = toy_config(base, settings)
    return dataclasses.replace(cfg, variant=Variant.SGD_L) if variant == "sgd_l" else cfg


def distribution_after(p: np.ndarray, start: int, steps_log2: int) -> np.ndarray:
    """Row ``start`` of P^(2^steps_log2): where the chain is after that many steps from word index ``start``.

    By repeated squaring (rows renormalized against float drift); defined for any chain,
    reducible or periodic, unlike the stationary distribution.
    """
    for _ in range(steps_log2):
        p = p @ p
        p /= p.sum(axis=1, keepdims=True)
    pi = np.clip(p[start], 0.0, None)
    return pi / pi.sum()


def horizon_log2(alpha: float) -> int:
    """log2 of the finite horizon used when there is no unique stationary distribution: >= 10 / alpha steps."""
    return math.ceil(math.log2(10.0 / alpha))


def toy_point(variant: str, alpha: float, width: int, frac: int, sr_bits: int | None,
              gaussian: GaussianSpec, grad_noise: float = 0.1) -> dict[str, Any]:
    """One exact toy result: stationary mean and std, random bits, VC branch, SR bias; or why it is invalid."""
    row: dict[str, Any] = {"variant": variant, "alpha": alpha, "width": width, "frac": frac,
                           "sr_bits": sr_bits, "gaussian": gaussian_name(gaussian)}
    try:
        cfg = toy_datapath(variant, alpha, width, frac, sr_bits, gaussian)
        regs = step_registers(cfg, HyperParams(alpha))
    except ValueError as e:  # a configuration the datapath rejects is a result of the study
        return {**row, "status": "invalid", "reason": str(e)}
    t0 = time.perf_counter()
    p = transition_matrix(cfg, regs, grad_noise)
    pi = None
    if variant in SAMPLER_VARIANTS:
        try:
            pi = stationary(p)
            limit = "stationary"
        except np.linalg.LinAlgError:
            pi = None
    if pi is None:
        # Noise-free SGD (and any chain the solver finds singular) can have several closed classes:
        # k-bit SR without noise may only ever round down. Report where the chain is after a long
        # finite horizon from the toy's theta_0 = 0 instead.
        m = horizon_log2(alpha)
        pi = distribution_after(p, -cfg.state.min_word, m)
        limit = f"after 2^{m} steps from theta_0 = 0"
    x = np.arange(cfg.state.min_word, cfg.state.max_word + 1) * cfg.state.lsb
    mean = float(pi @ x)
    std = math.sqrt(max(float(pi @ (x * x)) - mean * mean, 0.0))
    sampler = variant in SAMPLER_VARIANTS
    return {
        **row,
        "status": "ok",
        "branch": ("A" if regs.vc_noise else "B") if cfg.variant is Variant.VC else "-",
        "drop_bits": cfg.drop_bits,
        "sr_k": cfg.sr_k,
        "bits_read": bits_read(cfg, regs),
        "bits_wired": bits_wired(cfg),
        "reads_sr": "sr" in used_fields(cfg, regs),
        "reads_gauss": "gauss" in used_fields(cfg, regs),
        "sr_bias_worst": float(sr_bias_worst(cfg.drop_bits, cfg.sr_k)),
        "sr_bias_mean": float(sr_bias_mean(cfg.drop_bits, cfg.sr_k)),
        "mean": mean,
        "std": std,
        "std_error": abs(std - 1.0) if sampler else None,
        "saturated_mass": float(pi[0] + pi[-1]),  # probability on the two end words
        "limit": limit,
        "seconds": time.perf_counter() - t0,
    }


def _toy_plan(s: DesignSpaceSettings) -> list[tuple[str, Any, str, int, int, int | None, GaussianSpec]]:
    """(axis, axis value, variant, width, frac, sr_bits, gaussian) for every toy point, per step size."""
    default_g = GaussianSpec()
    w0 = s.toy_width
    plan: list[tuple[str, Any, str, int, int, int | None, GaussianSpec]] = []
    for k in s.sr_bits:
        for v in s.toy_variants:
            plan.append(("sr_bits", sr_label(k), v, w0, s.toy_frac(w0), k, default_g))
    for name in s.gaussians:
        g = parse_gaussian(name)
        for v in s.toy_variants:
            if v in SAMPLER_VARIANTS:  # sgd_l injects no noise: the generator is irrelevant
                plan.append(("gaussian", gaussian_name(g), v, w0, s.toy_frac(w0), None, g))
    for w in s.widths:
        for v in s.toy_variants:
            plan.append(("width", w, v, w, s.toy_frac(w), None, default_g))
    return plan


def run_toy_axes(s: DesignSpaceSettings, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Every toy row of the three axes; a configuration shared by two axes is solved once."""
    cache: dict[tuple[Any, ...], dict[str, Any]] = {}
    rows = []
    plan = _toy_plan(s)
    t0 = time.perf_counter()
    for i, (axis, value, v, w, f, k, g) in enumerate(plan):
        for a in s.alphas:
            key = (v, a, w, f, k, g)
            if key not in cache:
                cache[key] = toy_point(v, a, w, f, k, g)
            rows.append({"axis": axis, "value": value, **cache[key]})
        if progress is not None:
            progress(f"toy {i + 1}/{len(plan)}: {axis}={value} {v} Q({w},{f}) ({time.perf_counter() - t0:.1f} s)")
    return rows


# ---- the BNN, sampled ----------------------------------------------------------------------------


def _bnn_plan(s: DesignSpaceSettings) -> list[tuple[str, Any, dict[str, Any]]]:
    """(axis, axis value, RunSpec fields without seed) for every BNN configuration."""
    from .training import is_langevin

    w0, f0 = 8, s.bnn_frac(8)
    plan: list[tuple[str, Any, dict[str, Any]]] = []
    for t in s.bnn_temperatures:
        for m in s.bnn_methods:
            # SGD methods ignore the temperature: run them at the first one and report them under each
            temp = t if is_langevin(m) else s.bnn_temperatures[0]
            base = {"method": m, "temperature": temp, "width": w0, "frac": f0, "sr_bits": None, "gaussian": "table4x8",
                    "report_temperature": t}
            for k in s.sr_bits:
                plan.append(("sr_bits", sr_label(k), {**base, "sr_bits": k}))
            if m in ("vc", "naive", "sgldlp-f"):  # only these inject Gaussian noise
                for g in s.bnn_gaussians:
                    plan.append(("gaussian", g, {**base, "gaussian": g}))
            for w in s.bnn_widths:
                plan.append(("width", w, {**base, "width": w, "frac": s.bnn_frac(w)}))
    return plan


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return float(statistics.fmean(xs)), float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def check_bnn(s: DesignSpaceSettings) -> None:
    """Every BNN run's data subset, RunSpec and datapath configuration, checked before any work
    (a bad ``bnn_n_train`` or ``bnn_lr`` fails here, not after the toy axes' minutes)."""
    from .data import load_dataset
    from .training import RunSpec, fixed_training_config

    data = load_dataset(s.bnn_dataset)
    if s.bnn_n_train is not None or s.bnn_n_test is not None:
        try:
            data = data.subset(s.bnn_n_train, s.bnn_n_test)
        except ValueError as e:  # "n_train must be in [1, N] ...": name the setting (--bnn-n-train)
            raise ValueError(f"bnn_{e}") from None
    for _, _, fields in _bnn_plan(s):
        spec_fields = {k: v for k, v in fields.items() if k != "report_temperature"}
        spec = RunSpec(dataset=s.bnn_dataset, model="mlp", lr=s.bnn_lr, seed=0, epochs=s.bnn_epochs,
                       burnin=s.bnn_burnin, n_train=s.bnn_n_train, n_test=s.bnn_n_test, lanes=s.bnn_lanes,
                       **spec_fields)
        fixed_training_config(spec, len(data.y_train))


def run_bnn_axes(s: DesignSpaceSettings, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Train every BNN configuration for ``s.bnn_seeds`` seeds; one row per (axis value, method, temperature)."""
    import torch

    from .data import load_dataset
    from .training import RunSpec, fixed_training_config, train_run

    data = load_dataset(s.bnn_dataset)
    if s.bnn_n_train is not None or s.bnn_n_test is not None:
        data = data.subset(s.bnn_n_train, s.bnn_n_test)
    n = len(data.y_train)
    plan = _bnn_plan(s)
    cache: dict[str, dict[str, Any]] = {}
    runs_total = len({json.dumps({k: v for k, v in p.items() if k != "report_temperature"}, sort_keys=True)
                      for _, _, p in plan}) * s.bnn_seeds
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)  # small runs: one thread is faster than contention on shared cores
    rows = []
    t0 = time.perf_counter()
    try:
        for axis, value, fields in plan:
            spec_fields = {k: v for k, v in fields.items() if k != "report_temperature"}
            results = []
            for seed in range(s.bnn_seeds):
                spec = RunSpec(dataset=s.bnn_dataset, model="mlp", lr=s.bnn_lr, seed=seed, epochs=s.bnn_epochs,
                               burnin=s.bnn_burnin, n_train=s.bnn_n_train, n_test=s.bnn_n_test, lanes=s.bnn_lanes,
                               **spec_fields)
                if spec.key not in cache:
                    r = train_run(spec, data)
                    cache[spec.key] = {"metrics": r.metrics, "seconds": r.seconds}
                    if progress is not None:
                        progress(f"bnn {len(cache)}/{runs_total}: {spec.method} T={spec.temperature:g} "
                                 f"{axis}={value} seed {seed}: NLL {r.metrics['nll']:.4f} "
                                 f"({r.seconds:.1f} s, {time.perf_counter() - t0:.0f} s total)")
                results.append(cache[spec.key])
            cfg = fixed_training_config(spec, n)
            regs, flushed = step_registers_flushed(cfg, HyperParams(spec.lr, spec.temperature, n, spec.weight_decay))
            row: dict[str, Any] = {
                "axis": axis, "value": value, "method": spec.method, "temperature": fields["report_temperature"],
                "trained_temperature": spec.temperature, "width": spec.width, "frac": spec.frac,
                "sr_bits": spec.sr_bits, "gaussian": spec.gaussian, "seeds": s.bnn_seeds,
                "branch": ("A" if regs.vc_noise else "B") if cfg.variant is Variant.VC else "-",
                "bits_read": bits_read(cfg, regs), "bits_wired": bits_wired(cfg), "flushed": list(flushed),
                "seconds": sum(r["seconds"] for r in results),
            }
            for metric in ("nll", "ece", "error"):
                vals = [r["metrics"][metric] for r in results]
                row[metric], row[metric + "_std"] = _mean_std(vals)
                row[metric + "_runs"] = vals
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return rows


# ---- the whole study -----------------------------------------------------------------------------


def run_design_space(s: DesignSpaceSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Gaussian table, toy axes and (unless ``s.bnn`` is False) BNN axes, with wall times."""
    if s.bnn:
        check_bnn(s)
    t0 = time.perf_counter()
    gauss = [gaussian_exact(parse_gaussian(g)) for g in s.gaussians]
    t_g = time.perf_counter()
    toy = run_toy_axes(s, progress)
    t_toy = time.perf_counter()
    bnn = run_bnn_axes(s, progress) if s.bnn else []
    t_bnn = time.perf_counter()
    return {
        "settings": s.to_dict(),
        "gaussians": gauss,
        "toy": toy,
        "bnn": bnn,
        "seconds": {"gaussians": t_g - t0, "toy": t_toy - t_g, "bnn": t_bnn - t_toy, "total": t_bnn - t0},
    }


# ---- tables --------------------------------------------------------------------------------------


def _md(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def gaussian_table(report: dict[str, Any]) -> str:
    ideal3, ideal4 = math.erfc(3 / math.sqrt(2)), math.erfc(4 / math.sqrt(2))
    head = ["generator", "random bits", "ROM entries", "variance", "excess kurtosis", "tail reach (sigma)",
            f"P(abs z > 3 sigma) (N(0,1): {ideal3:.2e})", f"P(abs z > 4 sigma) (N(0,1): {ideal4:.2e})"]
    rows = [[g["name"], str(g["random_bits"]), str(g["rom_entries"]), f"{g['variance']:.6g}",
             f"{g['excess_kurtosis']:+.4f}", f"{g['tail_reach_sigma']:.3f}",
             f"{g['p_gt_3sigma']:.2e} (x{g['p_gt_3sigma_ratio']:.2f})",
             f"{g['p_gt_4sigma']:.2e} (x{g['p_gt_4sigma_ratio']:.2f})"] for g in report["gaussians"]]
    return _md(head, rows)


def _toy_cell(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return "invalid"
    return f"{r['std']:.5f} ({r['mean']:+.3f})"


def toy_table(report: dict[str, Any], axis: str) -> str:
    """One row per (axis value, variant): std (mean) at each step size, bits read / wired, worst SR bias."""
    rows_all = [r for r in report["toy"] if r["axis"] == axis]
    alphas = list(dict.fromkeys(r["alpha"] for r in rows_all))
    keys = list(dict.fromkeys((r["value"], r["variant"]) for r in rows_all))
    head = [{"sr_bits": "SR bits", "gaussian": "Gaussian", "width": "word"}[axis], "variant",
            *(f"std (mean) at {a:g}" for a in alphas), "bits read per update", "bits wired", "worst SR bias (LSB)"]
    rows = []
    notes = []
    for value, v in keys:
        rs = [next(r for r in rows_all if r["value"] == value and r["variant"] == v and r["alpha"] == a)
              for a in alphas]
        ok = [r for r in rs if r["status"] == "ok"]
        label = f"Q({rs[0]['width']},{rs[0]['frac']})" if axis == "width" else str(value)
        bad = [r for r in rs if r["status"] != "ok"]
        if bad:  # one note per row: the reasons differ only in the step-size-dependent SR width
            notes.append(f"{label} {v}: {bad[0]['reason']}")
        branches = "".join(r["branch"] for r in ok) if v == "vc" else ""
        bits_read = "/".join(str(r["bits_read"]) for r in ok) + (f" (branch {branches})" if branches else "")
        wired = "/".join(dict.fromkeys(str(r["bits_wired"]) for r in ok))
        bias = "/".join(dict.fromkeys(f"{r['sr_bias_worst']:.2g}" for r in ok))
        rows.append([label, v, *(_toy_cell(r) for r in rs), bits_read or "-", wired or "-", bias or "-"])
    text = _md(head, rows)
    if notes:
        text += "\n\n" + "\n".join(f"- invalid: {n}" for n in notes)
    return text


def bnn_table(report: dict[str, Any], axis: str) -> str:
    rows_all = [r for r in report["bnn"] if r["axis"] == axis]
    if not rows_all:
        return ""
    head = [{"sr_bits": "SR bits", "gaussian": "Gaussian", "width": "word"}[axis], "method", "T", "VC branch",
            "bits read", "test NLL", "ECE", "error"]
    rows = []
    for r in rows_all:
        label = f"Q({r['width']},{r['frac']})" if axis == "width" else str(r["value"])
        t = f"{r['temperature']:g}" + ("" if r["temperature"] == r["trained_temperature"] else " (n/a)")
        rows.append([label, r["method"], t, r["branch"], str(r["bits_read"]),
                     f"{r['nll']:.4f} ± {r['nll_std']:.4f}", f"{r['ece']:.4f} ± {r['ece_std']:.4f}",
                     f"{r['error']:.3f} ± {r['error_std']:.3f}"])
    rows.sort(key=lambda x: (float(x[2].split()[0]), BNN_METHODS.index(x[1]) if x[1] in BNN_METHODS else 9))
    return _md(head, rows)


def predicted_sr_bits(lsb: float, alpha: float, tol: float) -> int:
    """Fewest SR bits whose mean truncation bias, 2^-(k+1) LSB per step, shifts the toy's mean by <= ``tol``.

    On U = theta^2 / 2 a constant per-step bias b moves the stationary mean by b / alpha (the
    gradient pull alpha * theta balances it), so k >= log2(LSB / (alpha * tol)) - 1.
    """
    return max(1, math.ceil(math.log2(lsb / (alpha * tol))) - 1)


def sr_bits_enough(report: dict[str, Any], tol: float = 0.01) -> list[dict[str, Any]]:
    """Per (variant, step size): the fewest tested SR bits from which on mean and std stay within ``tol`` of full SR."""
    rows = [r for r in report["toy"] if r["axis"] == "sr_bits" and r["status"] == "ok"
            and r["variant"] in SAMPLER_VARIANTS]
    order = [sr_label(k) for k in report["settings"]["sr_bits"]]
    out = []
    for v in dict.fromkeys(r["variant"] for r in rows):
        for a in dict.fromkeys(r["alpha"] for r in rows):
            by_k = {r["value"]: r for r in rows if r["variant"] == v and r["alpha"] == a}
            if "full" not in by_k:
                continue
            full = by_k["full"]
            enough = None
            for k in reversed(order):  # walk down from full while every setting stays within tol
                r = by_k.get(k)
                if r is None or abs(r["mean"] - full["mean"]) > tol or abs(r["std"] - full["std"]) > tol:
                    break
                enough = k
            lsb = 2.0 ** -full["frac"]
            out.append({
                "variant": v, "alpha": a, "branch": full["branch"], "reads_sr": full["reads_sr"],
                "enough": enough, "predicted": predicted_sr_bits(lsb, a, tol) if full["reads_sr"] else None,
                "bits_read": by_k[enough]["bits_read"] if enough is not None else None, "std_full": full["std"],
            })
    return out


def enough_table(report: dict[str, Any], tol: float = 0.01) -> str:
    head = ["variant", "step", "VC branch", f"fewest tested SR bits within {tol:g} of full SR (mean and std)",
            "predicted: log2(LSB / (step * tol)) - 1", "bits read per update then", "std with full SR"]
    rows = []
    for r in sr_bits_enough(report, tol):
        enough = r["enough"] if r["reads_sr"] else f"{r['enough']} (SR not read)"
        rows.append([r["variant"], f"{r['alpha']:g}", r["branch"], str(enough),
                     "-" if r["predicted"] is None else str(r["predicted"]), str(r["bits_read"]),
                     f"{r['std_full']:.5f}"])
    return _md(head, rows)


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    w0 = s["toy_width"]
    f0 = w0 - 1 - s["toy_int_bits"]
    parts = [
        "# Design-space study",
        "",
        "## Gaussian generators (exact, by enumeration)",
        "",
        gaussian_table(report),
        "",
        f"## Toy, exact stationary std (mean) of N(0,1), Q({w0},{f0}) unless the word axis says otherwise",
        "",
        "Bits read: random bits one update reads at each step size (VC reads one branch's fields); bits wired:",
        "the lane's field layout, what its generator must supply per clock. Worst SR bias: exact, over every",
        "input, in output LSBs (always toward -inf).",
    ]
    for axis, title in (("sr_bits", "SR random bits"), ("gaussian", "Gaussian generator"), ("width", "word length")):
        parts += ["", f"### {title}", "", toy_table(report, axis)]
        if axis == "sr_bits" and any(r["axis"] == "sr_bits" and r["value"] == "full" for r in report["toy"]):
            parts += ["", "How many SR bits are enough on the toy:", "", enough_table(report)]
    if report["bnn"]:
        parts += ["", f"## BNN: MLP on {s['bnn_dataset']}, lr {s['bnn_lr']:g}, {s['bnn_epochs']} epochs "
                      f"(burn-in {s['bnn_burnin']}), mean ± std over {s['bnn_seeds']} seeds",
                  "", "T (n/a): SGD methods ignore the temperature; the same runs are listed under each T."]
        for axis, title in (("sr_bits", "SR random bits"), ("gaussian", "Gaussian generator"),
                            ("width", "word length")):
            parts += ["", f"### {title}", "", bnn_table(report, axis)]
    sec = report["seconds"]
    parts += ["", f"Wall time: Gaussians {sec['gaussians']:.1f} s, toy {sec['toy']:.1f} s, BNN {sec['bnn']:.1f} s, "
                  f"total {sec['total']:.1f} s."]
    return "\n".join(parts) + "\n"


# ---- plots ---------------------------------------------------------------------------------------


_FLOOR = 1e-6  # log axes: exact zeros are drawn at this floor


def _toy_axis_panels(ax_std: Any, ax_mean: Any, report: dict[str, Any], axis: str, xs: list[Any],
                     xlabels: list[str]) -> None:
    rows = [r for r in report["toy"] if r["axis"] == axis and r["status"] == "ok"]
    alphas = list(dict.fromkeys(r["alpha"] for r in rows))
    colors = dict(zip(alphas, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), strict=False))
    styles = {"naive": ("--", "o"), "vc": ("-", "s"), "sgd_l": (":", "^")}
    for v in dict.fromkeys(r["variant"] for r in rows):
        for a in alphas:
            pts = [(xs.index(r["value"]), r) for r in rows if r["variant"] == v and r["alpha"] == a]
            if not pts:
                continue
            ls, mk = styles[v]
            xi = [p[0] for p in pts]
            if v in SAMPLER_VARIANTS:
                ax_std.plot(xi, [max(r["std_error"], _FLOOR) for _, r in pts], ls=ls, marker=mk,
                            color=colors[a], label=f"{v} {a:g}")
            ax_mean.plot(xi, [max(abs(r["mean"]), _FLOOR) for _, r in pts], ls=ls, marker=mk,
                         color=colors[a], label=f"{v} {a:g}")
    for ax, name in ((ax_std, "toy: |std - 1| (exact; 0 drawn at 1e-6)"),
                     (ax_mean, "toy: |mean| (exact; 0 drawn at 1e-6)")):
        ax.set_yscale("log")
        ax.set_xticks(range(len(xs)), xlabels)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    ax_std.legend(fontsize=7, ncol=2)


def _bnn_axis_panels(ax_nll: Any, ax_ece: Any, report: dict[str, Any], axis: str, xs: list[Any],
                     xlabels: list[str]) -> None:
    rows = [r for r in report["bnn"] if r["axis"] == axis]
    temps = list(dict.fromkeys(r["temperature"] for r in rows))
    colors = {"vc": "tab:green", "naive": "tab:red", "sgdlp-l": "tab:gray", "sgldlp-f": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    for ti, t in enumerate(temps):
        for m in dict.fromkeys(r["method"] for r in rows):
            if m in ("sgdlp-l", "sgdlp-f") and ti:
                continue  # temperature-independent: drawn once
            pts = [r for r in rows if r["method"] == m and r["temperature"] == t]
            off = 0.06 * (ti * 4 + list(colors).index(m) - 3) if m in colors else 0.0
            xi = [xs.index(r["value"]) + off for r in pts]
            lab = m if m in ("sgdlp-l", "sgdlp-f") else f"{m} T={t:g}"
            for ax, key in ((ax_nll, "nll"), (ax_ece, "ece")):
                ax.errorbar(xi, [r[key] for r in pts], yerr=[r[key + "_std"] for r in pts], ls=styles[ti % 4],
                            marker="o", ms=4, capsize=2, color=colors.get(m, "black"), label=lab)
    ds = report["settings"]["bnn_dataset"]
    for ax, name in ((ax_nll, f"BNN ({ds}): test NLL"), (ax_ece, f"BNN ({ds}): ECE")):
        ax.set_xticks(range(len(xs)), xlabels)
        ax.set_title(name + " (mean ± std over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
    ax_nll.legend(fontsize=7)


def plot_axis(report: dict[str, Any], axis: str, path: str | Path) -> None:
    """2 x 2 (toy only: 1 x 2) figure for the SR-bits or word-length axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["settings"]
    if axis == "sr_bits":
        xs: list[Any] = [sr_label(k) for k in s["sr_bits"]]
        labels = xs
        xlabel = "SR random bits per lane per update"
        bxs, blabels = xs, labels
    else:
        xs = list(s["widths"])
        labels = [f"Q({w},{w - 1 - s['toy_int_bits']})" for w in xs]
        xlabel = "word length W"
        bxs = list(s["bnn_widths"])
        blabels = [f"Q({w},{w - s['bnn_int_bits']})" for w in bxs]
    has_bnn = bool(report["bnn"])
    fig, axes = plt.subplots(2 if has_bnn else 1, 2, figsize=(11, 8 if has_bnn else 4), squeeze=False)
    _toy_axis_panels(axes[0][0], axes[0][1], report, axis, xs, labels)
    if has_bnn:
        _bnn_axis_panels(axes[1][0], axes[1][1], report, axis, bxs, blabels)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    fig.suptitle(f"design space: {xlabel}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_gaussians(report: dict[str, Any], path: str | Path) -> None:
    """Exact tails of each generator vs N(0,1); toy |std - 1| and BNN NLL per generator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["settings"]
    has_bnn = any(r["axis"] == "gaussian" for r in report["bnn"])
    fig, axes = plt.subplots(1, 3 if has_bnn else 2, figsize=(16 if has_bnn else 11, 4.5), squeeze=False)
    ax = axes[0][0]
    ts = np.linspace(0, 6, 241)
    ax.plot(ts, [math.erfc(t / math.sqrt(2)) for t in ts], color="black", lw=2.5, label="N(0,1)")
    for g in s["gaussians"]:
        ax.plot(ts, np.maximum(survival(parse_gaussian(g), ts), 1e-12), lw=1, label=gaussian_name(parse_gaussian(g)))
    ax.set_yscale("log")
    ax.set_ylim(1e-10, 2)
    ax.set_xlabel("t (sigma)")
    ax.set_title("exact P(|z| > t sigma)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    names = [gaussian_name(parse_gaussian(g)) for g in s["gaussians"]]
    _toy_axis_panels(axes[0][1], _Null(), report, "gaussian", names, names)
    axes[0][1].tick_params(axis="x", rotation=45)
    if has_bnn:
        bnames = list(s["bnn_gaussians"])
        _bnn_axis_panels(axes[0][2], _Null(), report, "gaussian", bnames, bnames)
        axes[0][2].tick_params(axis="x", rotation=45)
    fig.suptitle("design space: Gaussian generator (invalid configurations are not drawn)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


class _Null:
    """Stands in for an axes object whose panel a figure leaves out."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


# ---- outputs -----------------------------------------------------------------------------------------



def write_outputs(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """design_space.json, design_space.md and the PNGs in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "design_space.json",
        "md": out / "design_space.md",
        "sr_bits": out / "design_space_sr_bits.png",
        "width": out / "design_space_word_length.png",
        "gaussian": out / "design_space_gaussian.png",
    }
    atomic_write_json(paths["json"], json_safe(report))
    paths["md"].write_text(format_report(report))
    plot_axis(report, "sr_bits", paths["sr_bits"])
    plot_axis(report, "width", paths["width"])
    plot_gaussians(report, paths["gaussian"])
    return paths

