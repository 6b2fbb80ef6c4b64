"""An independent scalar model of the BFP datapath on Python ints (unbounded: no int64 tricks).

It follows the text of docs/spec.md ("Block floating point") line by line; the tests
check the vectorized numpy / torch kernel against it word for word.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from emulator.spec.bfp import BfpConfig, BfpFormat, BfpRegisters
from emulator.spec.datapath import Variant


def field(word_row: list[int], f) -> int:
    return (word_row[f.word] >> f.offset) & ((1 << f.width) - 1)


def gauss_z(cfg: BfpConfig, bits: int) -> int:
    g = cfg.gaussian
    t = [int(v) for v in g.table]
    m = (1 << g.index_bits) - 1
    return sum(t[(bits >> (j * g.index_bits)) & m] for j in range(g.terms))


def rn(x: int, s: int) -> int:
    return (x + (1 << (s - 1))) >> s if s > 0 else x << -s


def sr(x: int, s: int, k: int, u: int) -> int:
    return ((x >> (s - k)) + u) >> k if s >= k else ((x << (k - s)) + u) >> k


def sr_frac(x: int, s: int, k: int) -> int:
    """The k-bit SR fraction f_k (zero-extended when s < k)."""
    if s >= k:
        return (x >> (s - k)) & ((1 << k) - 1)
    if s > 0:
        return (x & ((1 << s) - 1)) << (k - s)
    return 0


def sr_var(fk: int, k: int, p: int) -> int:
    h = 2 * p
    fh = fk >> (k - h) if k >= h else fk << (h - k)
    return (fh * ((1 << h) - fh) + (1 << (h - 1))) >> h


def exponent(vals: list[int], lsb: int, fmt: BfpFormat, headroom: int = 0) -> int:
    amax = max((abs(v) for v in vals), default=0)
    if amax == 0:
        e = fmt.min_exp
    else:
        e = min(max(lsb + amax.bit_length() - 1, fmt.min_exp), fmt.max_exp)
    if headroom and e < fmt.max_exp and Fraction(amax) * Fraction(2) ** lsb > (fmt.max_mant - headroom) * Fraction(
        2
    ) ** (e + 2 - fmt.width):
        e += 1
    return e


def sat(m: int, fmt: BfpFormat) -> int:
    return min(max(m, -fmt.max_mant), fmt.max_mant)


def window(cfg: BfpConfig, te: int, ge: int) -> dict[str, int]:
    """LSB exponents of the terms and the window LSB L of a row."""
    st = cfg.state
    a = {"theta": te + 2 - st.width, "grad": ge + 2 - cfg.grad.width - cfg.step.frac}
    tops = [a["theta"] + st.width - 1, a["grad"] + cfg.step.width + cfg.grad.width - 1]
    if cfg.decay is not None:
        a["decay"] = a["theta"] - cfg.decay.frac
        tops.append(a["decay"] + cfg.decay.width + st.width - 1)
    if cfg.variant.has_gaussian:
        a["noise"] = -(cfg.noise.frac + cfg.gaussian.frac)
        tops.append(a["noise"] + (cfg.noise.max_word * cfg.gaussian.max_abs).bit_length())
    a["L"] = max(tops) + 2 - cfg.window_bits
    return a


def align(v: int, a: int, lsb: int) -> int:
    return v << (a - lsb) if a >= lsb else v >> (lsb - a)


def row_mu(cfg: BfpConfig, tm: list[int], te: int, gm: list[int], ge: int, regs: BfpRegisters):
    a = window(cfg, te, ge)
    lsb = a["L"]
    mu = []
    for t, g in zip(tm, gm, strict=True):
        m = align(t, a["theta"], lsb) + align(-(regs.step * g), a["grad"], lsb)
        if cfg.decay is not None:
            m += align(-(regs.decay * t), a["decay"], lsb)
        mu.append(m)
    return mu, a


def ref_row(cfg: BfpConfig, tm, te, gm, ge, regs: BfpRegisters, words) -> tuple[list[int], int]:
    """New state mantissas and exponent of one row; ``words[j]`` is element j's list of generator words."""
    st = cfg.state
    mu, a = row_mu(cfg, tm, te, gm, ge, regs)
    lsb = a["L"]
    f = cfg.fields
    k, p = cfg.sr_bits, cfg.vc_frac_bits
    v = cfg.variant
    if v is not Variant.VC:
        xs = list(mu)
        if v.has_gaussian:
            xs = [
                x + align(regs.noise * gauss_z(cfg, field(w, f["gauss"])), a["noise"], lsb)
                for x, w in zip(mu, words, strict=True)
            ]
        e = exponent(xs, lsb, st, cfg.headroom)
        s = e + 2 - st.width - lsb
        return [sat(sr(x, s, k, field(w, f["sr"])), st) for x, w in zip(xs, words, strict=True)], e
    e0 = exponent(mu, lsb, st, cfg.headroom)  # D0 from mu: branch and constants
    noise = regs.vc_noise[e0 - st.min_exp]
    var = regs.vc_var[e0 - st.min_exp]
    xs = list(mu)
    if noise:
        xs = [
            m + align(noise * gauss_z(cfg, field(w, f["gauss"])), a["noise"], lsb)
            for m, w in zip(mu, words, strict=True)
        ]
    e = max(e0, exponent(xs, lsb, st, cfg.headroom))  # the noisy row may overflow D0's range: coarser grid
    s = e + 2 - st.width - lsb
    out = []
    for m, x, w in zip(mu, xs, words, strict=True):
        u = field(w, f["vc"])
        if noise:
            y = rn(x, s - p) + (1 << (p - 1))
            q, low = y >> p, y & ((1 << p) - 1)
            up = low * low
            down = up + ((1 << p) - low) ** 2
            c = 1 if u < up else (-1 if u < down else 0)
        else:
            q = sr(m, s, k, field(w, f["sr"]))
            wv = max(var - sr_var(sr_frac(m, s, k), k, p), 0)
            c = 1 if u < wv else (-1 if u < 2 * wv else 0)
        out.append(sat(q + c, st))
    return out, e


