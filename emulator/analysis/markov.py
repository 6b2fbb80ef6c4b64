"""The Gaussian toy as a finite Markov chain: stationary distributions without sampling.

For the ``-L`` variants the state is one weight word (2^W states), so the chain's
transition matrix can be written down: the gradient word's distribution is the
stochastic rounding of ``theta + sigma_g * N(0, 1)`` (closed form with the normal
CDF), and the update's distribution comes from counting every random input of the
datapath, as in :mod:`emulator.analysis.exact` but vectorized over the Gaussian's support in
float64. The stationary distribution then gives the long-run mean and std that
the sampled runs estimate, with no Monte Carlo error.
"""

from __future__ import annotations

import math

import numpy as np

from ..spec.datapath import DatapathConfig, StepRegisters, Variant, exact_sum, sr_variance
from ..spec.formats import round_nearest, sr_split

_NORMAL_CDF = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)))


def grad_word_distribution(mean: float, std: float, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Words and probabilities of SR(X), X ~ N(mean, std^2) in LSB units, saturated to [lo, hi].

    E[hat(X - k)] = G(k-1) - 2 G(k) + G(k+1) with G(c) = E[(X - c)+] (closed form).
    """
    ks = np.arange(math.floor(mean - 10 * std) - 1, math.ceil(mean + 10 * std) + 2)

    def g(c: np.ndarray) -> np.ndarray:
        d = (mean - c) / std
        return (mean - c) * _NORMAL_CDF(d) + std * np.exp(-0.5 * d * d) / math.sqrt(2 * math.pi)

    p = g(ks - 1) - 2 * g(ks) + g(ks + 1)
    p = np.clip(p, 0.0, None)
    words = np.clip(ks, lo, hi)
    return words, p / p.sum()


def _noise(cfg: DatapathConfig, regs: StepRegisters) -> tuple[np.ndarray, np.ndarray]:
    if not regs.noise:
        return np.zeros(1, dtype=np.int64), np.ones(1)
    zmin, counts = cfg.gaussian.pmf()
    keep = counts > 0
    z = np.arange(zmin, zmin + len(counts), dtype=np.int64)[keep]
    sh = cfg.sum_frac - cfg.noise.frac - cfg.gaussian.frac
    return (regs.noise * z) << sh, counts[keep] / float(1 << cfg.gaussian.bits)


def update_probabilities(
    cfg: DatapathConfig, theta: int, grad: int, regs: StepRegisters, noise: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Output words and float64 probabilities of one update (saturation applied)."""
    mu = exact_sum(cfg, theta, grad, regs)
    s, k, pm = cfg.drop_bits, cfg.sr_k, cfg.vc_frac_bits
    n, pn = noise
    u_range = float(1 << cfg.vc_uniform_bits)
    if cfg.variant is Variant.VC and not regs.vc_noise:
        if s == 0:
            fl, fk, vs = mu, 0, 0
        else:
            fl, fk = sr_split(mu, s, k)
            vs = int(sr_variance(np.array([fk]), k, pm)[0])
        w = max(regs.vc_var - vs, 0) / u_range
        pu = fk / float(1 << k) if s else 0.0
        words = np.array([fl - 1, fl, fl + 1, fl, fl + 1, fl + 2])
        probs = np.array([w, 1 - 2 * w, w, w, 1 - 2 * w, w]) * np.repeat([1 - pu, pu], 3)
    elif cfg.variant is Variant.VC:
        x = mu + n
        ya = round_nearest(x, s - pm) + (1 << (pm - 1))
        q = ya >> pm
        low = (ya & ((1 << pm) - 1)).astype(np.float64)
        up = low * low / u_range
        down = (float(1 << pm) - low) ** 2 / u_range
        words = np.concatenate([q + 1, q - 1, q])
        probs = np.concatenate([pn * up, pn * down, pn * (1 - up - down)])
    else:
        x = mu + n
        fla, fka = sr_split(x, s, k)
        pua = fka / float(1 << k)
        words = np.concatenate([fla, fla + 1])
        probs = np.concatenate([pn * (1 - pua), pn * pua])
    st = cfg.state
    return np.clip(words, st.min_word, st.max_word), probs


def transition_matrix(cfg: DatapathConfig, regs: StepRegisters, grad_noise: float) -> np.ndarray:
    """P[i, j] = probability that weight word min_word + i moves to min_word + j in one toy step."""
    if cfg.variant.has_accumulator:
        raise ValueError(f"variant {cfg.variant.value!r} keeps an accumulator: its state space is too large")
    st, gf = cfg.state, cfg.grad
    n_states = st.max_word - st.min_word + 1
    p = np.zeros((n_states, n_states))
    noise = _noise(cfg, regs)
    for i, theta in enumerate(range(st.min_word, st.max_word + 1)):
        mean = theta * 2.0 ** (gf.frac - st.frac)  # gradient of theta^2/2 is theta, in grad LSBs
        gw, gp = grad_word_distribution(mean, grad_noise * 2.0**gf.frac, gf.min_word, gf.max_word)
        for g, pg in zip(gw.tolist(), gp.tolist(), strict=True):
            if pg < 1e-16:
                continue
            words, probs = update_probabilities(cfg, theta, g, regs, noise)
            np.add.at(p[i], words - st.min_word, pg * probs)
    return p / p.sum(axis=1, keepdims=True)


def stationary(p: np.ndarray) -> np.ndarray:
    """Stationary distribution of a row-stochastic matrix (left eigenvector for eigenvalue 1)."""
    n = p.shape[0]
    a = p.T - np.eye(n)
    a[-1] = 1.0
    b = np.zeros(n)
    b[-1] = 1.0
    pi = np.clip(np.linalg.solve(a, b), 0.0, None)
    return pi / pi.sum()
