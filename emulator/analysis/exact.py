"""Exact output distributions of one update, by enumerating every random input.

Two independent routes, tested equal to each other:

* :func:`update_distribution` counts, for each value of the Gaussian (its exact
  distribution), how many values of each uniform field give each output: the
  thresholds are integers, so the counts are exact;
* :func:`enumerate_update` runs the bit-exact kernel on every random word the
  update can draw (small configurations only).

Probabilities are :class:`fractions.Fraction`; :func:`moments` gives the exact
mean and variance in output LSBs.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from fractions import Fraction

import numpy as np

from ..spec.datapath import WORD_BITS, DatapathConfig, StepRegisters, Variant, exact_sum, sr_variance, update
from ..spec.formats import round_nearest, sr_split

Dist = dict[int, Fraction]


def sr_distribution(x: int, s: int, k: int) -> Dist:
    """Distribution of stochastic rounding of ``x`` dropping ``s`` bits with ``k`` random bits."""
    if s == 0:
        return {x: Fraction(1)}
    k = min(k, s)
    y = x >> (s - k)
    fl, fk = y >> k, y & ((1 << k) - 1)
    out: Dist = {fl: Fraction((1 << k) - fk, 1 << k)}
    if fk:
        out[fl + 1] = Fraction(fk, 1 << k)
    return out


def _noise_values(cfg: DatapathConfig, regs: StepRegisters) -> list[tuple[int, int]]:
    """(noise at sum_frac, count) pairs; counts sum to 2**gaussian.bits."""
    if not regs.noise:
        return [(0, 1 << cfg.gaussian.bits)]
    zmin, counts = cfg.gaussian.pmf()
    sh = cfg.sum_frac - cfg.noise.frac - cfg.gaussian.frac
    return [((regs.noise * (zmin + i)) << sh, int(c)) for i, c in enumerate(counts) if c]


def _add(out: defaultdict[int, Fraction], word: int, p: Fraction, cfg: DatapathConfig) -> None:
    fmt = cfg.state
    out[min(max(word, fmt.min_word), fmt.max_word)] += p


def update_distribution(cfg: DatapathConfig, theta: int, grad: int, regs: StepRegisters) -> Dist:
    """Exact distribution of the new state word for one element, by counting."""
    cfg.check_registers(regs)
    mu = exact_sum(cfg, theta, grad, regs)
    s, k, pm = cfg.drop_bits, cfg.sr_k, cfg.vc_frac_bits
    out: defaultdict[int, Fraction] = defaultdict(Fraction)
    v = cfg.variant
    if v in (Variant.SGD_F, Variant.SGD_L):
        for w, p in sr_distribution(mu, s, k).items():
            _add(out, w, p, cfg)
    elif v in (Variant.NAIVE, Variant.LP_F):
        total = 1 << cfg.gaussian.bits
        for n, c in _noise_values(cfg, regs):
            for w, p in sr_distribution(mu + n, s, k).items():
                _add(out, w, p * Fraction(c, total), cfg)
    elif regs.vc_noise:
        # Counted in the paper's form, q + sign(r) * Cat(|r|, v0); the kernel uses the equivalent
        # +1 w.p. l^2/2, -1 w.p. (1-l)^2/2 with l = r + 1/2, so the two routes check each other.
        total = 1 << cfg.gaussian.bits
        u_range = 1 << cfg.vc_uniform_bits
        half = 1 << (pm - 1)
        for n, c in _noise_values(cfg, regs):
            x = mu + n
            xp = round_nearest(x, s - pm)
            q = (xp + half) >> pm
            r = xp - (q << pm)
            m = abs(r)
            sign = -1 if r < 0 else 1
            tp, tm = (half + m) ** 2, (half - m) ** 2
            pz = Fraction(c, total)
            _add(out, q + sign, pz * Fraction(tp, u_range), cfg)
            _add(out, q - sign, pz * Fraction(tm, u_range), cfg)
            _add(out, q, pz * Fraction(u_range - tp - tm, u_range), cfg)
    else:
        u_range = 1 << cfg.vc_uniform_bits
        if s == 0:
            branches = [(mu, 0, Fraction(1))]
        else:
            fl, fk = sr_split(mu, s, k)
            vs = int(sr_variance(np.array([fk]), k, pm)[0])
            branches = [(fl, vs, Fraction((1 << k) - fk, 1 << k)), (fl + 1, vs, Fraction(fk, 1 << k))]
        for q, vs, pq in branches:
            if not pq:
                continue
            w = max(regs.vc_var - vs, 0)
            _add(out, q + 1, pq * Fraction(w, u_range), cfg)
            _add(out, q - 1, pq * Fraction(w, u_range), cfg)
            _add(out, q, pq * Fraction(u_range - 2 * w, u_range), cfg)
    return {w: p for w, p in sorted(out.items()) if p}


def used_fields(cfg: DatapathConfig, regs: StepRegisters) -> list[str]:
    """Random fields one update of ``cfg`` reads under ``regs``."""
    v = cfg.variant
    if v is Variant.VC:
        return ["vc", "gauss"] if regs.vc_noise else (["vc", "sr"] if cfg.sr_k else ["vc"])
    names = ["sr"] if cfg.sr_k else []
    if v.has_gaussian and regs.noise:
        names.append("gauss")
    return names


def enumerate_update(
    cfg: DatapathConfig, theta: int, grad: int, regs: StepRegisters, max_bits: int = 22
) -> Dist:
    """Exact distribution by running the kernel on every random input (brute force)."""
    cfg.check_registers(regs)
    names = used_fields(cfg, regs)
    fields = [cfg.fields[n] for n in names]
    bits = sum(f.width for f in fields)
    if bits > max_bits:
        raise ValueError(f"enumeration over {bits} random bits exceeds max_bits={max_bits}")
    n = 1 << bits
    words = np.zeros((n, cfg.rng_words), dtype=np.uint64)
    idx = np.arange(n, dtype=np.uint64)
    shift = 0
    for f in fields:
        val = (idx >> np.uint64(shift)) & np.uint64((1 << f.width) - 1)
        if f.width == WORD_BITS:
            raise ValueError("cannot enumerate a 64-bit field")
        words[:, f.word] |= val << np.uint64(f.offset)
        shift += f.width
    th = np.full(n, theta, dtype=np.int64)
    g = np.full(n, grad, dtype=np.int64)
    out = update(cfg, th, g, regs, words).state
    vals, counts = np.unique(out, return_counts=True)
    return {int(w): Fraction(int(c), n) for w, c in zip(vals, counts, strict=True)}


def moments(dist: Dist) -> tuple[Fraction, Fraction]:
    """Exact (mean, variance) of a distribution over integer words."""
    mean = sum((w * p for w, p in dist.items()), Fraction(0))
    var = sum(((w - mean) ** 2 * p for w, p in dist.items()), Fraction(0))
    return mean, var


def all_inputs(cfg: DatapathConfig) -> itertools.product[tuple[int, int]]:
    """Every (theta, grad) word pair of a (small) configuration."""
    st, g = cfg.state, cfg.grad
    return itertools.product(range(st.min_word, st.max_word + 1), range(g.min_word, g.max_word + 1))