def ref_round_row(mant: list[int], e: int, src: BfpFormat, dst: BfpFormat, headroom: int = 0) -> tuple[list[int], int]:
    a = e + 2 - src.width
    ew = exponent(mant, a, dst, headroom)
    s = ew + 2 - dst.width - a
    return [sat(rn(m, s), dst) for m in mant], ew


def ref_update(cfg: BfpConfig, theta, grad, regs, words: np.ndarray):
    """(state mant, state exp, weight mant, weight exp) as numpy int64 arrays, from the scalar model."""
    shape = theta.mant.shape
    rows = theta.exp.shape[0]
    tm = np.asarray(theta.mant).reshape(rows, -1) if rows else np.zeros((0, 0), np.int64)
    gm = np.asarray(grad.mant).reshape(rows, -1) if rows else np.zeros((0, 0), np.int64)
    cols = tm.shape[1]
    w = np.asarray(words).view(np.uint64)
    sm, se, wm, we = [], [], [], []
    for r in range(rows):
        ws = [[int(x) for x in w[r * cols + j]] for j in range(cols)]
        tr, gr = [int(x) for x in tm[r]], [int(x) for x in gm[r]]
        m, e = ref_row(cfg, tr, int(theta.exp[r]), gr, int(grad.exp[r]), regs, ws)
        sm.append(m)
        se.append(e)
        if cfg.variant.has_accumulator:
            m2, e2 = ref_round_row(m, e, cfg.state, cfg.weight, cfg.headroom)
        else:
            m2, e2 = m, e
        wm.append(m2)
        we.append(e2)
    a = lambda x: np.array(x, dtype=np.int64)  # noqa: E731
    return a(sm).reshape(shape), a(se), a(wm).reshape(shape), a(we)


def value(m: int, e: int, fmt: BfpFormat) -> Fraction:
    return Fraction(m) * Fraction(2) ** (e + 2 - fmt.width)
