"""Compiled CPU lane kernels (numba): the fixed-point and BFP datapaths, one loop per lane.

Contract (shared with the Triton module ``emulator.engines.gpu_kernels``; docs/torch.md, "Compiled CPU
kernels"): every function
computes exactly what the readable reference path computes (:func:`emulator.spec.datapath.update`
with :func:`emulator.engines.numpy_engine.stream_words`, :func:`emulator.spec.bfp.update`), word
for word, and advances every lane's generator exactly as far. Inputs are validated by the engine
that calls them; ``s0``/``s1`` (shape ``(lanes, rng_words)``, uint64 bits in int64 or uint64
arrays) are advanced in place. CPU torch tensors are passed as zero-copy numpy views.

Structure: element ``i`` is lane ``i mod L`` at cycle ``i div L``. A task is one lane and one
chunk of its cycles; the chunk's start state is the lane state jumped ahead by the chunk's first
cycle (GF(2) jump polynomials, cached per (generator, chunk length, chunk count), i.e. per
tensor size). With many lanes there is one chunk and no jump at all. Tasks run in parallel
(``prange``); inside a task the generator step, the field extraction, the Gaussian look-ups, the
exact sum, SR / VC and saturation run per element with no Python and no stored random words.

The BFP datapath needs each row's maximum before it can round, and a row's elements belong to
different lanes: its kernel streams the words of the whole tensor first (the same lane tasks),
then runs row-parallel.

All constants come from the configuration objects (field layout, formats, ``GaussianSpec.table``,
the generator's constants); none is typed here. Compiled once per argument types and cached on
disk (``cache=True``; docs/torch.md gives the first-call cost).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from ..spec import gf2
from ..spec.bfp import BfpConfig, BfpRegisters, BfpTensor
from ..spec.datapath import DatapathConfig, Field, StepRegisters, Variant
from ..spec.gaussian import GaussianSpec
from ..spec.rng import XoroshiroSpec

_U64 = np.uint64
_TASKS_PER_THREAD = 8  # tasks per thread to aim for when lanes are few (load balance vs jumps)
_LANE_BLOCK = 256  # lanes per task: runs of adjacent elements, states in L1
_SERIAL_BELOW = 1 << 15  # smaller calls run on one thread: waking the pool costs more (ms on a loaded machine)


def _launch(kernel: Any, n: int, *args: Any) -> None:
    """Call a parallel kernel, on the calling thread alone when the work is small."""
    if n >= _SERIAL_BELOW or numba.get_num_threads() == 1:
        kernel(*args)
        return
    prev = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        kernel(*args)
    finally:
        numba.set_num_threads(prev)

# ---- generator, fields -------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _rotl(x: Any, r: Any) -> Any:
    return (x << r) | (x >> (_U64(64) - r))


@njit(cache=True, inline="always")
def _out(s0: Any, s1: Any, aox: Any) -> Any:
    sx = s0 ^ s1
    if not aox:
        return sx
    sa = s0 & s1
    return sx ^ (_rotl(sa, _U64(1)) | _rotl(sa, _U64(2)))


@njit(cache=True, inline="always")
def _step(s0: Any, s1: Any, ga: Any, gb: Any, gc: Any) -> Any:
    sx = s0 ^ s1
    return _rotl(s0, ga) ^ sx ^ (sx << gb), _rotl(sx, gc)


@njit(cache=True, inline="always")
def _mask(width: Any) -> Any:
    if width >= 64:
        return _U64(0xFFFFFFFFFFFFFFFF)
    return (_U64(1) << _U64(width)) - _U64(1)


@njit(cache=True, inline="always")
def _field(w: Any, off: Any, mask: Any) -> Any:
    return np.int64((w >> _U64(off)) & mask)


@njit(cache=True, inline="always")
def _gauss(bits: Any, terms: Any, ib: Any, imask: Any, tab: Any) -> Any:
    z = np.int64(0)
    for j in range(terms):
        z += tab[np.int64((bits >> _U64(j * ib)) & imask)]
    return z


@njit(cache=True)
def _jump(a0: Any, a1: Any, bits: Any, j: Any, ga: Any, gb: Any, gc: Any) -> Any:
    """State (a0, a1) advanced by the jump polynomial ``bits[j]`` (row 0 is the identity)."""
    if j == 0:
        return a0, a1
    r0 = _U64(0)
    r1 = _U64(0)
    for b in range(bits.shape[1]):
        if bits[j, b]:
            r0 ^= a0
            r1 ^= a1
        a0, a1 = _step(a0, a1, ga, gb, gc)
    return r0, r1


@functools.lru_cache(maxsize=32)
def gen_params(spec: XoroshiroSpec) -> np.ndarray:
    """The generator's constants (a, b, c, aox) as uint64, for the kernels."""
    return np.array([spec.a, spec.b, spec.c, 1 if spec.scrambler == "aox" else 0], dtype=np.uint64)


@functools.lru_cache(maxsize=256)
def _jump_bits(spec: XoroshiroSpec, per: int, chunks: int) -> np.ndarray:
    """Bits of x^(j * per) mod charpoly for j < chunks, shape (chunks, degree): chunk j's start jump."""
    p = spec.charpoly
    deg = p.bit_length() - 1
    step = gf2.x_pow_mod(per, p)
    out = np.zeros((chunks, deg), dtype=np.uint8)
    poly = 1
    for j in range(chunks):
        out[j] = [(poly >> b) & 1 for b in range(deg)]
        poly = gf2.mulmod(poly, step, p)
    out.setflags(write=False)
    return out


def lane_plan(spec: XoroshiroSpec, lanes: int, n: int) -> tuple[int, int, np.ndarray]:
    """(lanes per block, cycles per chunk, jump bits of each chunk's start) for ``n`` elements.

    A task is a block of adjacent lanes over a chunk of cycles: it walks its cycles and, inside
    each, its lanes, so it reads and writes runs of adjacent elements.
    """
    cycles = -(-n // lanes) if n else 0
    active = max(1, min(lanes, n))  # lanes past the last element take no part (and do not move)
    block = min(active, _LANE_BLOCK)
    nblocks = -(-active // block)
    target = _TASKS_PER_THREAD * numba.get_num_threads()
    chunks = max(1, min(cycles, -(-target // nblocks)))
    per = max(1, -(-cycles // chunks))
    chunks = max(1, -(-cycles // per)) if cycles else 1
    return block, per, _jump_bits(spec, per, chunks)


def _states(s: Any) -> np.ndarray:
    a = np.asarray(s)
    if a.dtype == np.int64:
        return a.view(np.uint64)
    if a.dtype != np.uint64:
        raise TypeError(f"lane states must be int64 or uint64 bits, got {a.dtype}")
    return a


@njit(cache=True, inline="always")
def _task(t: Any, lanes: Any, block: Any, nblocks: Any, per: Any, cycles: Any) -> Any:
    """Task t: (chunk j, first lane, lanes in the block, first cycle, end cycle)."""
    j = t // nblocks
    l0 = (t - j * nblocks) * block
    nl = min(block, lanes - l0)
    c0 = j * per
    return j, l0, nl, c0, min(c0 + per, cycles)


@njit(cache=True, inline="always")
def _lane_cycles(lane: Any, lanes: Any, n: Any) -> Any:
    return (n - lane + lanes - 1) // lanes if lane < n else 0


@njit(cache=True, inline="always")
def _writes_end(j: Any, per: Any, cnt: Any) -> Any:
    return (j * per < cnt <= (j + 1) * per) or (cnt == 0 and j == 0)


@njit(cache=True, inline="always")
def _load(s0: Any, s1: Any, l0: Any, nl: Any, bits: Any, j: Any, gp: Any) -> Any:
    """The block's lane states jumped to chunk j: local (nl, words) arrays."""
    nw = s0.shape[1]
    a0 = np.empty((nl, nw), dtype=np.uint64)
    a1 = np.empty((nl, nw), dtype=np.uint64)
    for q in range(nl):
        for k in range(nw):
            a0[q, k], a1[q, k] = _jump(s0[l0 + q, k], s1[l0 + q, k], bits, j, gp[0], gp[1], gp[2])
    return a0, a1


@njit(cache=True, inline="always")
def _store(a0: Any, a1: Any, e0: Any, e1: Any, l0: Any, nl: Any, lanes: Any, n: Any, j: Any, per: Any) -> None:
    """Write back the end states of the block's lanes whose last cycle lies in chunk j."""
    for q in range(nl):
        if _writes_end(j, per, _lane_cycles(l0 + q, lanes, n)):
            for k in range(a0.shape[1]):
                e0[l0 + q, k] = a0[q, k]
                e1[l0 + q, k] = a1[q, k]


# ---- words (BFP, gradient streams) -------------------------------------------------------------


@njit(parallel=True, cache=True)
def _words_kernel(s0: Any, s1: Any, block: Any, bits: Any, per: Any, n: Any, gp: Any, out: Any) -> None:
    lanes, nw = s0.shape
    aox = gp[3]
    cycles = (n + lanes - 1) // lanes
    active = min(lanes, n)
    nblocks = (active + block - 1) // block
    inplace = bits.shape[0] == 1  # one chunk: each lane's state is read and written by its own task only
    e0 = np.empty((0 if inplace else active, nw), dtype=np.uint64)
    e1 = np.empty((0 if inplace else active, nw), dtype=np.uint64)
    for t in prange(bits.shape[0] * nblocks):
        j, l0, nl, c0, c1 = _task(t, active, block, nblocks, per, cycles)
        a0, a1 = _load(s0, s1, l0, nl, bits, j, gp)
        for c in range(c0, c1):
            base = c * lanes + l0
            for q in range(min(nl, n - base)):
                for k in range(nw):
                    out[base + q, k] = _out(a0[q, k], a1[q, k], aox)
                    a0[q, k], a1[q, k] = _step(a0[q, k], a1[q, k], gp[0], gp[1], gp[2])
        if inplace:
            _store(a0, a1, s0, s1, l0, nl, lanes, n, j, per)
        else:
            _store(a0, a1, e0, e1, l0, nl, lanes, n, j, per)
    if not inplace:
        s0[:active] = e0
        s1[:active] = e1


def stream_words(spec: XoroshiroSpec, s0: Any, s1: Any, n: int) -> np.ndarray:
    """Words of elements 0..n-1, shape (n, words) uint64; advances ``s0``/``s1`` in place.

    Equal to :func:`emulator.engines.numpy_engine.stream_words`.
    """
    a0, a1 = _states(s0), _states(s1)
    out = np.empty((n, a0.shape[1]), dtype=np.uint64)
    if n:
        block, per, bits = lane_plan(spec, a0.shape[0], n)
        _launch(_words_kernel, n, a0, a1, block, bits, per, n, gen_params(spec), out)
    return out


# ---- the fixed-point datapath ------------------------------------------------------------------

# indices into the kernel's int64 parameter vector (built by fixed_params from the cfg)
(P_SH_T, P_SH_G, P_STEP, P_DECAY, P_SH_D, P_NOISE, P_SH_N, P_VC, P_GAUSS, P_S, P_K, P_VCA, P_VCVAR, P_PM,
 P_ST_MIN, P_ST_MAX, P_ACC, P_ACC_SH, P_W_MIN, P_W_MAX, P_SR_W, P_SR_OFF, P_SR_WID, P_G_W, P_G_OFF, P_VC_W,
 P_VC_OFF, P_VC_WID, P_TERMS, P_IB, P_Q_MODE, P_Q_LO, P_Q_HI, P_Q_MASK, P_WB, P_LEN) = range(36)
# P_Q_MODE: gradient words given (0), float gradient rounded to nearest (1) or stochastically (2)
# with the gradient stream's low P_Q_MASK bits; P_WB: write the weight's float value back (1)
Q_WORDS, Q_NEAREST, Q_STOCHASTIC = 0, 1, 2


def _fld(fields: dict[str, Field], name: str) -> tuple[int, int, int]:
    f = fields.get(name)
    return (f.word, f.offset, f.width) if f is not None else (0, 0, 0)


def fixed_params(cfg: DatapathConfig, regs: StepRegisters) -> np.ndarray:
    """The datapath's constants and this step's registers as the kernel's int64 vector."""
    x = cfg.sum_frac
    st = cfg.state
    v = cfg.variant
    p = np.zeros(P_LEN, dtype=np.int64)
    p[P_SH_T] = x - st.frac
    p[P_SH_G] = x - cfg.step.frac - cfg.grad.frac
    p[P_STEP] = regs.step
    if regs.decay and cfg.decay is not None:
        p[P_DECAY] = regs.decay
        p[P_SH_D] = x - cfg.decay.frac - st.frac
    if v.has_gaussian:
        p[P_NOISE] = regs.noise
        p[P_SH_N] = x - cfg.noise.frac - cfg.gaussian.frac
    p[P_VC] = v is Variant.VC
    p[P_GAUSS] = v.has_gaussian
    p[P_S] = cfg.drop_bits
    p[P_K] = cfg.sr_k
    p[P_VCA] = regs.vc_noise
    p[P_VCVAR] = regs.vc_var
    p[P_PM] = cfg.vc_frac_bits
    p[P_ST_MIN], p[P_ST_MAX] = st.min_word, st.max_word
    p[P_ACC] = v.has_accumulator
    p[P_ACC_SH] = st.frac - cfg.weight.frac
    p[P_W_MIN], p[P_W_MAX] = cfg.weight.min_word, cfg.weight.max_word
    f = cfg.fields
    p[P_SR_W], p[P_SR_OFF], p[P_SR_WID] = _fld(f, "sr")
    p[P_G_W], p[P_G_OFF], _ = _fld(f, "gauss")
    p[P_VC_W], p[P_VC_OFF], p[P_VC_WID] = _fld(f, "vc")
    p[P_TERMS], p[P_IB] = cfg.gaussian.terms, cfg.gaussian.index_bits
    return p


@njit(cache=True, inline="always")
def _pick(w0: Any, w1: Any, k: Any) -> Any:
    return w0 if k == 0 else w1


@njit(cache=True, inline="always")
def _fixed_elem(th: Any, g: Any, w0: Any, w1: Any, p: Any, tab: Any) -> Any:
    """One element of emulator.spec.datapath.update: (state word, weight word)."""
    mu = (th << p[P_SH_T]) - ((p[P_STEP] * g) << p[P_SH_G])
    if p[P_DECAY]:
        mu -= (p[P_DECAY] * th) << p[P_SH_D]
    s = p[P_S]
    noise = np.int64(0)
    if p[P_NOISE] and (p[P_GAUSS] and (not p[P_VC] or p[P_VCA])):
        bits = _pick(w0, w1, p[P_G_W]) >> _U64(p[P_G_OFF])
        z = _gauss(bits, p[P_TERMS], p[P_IB], _mask(p[P_IB]), tab)
        noise = (p[P_NOISE] * z) << p[P_SH_N]
    if not p[P_VC]:
        x = mu + noise
        if s:
            u = _field(_pick(w0, w1, p[P_SR_W]), p[P_SR_OFF], _mask(p[P_SR_WID]))
            k = p[P_K]
            x = ((x >> (s - k)) + u) >> k
        out = x
    else:
        pm = p[P_PM]
        u = _field(_pick(w0, w1, p[P_VC_W]), p[P_VC_OFF], _mask(p[P_VC_WID]))
        if p[P_VCA]:
            x = mu + noise
            r = s - pm
            y = ((x + (np.int64(1) << (r - 1))) >> r) if r > 0 else (x << -r)
            y += np.int64(1) << (pm - 1)
            low = y & ((np.int64(1) << pm) - 1)
            up = low * low
            high = (np.int64(1) << pm) - low
            down = up + high * high
            out = (y >> pm) + (1 if u < up else 0) - (1 if (u >= up and u < down) else 0)
        else:
            k = p[P_K]
            if s == 0:
                q = mu
                vs = np.int64(0)
            else:
                yy = mu >> (s - k)
                fl = yy >> k
                fk = yy & ((np.int64(1) << k) - 1)
                ur = _field(_pick(w0, w1, p[P_SR_W]), p[P_SR_OFF], _mask(p[P_SR_WID]))
                q = fl + ((fk + ur) >> k)
                h = 2 * pm
                fh = (fk >> (k - h)) if k >= h else (fk << (h - k))
                vs = (fh * ((np.int64(1) << h) - fh) + (np.int64(1) << (h - 1))) >> h
            w = p[P_VCVAR] - vs
            if w < 0:
                w = np.int64(0)
            out = q + (1 if u < w else 0) - (1 if (u >= w and u < 2 * w) else 0)
    out = min(max(out, p[P_ST_MIN]), p[P_ST_MAX])
    wt = out
    if p[P_ACC]:
        r = p[P_ACC_SH]
        if r > 0:
            wt = (out + (np.int64(1) << (r - 1))) >> r
        wt = min(max(wt, p[P_W_MIN]), p[P_W_MAX])
    return out, wt


@njit(cache=True, inline="always")
def _quantize(x: Any, fq: Any, p: Any, u: Any) -> Any:
    """emulator.engines.torch_engine._quantize_words of one float (NaN excluded by the caller)."""
    xd = np.float64(x)
    t = xd * fq[0]  # exact power-of-two scaling, unless it underflows
    if xd != 0.0 and abs(xd) < fq[5]:
        t = 2.0**-64 if xd > 0.0 else -(2.0**-64)  # as FixedFormat.quantize: only the sign of |x 2^F| < 2^-64 counts
    t = min(max(t, fq[1] - 1.0), fq[2] + 1.0)
    fl = np.floor(t)
    if p[P_Q_MODE] == Q_NEAREST:
        q = fl + (1.0 if t - fl >= 0.5 else 0.0)
    else:
        fk = np.floor(t * fq[3]) - fl * fq[3]  # floor(t 2^k) mod 2^k, exact
        q = fl + (1.0 if np.float64(u) < fk else 0.0)
    return min(max(np.int64(q), p[P_Q_LO]), p[P_Q_HI])


@njit(parallel=True, cache=True)
def _fixed_kernel(s0: Any, s1: Any, g0: Any, g1: Any, block: Any, bits: Any, per: Any, n: Any, gp: Any, p: Any,
                  fq: Any, tab: Any, theta: Any, grad: Any, state_out: Any, weight_out: Any, has_weight: Any,
                  p_out: Any, sat: Any) -> None:
    """The fixed datapath over lane blocks x chunks; ``state_out`` may be ``theta`` (in place). ``sat[t]``:
    task ``t``'s count of state words at the format's limits (the optimizer's saturation telemetry)."""
    lanes, nw = s0.shape
    aox = gp[3]
    cycles = (n + lanes - 1) // lanes
    active = min(lanes, n)
    nblocks = (active + block - 1) // block
    inplace = bits.shape[0] == 1  # one chunk: each lane's state is read and written by its own task only
    mode = p[P_Q_MODE]
    e0 = np.empty((0 if inplace else active, nw), dtype=np.uint64)
    e1 = np.empty((0 if inplace else active, nw), dtype=np.uint64)
    f0 = np.empty((0 if inplace or mode != Q_STOCHASTIC else active, 1), dtype=np.uint64)
    f1 = np.empty((0 if inplace or mode != Q_STOCHASTIC else active, 1), dtype=np.uint64)
    umask = _mask(p[P_Q_MASK])
    for t in prange(bits.shape[0] * nblocks):
        j, l0, nl, c0, c1 = _task(t, active, block, nblocks, per, cycles)
        a0, a1 = _load(s0, s1, l0, nl, bits, j, gp)
        if mode == Q_STOCHASTIC:
            b0, b1 = _load(g0, g1, l0, nl, bits, j, gp)
        else:
            b0, b1 = a0, a1
        nsat = 0
        for c in range(c0, c1):
            base = c * lanes + l0
            for q in range(min(nl, n - base)):
                i = base + q
                w0 = _out(a0[q, 0], a1[q, 0], aox)
                a0[q, 0], a1[q, 0] = _step(a0[q, 0], a1[q, 0], gp[0], gp[1], gp[2])
                w1 = w0
                if nw > 1:
                    w1 = _out(a0[q, 1], a1[q, 1], aox)
                    a0[q, 1], a1[q, 1] = _step(a0[q, 1], a1[q, 1], gp[0], gp[1], gp[2])
                    for k in range(2, nw):  # generators no field reads still advance
                        a0[q, k], a1[q, k] = _step(a0[q, k], a1[q, k], gp[0], gp[1], gp[2])
                if mode == Q_WORDS:
                    gw = np.int64(grad[i])
                elif mode == Q_NEAREST:
                    gw = _quantize(grad[i], fq, p, np.int64(0))
                else:
                    u = np.int64(_out(b0[q, 0], b1[q, 0], aox) & umask)
                    b0[q, 0], b1[q, 0] = _step(b0[q, 0], b1[q, 0], gp[0], gp[1], gp[2])
                    gw = _quantize(grad[i], fq, p, u)
                st, wt = _fixed_elem(np.int64(theta[i]), gw, w0, w1, p, tab)
                state_out[i] = st
                if st == p[P_ST_MIN] or st == p[P_ST_MAX]:
                    nsat += 1
                if has_weight:
                    weight_out[i] = wt
                if p[P_WB]:
                    p_out[i] = np.float64(wt) * fq[4]  # exact in float64; one rounding to p's dtype
        sat[t] = nsat
        if inplace:
            _store(a0, a1, s0, s1, l0, nl, lanes, n, j, per)
            if mode == Q_STOCHASTIC:
                _store(b0, b1, g0, g1, l0, nl, lanes, n, j, per)
        else:
            _store(a0, a1, e0, e1, l0, nl, lanes, n, j, per)
            if mode == Q_STOCHASTIC:
                _store(b0, b1, f0, f1, l0, nl, lanes, n, j, per)
    if not inplace:
        s0[:active] = e0
        s1[:active] = e1
        if mode == Q_STOCHASTIC:
            g0[:active] = f0
            g1[:active] = f1


def gauss_table(cfg: DatapathConfig | BfpConfig) -> np.ndarray:
    return _gauss_table(cfg.gaussian)


@functools.lru_cache(maxsize=64)
def _gauss_table(spec: GaussianSpec) -> np.ndarray:
    return np.ascontiguousarray(spec.table, dtype=np.int64)


_NO_STATES = np.ones((1, 1), dtype=np.uint64)
_NO_FLOATS = np.zeros(1, dtype=np.float32)


def _prepare_fixed(cfg: DatapathConfig, regs: StepRegisters, rounding: str | None, sr_bits: int,
                   write_back: bool) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's int64 parameter vector and float constants of one step (shared by a group's tensors)."""
    prm = fixed_params(cfg, regs)
    fq = np.array([2.0**cfg.grad.frac, cfg.grad.min_word, cfg.grad.max_word, 2.0**sr_bits, cfg.weight.lsb,
                   2.0 ** (-64 - cfg.grad.frac)])
    if rounding is not None:
        prm[P_Q_MODE] = Q_STOCHASTIC if rounding == "stochastic" else Q_NEAREST
        prm[P_Q_LO], prm[P_Q_HI], prm[P_Q_MASK] = cfg.grad.min_word, cfg.grad.max_word, sr_bits
    prm[P_WB] = write_back
    return prm, fq


def _run_fixed(cfg: DatapathConfig, prepared: tuple[np.ndarray, np.ndarray], s0: Any, s1: Any, theta: Any, grad: Any,
               state_out: Any, weight_out: Any, *, g0: Any = None, g1: Any = None, p_out: Any = None) -> int:
    """Runs the fixed kernel; returns the number of state words at the state format's limits."""
    prm, fq = prepared
    a0, a1 = _states(s0), _states(s1)
    th, g = np.asarray(theta).reshape(-1), np.asarray(grad).reshape(-1)
    so = np.asarray(state_out).reshape(-1)
    has_weight = cfg.variant.has_accumulator and weight_out is not None
    wo = np.asarray(weight_out).reshape(-1) if has_weight else so
    n = th.size
    if n == 0:
        return 0
    b0, b1 = (_states(g0), _states(g1)) if prm[P_Q_MODE] == Q_STOCHASTIC else (_NO_STATES, _NO_STATES)
    po = np.asarray(p_out).reshape(-1) if p_out is not None else _NO_FLOATS
    block, per, bits = lane_plan(cfg.rng, a0.shape[0], n)
    sat = np.zeros(bits.shape[0] * -(-min(a0.shape[0], n) // block), dtype=np.int64)
    _launch(_fixed_kernel, n, a0, a1, b0, b1, block, bits, per, n, gen_params(cfg.rng), prm, fq, gauss_table(cfg), th,
            g, so, wo, has_weight, po, sat)
    return int(sat.sum())


def fixed_update(cfg: DatapathConfig, regs: StepRegisters, s0: Any, s1: Any, theta: Any, grad: Any,
                 state_out: Any, weight_out: Any) -> None:
    """The fixed-point datapath of flat ``theta``/``grad`` words into ``state_out``/``weight_out``.

    Equal to ``NumpyEngine.step``; ``weight_out`` may be ``state_out`` (or None) for -L variants.
    Word arrays may have any integer dtype that holds their format; ``state_out`` may be ``theta``.
    """
    _run_fixed(cfg, _prepare_fixed(cfg, regs, None, 32, False), s0, s1, theta, grad, state_out, weight_out)


def fixed_quantize_update(cfg: DatapathConfig, regs: StepRegisters, s0: Any, s1: Any, g0: Any, g1: Any,
                          theta: Any, grad: Any, state_out: Any, weight_out: Any, *, rounding: str, sr_bits: int,
                          p_out: Any = None) -> None:
    """``TorchEngine.step_quantize`` of one tensor: float ``grad`` -> words (SR uniforms: the low ``sr_bits``
    bits of the gradient stream ``g0``/``g1``, one word per element, advanced in place; none drawn for
    ``rounding='nearest'``), the update, and (``p_out``) the emitted weight's float value written back.
    NaN gradients must be rejected by the caller."""
    prepared = _prepare_fixed(cfg, regs, rounding, sr_bits, p_out is not None)
    _run_fixed(cfg, prepared, s0, s1, theta, grad, state_out, weight_out, g0=g0, g1=g1, p_out=p_out)


def fixed_group_step(cfg: DatapathConfig, regs: StepRegisters, s0: Any, s1: Any, g0: Any, g1: Any,
                     params: list[Any], grads: list[Any], words: list[Any], *, rounding: str, sr_bits: int) -> int:
    """One optimizer step of a fixed-point group (``emulator.optim.optimizer.sgld_lp``), in place.

    Per tensor in list order, each from lane 0: gradient SR from the gradient stream, the update,
    ``words[i]`` (state words, any integer dtype holding the format) rewritten, ``params[i]`` (float
    numpy views) set to the emitted weight's value. One compiled call per tensor. Returns the number of
    state words at the state format's limits after the step (the optimizer's saturation telemetry).
    """
    prepared = _prepare_fixed(cfg, regs, rounding, sr_bits, True)
    saturated = 0
    for p, g, w in zip(params, grads, words, strict=True):  # the weight words only go to p
        saturated += _run_fixed(cfg, prepared, s0, s1, w, g, w, None, g0=g0, g1=g1, p_out=p)
    return saturated


# ---- the BFP datapath --------------------------------------------------------------------------

(B_ST_W, B_ST_MIN_E, B_ST_MAX_E, B_ST_MAXM, B_G_W, B_STEP_FRAC, B_BT, B_BG, B_HAS_D, B_D_FRAC, B_BD, B_HAS_N,
 B_AN, B_BN, B_WIN, B_STEP, B_DECAY, B_NOISE, B_VC, B_GAUSS, B_K, B_PM, B_HEAD, B_ACC, B_W_W, B_W_MIN_E,
 B_W_MAX_E, B_W_MAXM, B_SR_W, B_SR_OFF, B_SR_WID, B_G_WORD, B_G_OFF, B_G_WID, B_VC_W, B_VC_OFF, B_VC_WID,
 B_TERMS, B_IB, B_LEN) = range(40)


def bfp_params(cfg: BfpConfig, regs: BfpRegisters) -> np.ndarray:
    st = cfg.state
    bits = cfg.term_bits
    p = np.zeros(B_LEN, dtype=np.int64)
    p[B_ST_W], p[B_ST_MIN_E], p[B_ST_MAX_E], p[B_ST_MAXM] = st.width, st.min_exp, st.max_exp, st.max_mant
    p[B_G_W], p[B_STEP_FRAC] = cfg.grad.width, cfg.step.frac
    p[B_BT], p[B_BG] = bits["theta"], bits["grad"]
    if cfg.decay is not None:
        p[B_HAS_D], p[B_D_FRAC], p[B_BD] = 1, cfg.decay.frac, bits["decay"]
    if "noise" in bits:
        p[B_HAS_N], p[B_BN] = 1, bits["noise"]
    p[B_AN] = cfg.noise_lsb_exp
    p[B_WIN] = cfg.window_bits
    p[B_STEP], p[B_DECAY], p[B_NOISE] = regs.step, regs.decay, regs.noise
    p[B_VC] = cfg.variant is Variant.VC
    p[B_GAUSS] = cfg.variant.has_gaussian
    p[B_K], p[B_PM], p[B_HEAD] = cfg.sr_bits, cfg.vc_frac_bits, cfg.headroom
    p[B_ACC] = cfg.variant.has_accumulator
    wf = cfg.weight
    p[B_W_W], p[B_W_MIN_E], p[B_W_MAX_E], p[B_W_MAXM] = wf.width, wf.min_exp, wf.max_exp, wf.max_mant
    f = cfg.fields
    p[B_SR_W], p[B_SR_OFF], p[B_SR_WID] = _fld(f, "sr")
    p[B_G_WORD], p[B_G_OFF], p[B_G_WID] = _fld(f, "gauss")
    p[B_VC_W], p[B_VC_OFF], p[B_VC_WID] = _fld(f, "vc")
    p[B_TERMS], p[B_IB] = cfg.gaussian.terms, cfg.gaussian.index_bits
    return p


@njit(cache=True, inline="always")
def _shift(v: Any, d: Any) -> Any:
    if d >= 0:
        return v << min(d, 62)
    return v >> min(-d, 63)


@njit(cache=True, inline="always")
def _bit_length(x: Any) -> Any:
    n = np.int64(0)
    while x > 0:
        x >>= 1
        n += 1
    return n


@njit(cache=True, inline="always")
def _row_exp(amax: Any, lsb: Any, width: Any, min_e: Any, max_e: Any, maxm: Any, head: Any) -> Any:
    """emulator.spec.bfp.row_exponent of one row from its maximum magnitude."""
    e = lsb + _bit_length(amax) - 1 if amax > 0 else min_e
    e = min(max(e, min_e), max_e)
    if head:
        lim = maxm - head
        s = e + 2 - width - lsb
        if s >= 0:
            over = ((amax - 1) >> min(s, 63)) >= lim
        else:
            over = (min(max(amax, 0), np.int64(1) << width) << min(-s, width + 1)) > lim
        if over and e < max_e:
            e += 1
    return e


@njit(cache=True, inline="always")
def _split(x: Any, s: Any, fb: Any, width: Any) -> Any:
    """emulator.spec.bfp.split of one element: (I, f)."""
    big = np.int64(1) << (width + 1)
    if s >= 0:
        i = x >> min(s, 63)
    else:
        i = min(max(x, -big), big) << min(-s, width + 1)
    half = np.int64(1) << (width - 1)
    i = min(max(i, -(half + 2)), half + 1)
    mask = (np.int64(1) << fb) - 1
    if s >= fb:
        f = (x >> min(s - fb, 63)) & mask
    elif s > 0:
        f = (x & ((np.int64(1) << s) - 1)) << (fb - s)
    else:
        f = np.int64(0)
    return i, f


@njit(cache=True, inline="always")
def _wfield(words: Any, i: Any, k: Any, off: Any, width: Any) -> Any:
    return np.int64((words[i, k] >> _U64(off)) & _mask(width))


@njit(parallel=True, cache=True)
def _bfp_rows_kernel(tm: Any, te: Any, gm: Any, ge: Any, words: Any, p: Any, tab: Any, vc_noise: Any, vc_var: Any,
                     out_m: Any, out_e: Any, w_m: Any, w_e: Any, scratch: Any) -> None:
    rows, cols = scratch.shape
    stw, smin, smax, smaxm = p[B_ST_W], p[B_ST_MIN_E], p[B_ST_MAX_E], p[B_ST_MAXM]
    k, pm, head = p[B_K], p[B_PM], p[B_HEAD]
    imask = _mask(p[B_IB])
    for r in prange(rows):
        x = scratch[r]
        base = r * cols
        a_t = te[r] + 2 - stw
        a_g = ge[r] + 2 - p[B_G_W] - p[B_STEP_FRAC]
        top = max(a_t + p[B_BT], a_g + p[B_BG])
        a_d = a_t - p[B_D_FRAC]
        if p[B_HAS_D]:
            top = max(top, a_d + p[B_BD])
        a_n = p[B_AN]
        if p[B_HAS_N]:
            top = min(max(top, a_n + p[B_BN]), np.int64(1) << 30)
        lsb = top + 2 - p[B_WIN]
        amax = np.int64(0)
        for c in range(cols):
            th = np.int64(tm[base + c])
            mu = _shift(th, a_t - lsb) + _shift(-(p[B_STEP] * np.int64(gm[base + c])), a_g - lsb)
            if p[B_HAS_D] and p[B_DECAY]:
                mu += _shift(-(p[B_DECAY] * th), a_d - lsb)
            x[c] = mu
            amax = max(amax, abs(mu))
        scale = p[B_NOISE] if (p[B_GAUSS] and not p[B_VC]) else np.int64(0)
        var_row = np.int64(0)
        exp0 = np.int64(0)
        if p[B_VC]:
            exp0 = _row_exp(amax, lsb, stw, smin, smax, smaxm, head)
            scale = vc_noise[exp0 - smin]
            var_row = vc_var[exp0 - smin]
        if scale > 0:
            amax = np.int64(0)
            for c in range(cols):
                bits = words[base + c, p[B_G_WORD]] >> _U64(p[B_G_OFF])
                bits &= _mask(p[B_G_WID])
                z = _gauss(bits, p[B_TERMS], p[B_IB], imask, tab)
                x[c] += _shift(scale * z, a_n - lsb)
                amax = max(amax, abs(x[c]))
        e = _row_exp(amax, lsb, stw, smin, smax, smaxm, head)
        if p[B_VC]:
            e = max(e, exp0)
        out_e[r] = e
        s = e + 2 - stw - lsb
        if not p[B_VC]:
            for c in range(cols):
                i, f = _split(x[c], s, k, stw)
                o = i + ((f + _wfield(words, base + c, p[B_SR_W], p[B_SR_OFF], p[B_SR_WID])) >> k)
                out_m[base + c] = min(max(o, -smaxm), smaxm)
        else:
            kk = max(k, pm + 1)
            for c in range(cols):
                i, f = _split(x[c], s, kk, stw)
                u = _wfield(words, base + c, p[B_VC_W], p[B_VC_OFF], p[B_VC_WID])
                if scale > 0:
                    y = (i << pm) + (((f >> (kk - pm - 1)) + 1) >> 1) + (np.int64(1) << (pm - 1))
                    low = y & ((np.int64(1) << pm) - 1)
                    up = low * low
                    high = (np.int64(1) << pm) - low
                    down = up + high * high
                    o = (y >> pm) + (1 if u < up else 0) - (1 if (u < down and u >= up) else 0)
                else:
                    fk = f >> (kk - k)
                    q = i + ((fk + _wfield(words, base + c, p[B_SR_W], p[B_SR_OFF], p[B_SR_WID])) >> k)
                    h = 2 * pm
                    fh = (fk >> (k - h)) if k >= h else (fk << (h - k))
                    vs = (fh * ((np.int64(1) << h) - fh) + (np.int64(1) << (h - 1))) >> h
                    w = max(var_row - vs, 0)
                    o = q + (1 if u < w else 0) - (1 if (u < 2 * w and u >= w) else 0)
                out_m[base + c] = min(max(o, -smaxm), smaxm)
        if p[B_ACC]:
            ww, wmaxm = p[B_W_W], p[B_W_MAXM]
            a = e + 2 - stw
            am = np.int64(0)
            for c in range(cols):
                am = max(am, abs(np.int64(out_m[base + c])))
            we = _row_exp(am, a, ww, p[B_W_MIN_E], p[B_W_MAX_E], wmaxm, head)
            w_e[r] = we
            sw = we + 2 - ww - a
            for c in range(cols):
                i, f = _split(np.int64(out_m[base + c]), sw, 1, ww)
                w_m[base + c] = min(max(i + f, -wmaxm), wmaxm)


def bfp_update(cfg: BfpConfig, regs: BfpRegisters, s0: Any, s1: Any, theta: BfpTensor, grad: BfpTensor,
               state_out: BfpTensor, weight_out: BfpTensor | None) -> None:
    """The BFP datapath (per-row exponent) into ``state_out`` (and ``weight_out`` for -F variants).

    Equal to ``BfpEngine.step``; mantissas may have any integer dtype holding the format,
    exponents int64 or narrower. ``s0``/``s1`` advance in place. Needs at least one column.
    """
    tm = np.asarray(theta.mant).reshape(-1)
    rows = int(np.asarray(theta.exp).shape[0])
    n = tm.size
    cols = n // rows if rows else 0
    words = stream_words(cfg.rng, s0, s1, n)
    if n == 0:
        return
    has_w = cfg.variant.has_accumulator and weight_out is not None
    om, oe = np.asarray(state_out.mant).reshape(-1), np.asarray(state_out.exp)
    wm = np.asarray(weight_out.mant).reshape(-1) if has_w and weight_out is not None else om
    we = np.asarray(weight_out.exp) if has_w and weight_out is not None else oe
    scratch = np.empty((rows, cols), dtype=np.int64)
    vn = np.asarray(regs.vc_noise or (0,), dtype=np.int64)
    vv = np.asarray(regs.vc_var or (0,), dtype=np.int64)
    p = bfp_params(cfg, regs)
    if not has_w:
        p[B_ACC] = 0
    _launch(_bfp_rows_kernel, n, tm, np.asarray(theta.exp), np.asarray(grad.mant).reshape(-1), np.asarray(grad.exp),
            words, p, gauss_table(cfg), vn, vv, om, oe, wm, we, scratch)


# ---- BFP quantization of float gradients -------------------------------------------------------

_F64_MAX = float(np.finfo(np.float64).max)


@njit(parallel=True, cache=True)
def _bfp_quantize_kernel(x: Any, cols: Any, fp: Any, u: Any, has_u: Any, out_m: Any, out_e: Any) -> None:
    rows = out_e.shape[0]
    width, min_e, max_e, maxm, k, head = fp[0], fp[1], fp[2], fp[3], fp[4], fp[5]
    for r in prange(rows):
        base = r * cols
        amax = 0.0
        for c in range(cols):
            v = abs(float(x[base + c]))
            if v > _F64_MAX:
                v = _F64_MAX  # +-inf saturates (nan_to_num)
            amax = max(amax, v)
        if amax > 0:
            e = math.frexp(amax)[1] - 1
        else:
            e = min_e
        e = min(max(e, min_e), max_e)
        if head and e < max_e and amax > np.float64(maxm - head) * math.ldexp(1.0, e + 2 - width):
            e += 1
        out_e[r] = e
        g = e + 2 - width
        for c in range(cols):
            v = float(x[base + c])
            v = min(max(v, -_F64_MAX), _F64_MAX)
            fm, ex = math.frexp(v)
            mi = np.int64(fm * 9007199254740992.0)  # exact: 53 significant bits
            d = min(max(ex - 53 + k - g, -(1 << 20)), width + k - 53)
            t = mi << min(d, 62) if d >= 0 else mi >> min(-d, 63)
            if has_u:
                q = (t >> k) + (1 if u[base + c] < (t & ((np.int64(1) << k) - 1)) else 0)
            else:
                q = (t + 1) >> 1
            out_m[base + c] = min(max(q, -maxm), maxm)


def bfp_quantize(fmt: Any, x: Any, rows: int, k: int, u: Any, headroom: int, out_mant: Any, out_exp: Any) -> None:
    """``quantize_core`` of float rows (``BfpFormat.quantize``'s definition): nearest when ``u`` is None (k = 1),
    else SR with the int64 ``k``-bit uniforms ``u`` (one per element, C order). NaN must be rejected by the
    caller; at least one column."""
    xf = np.asarray(x).reshape(-1)
    cols = xf.size // rows
    fp = np.array([fmt.width, fmt.min_exp, fmt.max_exp, fmt.max_mant, k, headroom], dtype=np.int64)
    uu = np.zeros(1, dtype=np.int64) if u is None else np.asarray(u).reshape(-1)
    _launch(_bfp_quantize_kernel, xf.size, xf, cols, fp, uu, u is not None, np.asarray(out_mant).reshape(-1),
            np.asarray(out_exp))
