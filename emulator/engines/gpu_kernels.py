"""Triton lane kernels (CUDA tensors; on CPU tensors under ``TRITON_INTERPRET=1``): the datapath at memory speed.

The same functions as :mod:`emulator.engines.cpu_kernels` (docs/notes: the lane-kernel contract), word
for word equal to the readable reference paths (:class:`NumpyEngine`, :class:`BfpEngine`, the torch
tensor code), including how far every lane's generator advances:

* :func:`fixed_update`: the fixed-point datapath (``emulator.spec.datapath.update``) of a flat tensor;
* :func:`bfp_update`: the BFP datapath (``emulator.spec.bfp.update``), one exponent per row;
* :func:`fixed_group_step`, :func:`bfp_group_step`: one optimizer step of a parameter group
  (gradient conversion from the gradient stream, the update, state words and ``p`` written in place).

Structure. Element ``i`` belongs to lane ``i mod L`` at cycle ``i div L``. A *virtual lane* is a
(chunk, lane) pair: the cycles are cut into ``chunks`` chunks of ``per`` cycles (``per`` a power of
two); virtual lane ``v = chunk * L + lane`` runs cycles ``[chunk * per, (chunk + 1) * per)`` of its
lane. One program owns ``BLOCK`` adjacent virtual lanes and loops over the cycles inside the kernel:
at each cycle adjacent programs' threads touch adjacent elements (coalesced when ``L`` is not tiny),
the generator state lives in registers, and no random word is ever stored. A chunk's start state
``T^(chunk * per) s_lane`` is computed in the kernel from byte tables of the jumps ``T^(per 2^k)``
(GF(2)-linear: 32 gathers per table, tables derived from the generator spec and cached per device).
The last chunk's virtual lanes write the lanes' new states. With ``chunks == 1`` (many lanes, or
short tensors) no jump is needed and the states are updated in place.

BFP rows. A row's exponent needs the maximum over the row of ``|mu|`` (and, for noisy rows, of
``|x|``), and rows are spread over many lanes and programs. The kernels run in passes over the
same virtual lanes: a max pass accumulates the row maxima with ``atomic_max`` into a per-row int64
buffer (the generator is replayed from the same start states when the noise enters the maximum,
without committing them), then the final pass recomputes each element's sum, takes the exponent
from the row maximum, rounds, and commits the lane states. Two or three launches per tensor, no
host synchronization; a per-row program would instead need each row's lane states, i.e. a jump of
every lane by a per-row distance.

uint64 words live in int64: XOR/AND/OR and ``<<`` are the same bits, the logical right shift is the
arithmetic one masked (``_shr``). Every intermediate of the datapath fits 62 bits (checked by the
configurations), so int64 arithmetic is exact, on the interpreter (numpy) and on the device alike.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from ..spec.bfp import TORCH_OPS as _TORCH_OPS
from ..spec.bfp import BfpConfig, BfpRegisters, BfpTensor, _round_rows, block_shape, quantize_core
from ..spec.datapath import DatapathConfig, StepRegisters, Variant
from ..spec.gaussian import GaussianSpec
from ..spec.rng import XoroshiroSpec
from .torch_engine import _jump_tables_np

_JUMP_ENTRIES = 16 * 256  # one byte table per state byte, 256 entries each (torch_engine._jump_tables_np)
VIRTUAL_LANES = {"cuda": 1 << 17, "cpu": 1 << 10}  # chunk states aimed for: fill the device / keep the interpreter fast
# cycles per chunk at least: a chunk start costs up to log2(chunks) table jumps (64 table loads each)
MIN_PER = {"cuda": 64, "cpu": 16}
BLOCK_MAX = {"cuda": 128, "cpu": 1024}  # virtual lanes per program (the interpreter runs a program as numpy vectors)

# ---- generator ---------------------------------------------------------------------------


# Helpers are few and flat: every nested @triton.jit call costs milliseconds in the interpreter (it
# re-patches the helper's globals), so rotations, shifts and clamps are written out inline.


@triton.jit
def _output_step(s0, s1, RA: tl.constexpr, RB: tl.constexpr, RC: tl.constexpr, AOX: tl.constexpr):
    """xoroshiro: (output word, next s0, next s1); the output is read before the transition.

    ``rotl(x, r) = (x << r) | ((x >> (64 - r)) & (2^r - 1))``: the arithmetic right shift masked is the logical one.
    """
    sx = s0 ^ s1
    if AOX:
        sa = s0 & s1
        t = sa | ((sa << 1) | ((sa >> 63) & 1))  # sa | rotl(sa, 1)
        out = sx ^ ((t << 1) | ((t >> 63) & 1))  # sx ^ (rotl(sa, 1) | rotl(sa, 2))
    else:
        out = sx
    n0 = ((s0 << RA) | ((s0 >> (64 - RA)) & ((1 << RA) - 1))) ^ sx ^ (sx << RB)
    n1 = (sx << RC) | ((sx >> (64 - RC)) & ((1 << RC) - 1))
    return out, n0, n1


@triton.jit
def _apply_jump(s0, s1, tab):
    """T^n (s0, s1) from the 16 byte tables of T^n at ``tab`` (2-D states; GF(2)-linear: XOR of 32 gathers)."""
    a0 = tl.zeros_like(s0)
    a1 = tl.zeros_like(s1)
    for b in tl.static_range(16):
        if b < 8:
            idx = ((s0 >> (8 * b)) & 255) + 256 * b
        else:
            idx = ((s1 >> (8 * (b - 8))) & 255) + 256 * b
        a0 ^= tl.load(tab + idx)
        a1 ^= tl.load(tab + 4096 + idx)
    return a0, a1


@triton.jit
def _jump_start(s0, s1, chunk, jump_ptr, K):
    """``T^(chunk * per) (s0, s1)`` from the byte tables of ``T^(per 2^k)``, k < K (2-D states)."""
    for k in range(K):
        a0, a1 = _apply_jump(s0, s1, jump_ptr + k * (2 * 4096))
        take = ((chunk >> k) & 1) != 0
        s0 = tl.where(take[:, None], a0, s0)
        s1 = tl.where(take[:, None], a1, s1)
    return s0, s1


@triton.jit
def _word(out, wcol, WORD: tl.constexpr):
    """Generator word ``WORD`` of each lane from the 2-D (lanes, words) output."""
    return tl.sum(tl.where(wcol == WORD, out, 0), axis=1)


@triton.jit
def _field(out, wcol, WORD: tl.constexpr, OFF: tl.constexpr, WIDTH: tl.constexpr):
    """Field (WORD, OFF, WIDTH) of the lanes' words, as a non-negative int64."""
    w = tl.sum(tl.where(wcol == WORD, out, 0), axis=1)
    if WIDTH == 0:
        return w * 0
    elif WIDTH == 64:
        return w
    else:
        return (w >> OFF) & ((1 << WIDTH) - 1)  # OFF + WIDTH <= 64: no sign fill enters


@triton.jit
def _gauss(out, wcol, gauss_ptr, G_WORD: tl.constexpr, G_OFF: tl.constexpr, G_BITS: tl.constexpr,
           G_LOOKUPS: tl.constexpr):
    """z: the sum of table look-ups of the gauss field (pairs of terms per look-up when the table is a sum table)."""
    # term j reads bits below the field width: never the sign fill of the arithmetic shift
    bits = tl.sum(tl.where(wcol == G_WORD, out, 0), axis=1) >> G_OFF
    z = tl.load(gauss_ptr + (bits & ((1 << G_BITS) - 1)))
    for j in tl.static_range(1, G_LOOKUPS):
        z += tl.load(gauss_ptr + ((bits >> (j * G_BITS)) & ((1 << G_BITS) - 1)))
    return z


@triton.jit
def _pow2(e):
    """2.0**e (float64) for int64 ``e`` in the normal range, from its bits: exact."""
    return ((e + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _round_nearest(x, S: tl.constexpr):
    if S <= 0:
        return x << (-S)
    else:
        return (x + (1 << (S - 1))) >> S


@triton.jit
def _sr_variance(fk, K: tl.constexpr, PM: tl.constexpr):
    H: tl.constexpr = 2 * PM
    if K >= H:
        fh = fk >> (K - H)
    else:
        fh = fk << (H - K)
    return (fh * ((1 << H) - fh) + (1 << (H - 1))) >> H


# ---- the fixed-point datapath --------------------------------------------------------------


@triton.jit
def _tensor_start(s0, s1, t, lane, chunk, B, KB, LOGP, KC, meta_ptr, jump_ptr, RA: tl.constexpr, RB: tl.constexpr,
                  RC: tl.constexpr, AOX: tl.constexpr):
    """Lane states at chunk ``chunk`` of tensor ``t`` of a group: ``T^(B + chunk * per + e) s`` with ``B`` the
    cycles every lane spent on the earlier tensors, ``e = #{j < t : lane < M_j mod L}`` (the lanes that took
    one more element of tensor j), ``per = 2^LOGP``. Tables ``T^(2^k)`` at ``jump_ptr + k * 8192``."""
    for k in range(KB):  # B is the same for the whole program: a uniform branch
        if ((B >> k) & 1) != 0:
            s0, s1 = _apply_jump(s0, s1, jump_ptr + k * 8192)
    for j in range(KC):
        a0, a1 = _apply_jump(s0, s1, jump_ptr + (LOGP + j) * 8192)
        take = ((chunk >> j) & 1) != 0
        s0 = tl.where(take[:, None], a0, s0)
        s1 = tl.where(take[:, None], a1, s1)
    for j in range(t):
        r = tl.load(meta_ptr + j * 8 + 5)
        _, n0, n1 = _output_step(s0, s1, RA, RB, RC, AOX)
        more = (lane < r)[:, None]
        s0 = tl.where(more, n0, s0)
        s1 = tl.where(more, n1, s1)
    return s0, s1


@triton.jit
def _fixed_kernel(
    theta_ptr, grad_ptr, state_ptr, weight_ptr, p_ptr, off_ptr, meta_ptr, prog_ptr,
    s0_ptr, s1_ptr, n0_ptr, n1_ptr, g0_ptr, g1_ptr, gn0_ptr, gn1_ptr,
    jump_ptr, gauss_ptr, L, T, KB,
    step, decay, noise, vc_var,
    W: tl.constexpr, WP: tl.constexpr, RA: tl.constexpr, RB: tl.constexpr, RC: tl.constexpr, AOX: tl.constexpr,
    IS_VC: tl.constexpr, GAUSSIAN: tl.constexpr, ACC: tl.constexpr,
    SH_T: tl.constexpr, SH_G: tl.constexpr, SH_D: tl.constexpr, SH_N: tl.constexpr,
    S: tl.constexpr, KSR: tl.constexpr, PM: tl.constexpr,
    ST_MIN: tl.constexpr, ST_MAX: tl.constexpr, WT_MIN: tl.constexpr, WT_MAX: tl.constexpr, WSH: tl.constexpr,
    HAS_DECAY: tl.constexpr, HAS_NOISE: tl.constexpr, VC_NOISE: tl.constexpr,
    VC_WORD: tl.constexpr, VC_OFF: tl.constexpr, VC_WIDTH: tl.constexpr,
    SR_WORD: tl.constexpr, SR_OFF: tl.constexpr, SR_WIDTH: tl.constexpr,
    G_WORD: tl.constexpr, G_OFF: tl.constexpr, G_BITS: tl.constexpr, G_LOOKUPS: tl.constexpr,
    QUANT: tl.constexpr, STOCH: tl.constexpr, G_FRAC: tl.constexpr, G_MIN: tl.constexpr, G_MAX: tl.constexpr,
    Q_BITS: tl.constexpr, W_FRAC: tl.constexpr, WRITE_P: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One launch over the tensors of a group. Program ``pid`` works on tensor ``t = prog[pid]`` (row ``T``: no
    elements, it writes the lanes' final states); ``meta[t]`` = (M, per, KC, first program, B, M mod L, virtual
    lanes, log2 per); ``KB``: the bits of the largest B; ``off[t]``: element offsets of the tensor's theta,
    grad, state, weight, p from the base pointers (every tensor of a kind has one dtype)."""
    pid = tl.program_id(0)
    t = tl.load(prog_ptr + pid).to(tl.int64)
    mrow = meta_ptr + t * 8
    M = tl.load(mrow)
    per = tl.load(mrow + 1)
    KC = tl.load(mrow + 2)
    B = tl.load(mrow + 4)
    V = tl.load(mrow + 6)
    LOGP = tl.load(mrow + 7)
    v = (pid - tl.load(mrow + 3)) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    vmask = v < V
    chunk = v // L
    lane = v - chunk * L
    wcol = tl.arange(0, WP)[None, :]
    smask = vmask[:, None] & (wcol < W)
    soff = lane[:, None] * W + wcol
    s0 = tl.load(s0_ptr + soff, mask=smask, other=0)
    s1 = tl.load(s1_ptr + soff, mask=smask, other=0)
    s0, s1 = _tensor_start(s0, s1, t, lane, chunk, B, KB, LOGP, KC, meta_ptr, jump_ptr, RA, RB, RC, AOX)
    if QUANT and STOCH:
        gmask = vmask[:, None] & (wcol < 1)
        g0 = tl.load(g0_ptr + lane[:, None] + wcol, mask=gmask, other=0)
        g1 = tl.load(g1_ptr + lane[:, None] + wcol, mask=gmask, other=0)
        g0, g1 = _tensor_start(g0, g1, t, lane, chunk, B, KB, LOGP, KC, meta_ptr, jump_ptr, RA, RB, RC, AOX)
    orow = off_ptr + t * 5
    theta_ptr += tl.load(orow)
    grad_ptr += tl.load(orow + 1)
    state_ptr += tl.load(orow + 2)
    weight_ptr += tl.load(orow + 3)
    p_ptr += tl.load(orow + 4)
    cyc0 = chunk * per
    for c in range(per):
        i = (cyc0 + c) * L + lane
        m = vmask & (i < M)
        out, t0, t1 = _output_step(s0, s1, RA, RB, RC, AOX)
        s0 = tl.where(m[:, None], t0, s0)
        s1 = tl.where(m[:, None], t1, s1)
        theta = tl.load(theta_ptr + i, mask=m, other=0).to(tl.int64)
        if QUANT:
            # FixedFormat.quantize in float64, step for step (every step exact)
            lo = tl.full([BLOCK], G_MIN, tl.int64)
            hi = tl.full([BLOCK], G_MAX, tl.int64)
            gx = tl.load(grad_ptr + i, mask=m, other=0).to(tl.float64)
            t = gx * _pow2(tl.full([BLOCK], G_FRAC, tl.int64))
            # as FixedFormat.quantize: |x 2^F| < 2^-64 rounds as +-2^-64 (an underflow to -0 would lose the sign)
            tiny = (gx != 0) & (tl.abs(gx) < _pow2(tl.full([BLOCK], -64 - G_FRAC, tl.int64)))
            t = tl.where(tiny, tl.where(gx < 0, -(2.0**-64), 2.0**-64), t)
            t = tl.minimum(tl.maximum(t, (lo - 1).to(tl.float64)), (hi + 1).to(tl.float64))
            fl = tl.floor(t)
            if STOCH:
                gout, u0, u1 = _output_step(g0, g1, RA, RB, RC, AOX)
                g0 = tl.where(m[:, None], u0, g0)
                g1 = tl.where(m[:, None], u1, g1)
                ug = _word(gout, wcol, 0) & ((1 << Q_BITS) - 1)
                kq = _pow2(tl.full([BLOCK], Q_BITS, tl.int64))
                fk = tl.floor(t * kq) - fl * kq
                q = fl + (ug.to(tl.float64) < fk).to(tl.float64)
            else:
                q = fl + ((t - fl) >= 0.5).to(tl.float64)
            grad = tl.minimum(tl.maximum(q.to(tl.int64), lo), hi)
        else:
            grad = tl.load(grad_ptr + i, mask=m, other=0).to(tl.int64)
        mu = (theta << SH_T) - ((step * grad) << SH_G)
        if HAS_DECAY:
            mu = mu - ((decay * theta) << SH_D)
        if IS_VC:
            u = _field(out, wcol, VC_WORD, VC_OFF, VC_WIDTH)
            if VC_NOISE:
                x = mu
                if HAS_NOISE:
                    x = mu + ((noise * _gauss(out, wcol, gauss_ptr, G_WORD, G_OFF, G_BITS, G_LOOKUPS)) << SH_N)
                y = _round_nearest(x, S - PM) + (1 << (PM - 1))
                low = y & ((1 << PM) - 1)
                up = low * low
                high = (1 << PM) - low
                down = up + high * high
                step_up = u < up
                step_down = (u < down) != step_up
                res = (y >> PM) + step_up.to(tl.int64) - step_down.to(tl.int64)
            else:
                if S == 0:
                    q2 = mu
                    wv = mu * 0 + vc_var
                else:
                    y = mu >> (S - KSR)
                    fk2 = y & ((1 << KSR) - 1)
                    q2 = (y >> KSR) + ((fk2 + _field(out, wcol, SR_WORD, SR_OFF, SR_WIDTH)) >> KSR)
                    wv = tl.maximum(vc_var - _sr_variance(fk2, KSR, PM), 0)
                up_b = u < wv
                down_b = (u < 2 * wv) != up_b
                res = q2 + up_b.to(tl.int64) - down_b.to(tl.int64)
        else:
            xs = mu
            if GAUSSIAN and HAS_NOISE:
                xs = mu + ((noise * _gauss(out, wcol, gauss_ptr, G_WORD, G_OFF, G_BITS, G_LOOKUPS)) << SH_N)
            if S > 0:
                res = ((xs >> (S - KSR)) + _field(out, wcol, SR_WORD, SR_OFF, SR_WIDTH)) >> KSR
            else:
                res = xs
        res = tl.minimum(tl.maximum(res, ST_MIN), ST_MAX)
        tl.store(state_ptr + i, res.to(state_ptr.dtype.element_ty), mask=m)
        if ACC:
            wres = tl.minimum(tl.maximum(_round_nearest(res, WSH), WT_MIN), WT_MAX)
            tl.store(weight_ptr + i, wres.to(weight_ptr.dtype.element_ty), mask=m)
        else:
            wres = res
        if WRITE_P:
            pv = wres.to(tl.float64) * _pow2(tl.full([BLOCK], -W_FRAC, tl.int64))
            tl.store(p_ptr + i, pv.to(p_ptr.dtype.element_ty), mask=m)
    last = ((chunk * 0 + t) == T)[:, None]  # the final row's programs hold the lanes' final states
    tl.store(n0_ptr + soff, s0, mask=smask & last)
    tl.store(n1_ptr + soff, s1, mask=smask & last)
    if QUANT and STOCH:
        tl.store(gn0_ptr + lane[:, None] + wcol, g0, mask=gmask & last)
        tl.store(gn1_ptr + lane[:, None] + wcol, g1, mask=gmask & last)


# ---- host side: schedule, tables, constants ------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _Schedule:
    """Chunking of ``n`` elements over ``lanes`` lanes: ``chunks`` chunks of ``per`` cycles, ``virtual`` lanes."""

    def __init__(self, n: int, lanes: int, device: torch.device, target: int | None = None):
        cycles = -(-n // lanes)
        if target is None:
            target = VIRTUAL_LANES.get(device.type, VIRTUAL_LANES["cuda"])
        per = cycles
        if cycles > 1 and lanes < target:
            want = max(1, target // lanes)  # chunks wanted
            per = max(MIN_PER.get(device.type, MIN_PER["cuda"]), _next_pow2(-(-cycles // want)))
            per = min(per, _next_pow2(cycles))
        chunks = -(-cycles // per) if cycles else 0
        if chunks <= 1:
            per, chunks = cycles, 1
        self.per = per
        self.chunks = chunks
        self.lanes_used = min(lanes, n) if chunks == 1 else lanes
        self.virtual = self.lanes_used if chunks == 1 else chunks * lanes
        self.jumps = (chunks - 1).bit_length()
        self.block = min(BLOCK_MAX.get(device.type, 128), max(16, _next_pow2(self.virtual)))

    @property
    def grid(self) -> tuple[int]:
        return (triton.cdiv(self.virtual, self.block),)


_DEVICE_TABLES: dict[tuple[Any, ...], Tensor] = {}


def _cached(key: tuple[Any, ...], make: Any) -> Tensor:
    t = _DEVICE_TABLES.get(key)
    if t is None:
        if len(_DEVICE_TABLES) > 512:
            _DEVICE_TABLES.clear()
        t = _DEVICE_TABLES[key] = make()
    return t


def _jump_tables(spec: XoroshiroSpec, per: int, k: int, device: torch.device) -> Tensor:
    """Byte tables of ``T^(per 2^j)`` for ``j < k``: shape (max(k, 1), 2, 4096) int64 on ``device``."""

    def make() -> Tensor:
        if k == 0:
            return torch.zeros((1, 2, _JUMP_ENTRIES), dtype=torch.int64, device=device)
        tabs = np.stack([_jump_tables_np(spec, per << j) for j in range(k)])
        return torch.from_numpy(tabs).to(device)

    return _cached(("jump", spec, per, k, device), make)


def _gauss_layout(spec: GaussianSpec) -> tuple[int, int, np.ndarray]:
    """(bits per look-up, look-ups, table): pairs of terms in a sum table when small (as GaussianSpec.sample)."""
    t = spec.table
    if spec.terms % 2 == 0 and spec.index_bits <= 8:
        return 2 * spec.index_bits, spec.terms // 2, (t[None, :] + t[:, None]).ravel()
    return spec.index_bits, spec.terms, t


def _gauss_table(spec: GaussianSpec, device: torch.device) -> Tensor:
    return _cached(("gauss", spec, device), lambda: torch.from_numpy(_gauss_layout(spec)[2].copy()).to(device))


def _dummy(device: torch.device) -> Tensor:
    return _cached(("dummy", device), lambda: torch.zeros(1, dtype=torch.int64, device=device))


def _rng_constants(spec: XoroshiroSpec, words: int) -> dict[str, Any]:
    if spec.word_bits != 64:
        raise ValueError(f"the kernels run 64-bit generators only, got word_bits={spec.word_bits}")
    return dict(W=words, WP=_next_pow2(words), RA=spec.a, RB=spec.b, RC=spec.c, AOX=spec.scrambler == "aox")


def _field_constants(fields: dict[str, Any], gaussian: GaussianSpec) -> dict[str, Any]:
    vc = fields.get("vc")
    sr = fields.get("sr")
    gs = fields.get("gauss")
    bits, lookups, _ = _gauss_layout(gaussian)
    return dict(
        VC_WORD=vc.word if vc else 0, VC_OFF=vc.offset if vc else 0, VC_WIDTH=vc.width if vc else 0,
        SR_WORD=sr.word if sr else 0, SR_OFF=sr.offset if sr else 0, SR_WIDTH=sr.width if sr else 0,
        G_WORD=gs.word if gs else 0, G_OFF=gs.offset if gs else 0, G_BITS=bits, G_LOOKUPS=lookups,
    )


@functools.lru_cache(maxsize=128)
def _fixed_constants(cfg: DatapathConfig) -> dict[str, Any]:
    """Every compile-time constant of the fixed kernel, derived from the configuration."""
    st, x = cfg.state, cfg.sum_frac
    return dict(
        **_rng_constants(cfg.rng, cfg.rng_words),
        IS_VC=cfg.variant is Variant.VC, GAUSSIAN=cfg.variant.has_gaussian, ACC=cfg.variant.has_accumulator,
        SH_T=x - st.frac, SH_G=x - cfg.step.frac - cfg.grad.frac,
        SH_D=x - cfg.decay.frac - st.frac if cfg.decay is not None else 0,
        SH_N=x - cfg.noise.frac - cfg.gaussian.frac,
        S=cfg.drop_bits, KSR=cfg.sr_k, PM=cfg.vc_frac_bits,
        ST_MIN=st.min_word, ST_MAX=st.max_word, WT_MIN=cfg.weight.min_word, WT_MAX=cfg.weight.max_word,
        WSH=st.frac - cfg.weight.frac,
        **_field_constants(cfg.fields, cfg.gaussian),
    )


def _check_states(s0: Tensor, s1: Tensor, lanes: int, words: int, name: str) -> None:
    for t in (s0, s1):
        if not isinstance(t, Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (lanes, words) \
                or not t.is_contiguous():
            raise ValueError(f"{name} states must be contiguous int64 tensors of shape ({lanes}, {words}), got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")


class _GroupPlan:
    """Virtual lanes of one launch over a group's tensors of ``sizes`` elements (each from lane 0).

    ``meta`` rows (device int64): M, per, KC (chunk-index bits), first program, B (cycles of every lane on
    the earlier tensors), M mod L, virtual lanes, log2 per; a last row (no elements, all L lanes, B of
    all tensors) whose programs write the lanes' final states. ``prog`` (device int32): each program's row.
    """

    def __init__(self, sizes: tuple[int, ...], lanes: int, device: torch.device, target: int | None):
        scheds = [_Schedule(n, lanes, device, target) for n in sizes]
        cap = BLOCK_MAX.get(device.type, 128)
        self.block = max([sc.block for sc in scheds] + [min(cap, max(16, _next_pow2(lanes)))])
        rows: list[list[int]] = []
        prog: list[int] = []
        base, kbits = 0, 1
        for t, (n, sc) in enumerate(zip(sizes, scheds, strict=True)):
            logp = (sc.per.bit_length() - 1) if sc.chunks > 1 else 0  # per is a power of two when chunked
            kc = (sc.chunks - 1).bit_length()
            rows.append([n, sc.per, kc, len(prog), base, n % lanes, sc.virtual, logp])
            prog += [t] * triton.cdiv(sc.virtual, self.block)
            kbits = max(kbits, logp + kc)
            base += n // lanes
        rows.append([0, 0, 0, len(prog), base, 0, lanes, 0])
        prog += [len(sizes)] * triton.cdiv(lanes, self.block)
        self.kb = max(1, base.bit_length())
        self.tables = max(self.kb, kbits)
        self.count = len(sizes)
        self.programs = len(prog)
        self.meta = torch.tensor(rows, dtype=torch.int64, device=device)
        self.prog = torch.tensor(prog, dtype=torch.int32, device=device)


_PLANS: dict[tuple[Any, ...], _GroupPlan] = {}


def _plan(sizes: tuple[int, ...], lanes: int, device: torch.device, target: int | None) -> _GroupPlan:
    key = (sizes, lanes, device, target)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 256:
            _PLANS.clear()
        plan = _PLANS[key] = _GroupPlan(sizes, lanes, device, target)
    return plan


def _pow2_jump_tables(spec: XoroshiroSpec, k: int, device: torch.device) -> Tensor:
    """Byte tables of ``T^(2^j)`` for ``j < k``: shape (k, 2, 4096) int64 on ``device`` (grown, never shrunk)."""
    key = ("pow2", spec, device)
    have = _DEVICE_TABLES.get(key)
    if have is None or have.shape[0] < k:
        tabs = np.stack([_jump_tables_np(spec, 1 << j) for j in range(max(k, 24))])
        have = _DEVICE_TABLES[key] = torch.from_numpy(tabs).to(device)
    return have


def _offsets(tensors: list[Tensor | None], device: torch.device) -> tuple[Tensor | None, list[int]]:
    """(base tensor, element offsets of each tensor from it); all of one dtype (ValueError otherwise)."""
    first = next((x for x in tensors if x is not None), None)
    if first is None:
        return None, [0] * len(tensors)
    size, ptr = first.element_size(), first.data_ptr()
    out = []
    for x in tensors:
        if x is None:
            out.append(0)
            continue
        if x.dtype != first.dtype or x.device != first.device:
            raise ValueError(f"a group's tensors must share one dtype and device, got {x.dtype} and {first.dtype}")
        d = x.data_ptr() - ptr
        if d % size:
            raise ValueError("tensor storage is not aligned to its element size")
        out.append(d // size)
    return first, out


def _launch_fixed(cfg: DatapathConfig, regs: StepRegisters, s0: Tensor, s1: Tensor, thetas: list[Tensor],
                  grads: list[Tensor], states: list[Tensor], weights: list[Tensor], *,
                  ps: list[Tensor] | None = None, g0: Tensor | None = None, g1: Tensor | None = None,
                  rounding: str | None = None, sr_bits: int = 32, target: int | None = None) -> None:
    """One launch of the fixed kernel over flat tensors (each from lane 0, streams continuing in list order);
    ``rounding`` not None: ``grads`` hold floats converted in the kernel; ``ps``: float weights written."""
    keep = [i for i, x in enumerate(thetas) if x.numel()]
    if not keep:
        return
    dev = thetas[0].device
    pick = [thetas, grads, states, weights] + ([ps] if ps is not None else [])
    cols = [[kind[i] for i in keep] for kind in pick]
    plan = _plan(tuple(thetas[i].numel() for i in keep), cfg.lanes, dev, target)
    bases, offs = [], []
    for kind in cols:
        base, o = _offsets(list(kind), dev)
        bases.append(base)
        offs.append(o)
    dummy = _dummy(dev)
    if ps is None:
        bases.append(None)
        offs.append([0] * len(keep))
    rows = [list(r) for r in zip(*offs, strict=True)] + [[0] * 5]
    off = torch.tensor(rows, dtype=torch.int64, pin_memory=dev.type == "cuda").to(dev, non_blocking=True)
    quant = rounding is not None
    stoch = rounding == "stochastic" and g0 is not None and g1 is not None
    n0, n1 = torch.empty_like(s0), torch.empty_like(s1)
    gs0, gs1 = (g0, g1) if stoch and g0 is not None and g1 is not None else (s0, s1)  # s0/s1: unused placeholders
    gn0, gn1 = (torch.empty_like(gs0), torch.empty_like(gs1)) if stoch else (n0, n1)
    gauss = _gauss_table(cfg.gaussian, dev) if cfg.uses_noise else dummy
    _fixed_kernel[(plan.programs,)](
        *(b if b is not None else dummy for b in bases), off, plan.meta, plan.prog,
        s0, s1, n0, n1, gs0, gs1, gn0, gn1,
        _pow2_jump_tables(cfg.rng, plan.tables, dev), gauss, cfg.lanes, plan.count, plan.kb,
        regs.step, regs.decay, regs.noise, regs.vc_var,
        HAS_DECAY=bool(regs.decay) and cfg.decay is not None, HAS_NOISE=bool(regs.noise), VC_NOISE=regs.vc_noise,
        QUANT=quant, STOCH=stoch, G_FRAC=cfg.grad.frac, G_MIN=cfg.grad.min_word, G_MAX=cfg.grad.max_word,
        Q_BITS=sr_bits, W_FRAC=cfg.weight.frac, WRITE_P=ps is not None, BLOCK=plan.block,
        **_fixed_constants(cfg),
    )
    if stoch:
        torch._foreach_copy_([s0, s1, gs0, gs1], [n0, n1, gn0, gn1])
    else:
        torch._foreach_copy_([s0, s1], [n0, n1])


def fixed_update(cfg: DatapathConfig, regs: StepRegisters, s0: Tensor, s1: Tensor, theta: Tensor, grad: Tensor,
                 state_out: Tensor, weight_out: Tensor, *, target: int | None = None) -> None:
    """The fixed-point datapath of flat tensors of ``M`` elements (element ``i``: lane ``i % L``, cycle ``i // L``).

    ``s0``, ``s1``: the lane states, (L, rng_words) int64 (uint64 bits), advanced in place exactly as
    ``torch_stream_words`` advances them. ``theta`` (state words), ``grad`` (gradient words) and the outputs are
    contiguous integer tensors of any width that holds their format (int8/16/32/64); ``state_out`` may be
    ``theta`` (in place), ``weight_out`` may be ``state_out`` (-L variants). Inputs are trusted (validated by the
    engine). ``target``: virtual lanes aimed for (tests force chunking with a small value).
    """
    _check_states(s0, s1, cfg.lanes, cfg.rng_words, "lane")
    _launch_fixed(cfg, regs, s0, s1, [theta.reshape(-1)], [grad.reshape(-1)], [state_out.view(-1)],
                  [weight_out.view(-1)], target=target)


def fixed_quantize_update(cfg: DatapathConfig, regs: StepRegisters, s0: Tensor, s1: Tensor, g0: Tensor | None,
                          g1: Tensor | None, theta: Tensor, grad: Tensor, state_out: Tensor, weight_out: Tensor, *,
                          rounding: str, sr_bits: int, p_out: Tensor | None = None,
                          target: int | None = None) -> None:
    """``TorchEngine.step_quantize`` of one tensor: float ``grad`` -> gradient words (``FixedFormat.quantize``'s
    rule; SR uniforms: the low ``sr_bits`` bits of the gradient stream ``g0``/``g1`` (L, 1), advanced in place;
    none drawn for ``rounding='nearest'``), the update, and (``p_out``) the emitted weight's float value.
    NaN gradients must have been rejected by the caller."""
    _check_states(s0, s1, cfg.lanes, cfg.rng_words, "lane")
    if rounding == "stochastic":
        if g0 is None or g1 is None:
            raise ValueError("stochastic gradient rounding needs the gradient stream's states g0, g1")
        _check_states(g0, g1, cfg.lanes, 1, "gradient stream")
    _launch_fixed(cfg, regs, s0, s1, [theta.reshape(-1)], [grad.reshape(-1)], [state_out.view(-1)],
                  [weight_out.view(-1)], ps=[p_out.view(-1)] if p_out is not None else None, g0=g0, g1=g1,
                  rounding=rounding, sr_bits=sr_bits, target=target)


def fixed_group_step(cfg: DatapathConfig, regs: StepRegisters, s0: Tensor, s1: Tensor, g0: Tensor, g1: Tensor,
                     params: list[Tensor], grads: list[Tensor], words: list[Tensor], *, rounding: str = "stochastic",
                     sr_bits: int = 32, target: int | None = None) -> None:
    """One optimizer step of a fixed-point group (``emulator.optim.optimizer.sgld_lp``'s semantics).

    Per tensor, in list order, each starting at lane 0: the gradient word by ``FixedFormat.quantize``'s rule
    (stochastic: the SR uniform is the low ``sr_bits`` bits of the gradient stream's word, ``g0``/``g1`` of shape
    (L, 1)), the update, the state words written into ``words[i]`` in place, ``params[i]`` <- the emitted
    weight's value. One launch over all the tensors (one per tensor if their dtypes differ); NaN gradients
    must have been rejected by the caller.
    """
    _check_states(s0, s1, cfg.lanes, cfg.rng_words, "lane")
    if rounding == "stochastic":
        _check_states(g0, g1, cfg.lanes, 1, "gradient stream")
    if any(not p.is_contiguous() for p in params):
        raise ValueError("fixed_group_step needs contiguous parameters")
    flat = [w.view(-1) for w in words]
    weights = [torch.empty_like(w) for w in flat] if cfg.variant.has_accumulator else flat
    gflat = [g.detach().reshape(-1) for g in grads]
    pflat = [p.detach().view(-1) for p in params]
    kinds = (flat, gflat, pflat)
    if all(len({(x.dtype, x.device) for x in kind}) <= 1 for kind in kinds):
        _launch_fixed(cfg, regs, s0, s1, flat, gflat, flat, weights, ps=pflat, g0=g0, g1=g1, rounding=rounding,
                      sr_bits=sr_bits, target=target)
        return
    for w, g, p, wt in zip(flat, gflat, pflat, weights, strict=True):  # mixed dtypes: one launch per tensor
        _launch_fixed(cfg, regs, s0, s1, [w], [g], [w], [wt], ps=[p], g0=g0, g1=g1, rounding=rounding,
                      sr_bits=sr_bits, target=target)


# ---- the BFP datapath ----------------------------------------------------------------------


@triton.jit
def _bit_length(x):
    """Bit length of non-negative int64 values (binary search with shifts)."""
    n = x * 0
    for k in tl.static_range(6):
        sh: tl.constexpr = 32 >> k
        big = x >= (1 << sh)
        n += big.to(tl.int64) * sh
        x = tl.where(big, x >> sh, x)
    return n + (x > 0).to(tl.int64)


@triton.jit
def _shift(v, d):
    """floor(v * 2**d) for per-element d: left for d >= 0, arithmetic right else (bfp.shift)."""
    return tl.where(d >= 0, v << tl.minimum(tl.maximum(d, 0), 62), v >> tl.minimum(tl.maximum(-d, 0), 63))


@triton.jit
def _row_exponent(amax, lsb, WIDTH: tl.constexpr, MIN_EXP: tl.constexpr, MAX_EXP: tl.constexpr,
                  HEADROOM: tl.constexpr):
    """bfp.row_exponent from the row maximum ``amax`` of |x| and the row's window LSB ``lsb``."""
    e = lsb + _bit_length(amax) - 1
    e = tl.minimum(tl.maximum(tl.where(amax > 0, e, MIN_EXP), MIN_EXP), MAX_EXP)
    if HEADROOM > 0:
        lim: tl.constexpr = (1 << (WIDTH - 1)) - 1 - HEADROOM
        s = e + 2 - WIDTH - lsb
        over_pos = ((amax - 1) >> tl.minimum(tl.maximum(s, 0), 63)) >= lim
        over_neg = (tl.minimum(amax, 1 << WIDTH) << tl.minimum(tl.maximum(-s, 0), WIDTH + 1)) > lim
        over = tl.where(s >= 0, over_pos, over_neg) & (e < MAX_EXP)
        e = e + over.to(tl.int64)
    return e


@triton.jit
def _split(x, s, FB: tl.constexpr, WIDTH: tl.constexpr):
    """bfp.split: (I, f) with I = floor(x / 2**s) clamped, f the FB-bit fraction."""
    big: tl.constexpr = 1 << (WIDTH + 1)
    i_pos = x >> tl.minimum(tl.maximum(s, 0), 63)
    i_neg = tl.minimum(tl.maximum(x, -big), big) << tl.minimum(tl.maximum(-s, 0), WIDTH + 1)
    i = tl.where(s >= 0, i_pos, i_neg)
    i = tl.minimum(tl.maximum(i, -((1 << (WIDTH - 1)) + 2)), (1 << (WIDTH - 1)) + 1)
    f_hi = (x >> tl.minimum(tl.maximum(s - FB, 0), 63)) & ((1 << FB) - 1)
    sl = tl.minimum(tl.maximum(s, 0), FB)
    one = x * 0 + 1
    f_lo = (x & ((one << sl) - 1)) << (FB - sl)
    f = tl.where(s >= FB, f_hi, tl.where(s > 0, f_lo, 0))
    return i, f


@triton.jit
def _bfp_kernel(
    tm_ptr, te_ptr, gm_ptr, ge_ptr, mant_ptr, exp_ptr, maxmu_ptr, maxx_ptr,
    s0_ptr, s1_ptr, n0_ptr, n1_ptr, jump_ptr, gauss_ptr, vcn_ptr, vcv_ptr,
    M, COLS, L, V, per, last_chunk, K,
    step, decay, noise,
    W: tl.constexpr, WP: tl.constexpr, RA: tl.constexpr, RB: tl.constexpr, RC: tl.constexpr, AOX: tl.constexpr,
    PHASE: tl.constexpr, IS_VC: tl.constexpr, GAUSSIAN: tl.constexpr, ANY_A: tl.constexpr,
    HAS_DECAY_FMT: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_NOISE: tl.constexpr, NOISE_BOUND: tl.constexpr,
    ST_W: tl.constexpr, ST_MIN_EXP: tl.constexpr, ST_MAX_EXP: tl.constexpr, HEADROOM: tl.constexpr,
    G_W: tl.constexpr, STEP_FRAC: tl.constexpr, DECAY_FRAC: tl.constexpr,
    B_THETA: tl.constexpr, B_GRAD: tl.constexpr, B_DECAY: tl.constexpr, B_NOISE: tl.constexpr,
    A_N: tl.constexpr, WINDOW: tl.constexpr, KSR: tl.constexpr, PM: tl.constexpr,
    VC_WORD: tl.constexpr, VC_OFF: tl.constexpr, VC_WIDTH: tl.constexpr,
    SR_WORD: tl.constexpr, SR_OFF: tl.constexpr, SR_WIDTH: tl.constexpr,
    G_WORD: tl.constexpr, G_OFF: tl.constexpr, G_BITS: tl.constexpr, G_LOOKUPS: tl.constexpr,
    IN_PLACE: tl.constexpr, BLOCK: tl.constexpr,
):
    """PHASE 0: row max of |mu| into maxmu; 1: row max of |x| into maxx (noise: generator replayed, not
    committed); 2: round every element on its row's grid, write mantissas and exponents, commit the lanes."""
    pid = tl.program_id(0)
    v = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    vmask = v < V
    chunk = v // L
    lane = v - chunk * L
    wcol = tl.arange(0, WP)[None, :]
    smask = vmask[:, None] & (wcol < W)
    soff = lane[:, None] * W + wcol
    USE_GEN: tl.constexpr = PHASE == 2 or (PHASE == 1 and (ANY_A or (GAUSSIAN and HAS_NOISE)))
    if USE_GEN:
        s0 = tl.load(s0_ptr + soff, mask=smask, other=0)
        s1 = tl.load(s1_ptr + soff, mask=smask, other=0)
        s0, s1 = _jump_start(s0, s1, chunk, jump_ptr, K)
    cyc0 = chunk * per
    MAX_MANT: tl.constexpr = (1 << (ST_W - 1)) - 1
    for c in range(per):
        i = (cyc0 + c) * L + lane
        m = vmask & (i < M)
        if USE_GEN:
            out, t0, t1 = _output_step(s0, s1, RA, RB, RC, AOX)
            s0 = tl.where(m[:, None], t0, s0)
            s1 = tl.where(m[:, None], t1, s1)
        row = i // COLS
        tm = tl.load(tm_ptr + i, mask=m, other=0).to(tl.int64)
        gm = tl.load(gm_ptr + i, mask=m, other=0).to(tl.int64)
        te = tl.load(te_ptr + row, mask=m, other=0).to(tl.int64)
        ge = tl.load(ge_ptr + row, mask=m, other=0).to(tl.int64)
        a_t = te + 2 - ST_W
        a_g = ge + 2 - G_W - STEP_FRAC
        top = tl.maximum(a_t + B_THETA, a_g + B_GRAD)
        if HAS_DECAY_FMT:
            a_d = a_t - DECAY_FRAC
            top = tl.maximum(a_d + B_DECAY, top)
        if NOISE_BOUND:
            top = tl.maximum(top, A_N + B_NOISE)  # the upper clamp 2^30 never binds
        lsb = top + 2 - WINDOW
        mu = _shift(tm, a_t - lsb) + _shift(-(step * gm), a_g - lsb)
        if HAS_DECAY:
            mu = mu + _shift(-(decay * tm), a_d - lsb)
        if PHASE == 0:
            tl.atomic_max(maxmu_ptr + row, tl.abs(mu), mask=m)
        else:
            if IS_VC:
                exp0 = _row_exponent(tl.load(maxmu_ptr + row, mask=m, other=0), lsb, ST_W, ST_MIN_EXP, ST_MAX_EXP,
                                     HEADROOM)
                x = mu
                n_row = exp0 * 0
                if ANY_A:
                    n_row = tl.load(vcn_ptr + (exp0 - ST_MIN_EXP), mask=m, other=0)
                    z = _gauss(out, wcol, gauss_ptr, G_WORD, G_OFF, G_BITS, G_LOOKUPS)
                    x = tl.where(n_row > 0, mu + _shift(n_row * z, A_N - lsb), mu)
            else:
                x = mu
                if GAUSSIAN and HAS_NOISE:
                    z = _gauss(out, wcol, gauss_ptr, G_WORD, G_OFF, G_BITS, G_LOOKUPS)
                    x = mu + _shift(noise * z, A_N - lsb)
            if PHASE == 1:
                tl.atomic_max(maxx_ptr + row, tl.abs(x), mask=m)
            else:
                exp = _row_exponent(tl.load(maxx_ptr + row, mask=m, other=0), lsb, ST_W, ST_MIN_EXP, ST_MAX_EXP,
                                    HEADROOM)
                if IS_VC:
                    exp = tl.maximum(exp, exp0)
                s = exp + 2 - ST_W - lsb
                if IS_VC:
                    KK: tl.constexpr = KSR if KSR > PM + 1 else PM + 1
                    ii, f = _split(x, s, KK, ST_W)
                    u = _field(out, wcol, VC_WORD, VC_OFF, VC_WIDTH)
                    y = (ii << PM) + (((f >> (KK - PM - 1)) + 1) >> 1) + (1 << (PM - 1))
                    low = y & ((1 << PM) - 1)
                    up = low * low
                    high = (1 << PM) - low
                    down = up + high * high
                    out_a = (y >> PM) + (u < up).to(tl.int64) - ((u < down) & (u >= up)).to(tl.int64)
                    fk = f >> (KK - KSR)
                    q = ii + ((fk + _field(out, wcol, SR_WORD, SR_OFF, SR_WIDTH)) >> KSR)
                    var_row = tl.load(vcv_ptr + (exp0 - ST_MIN_EXP), mask=m, other=0)
                    wv = tl.maximum(var_row - _sr_variance(fk, KSR, PM), 0)
                    out_b = q + (u < wv).to(tl.int64) - ((u < 2 * wv) & (u >= wv)).to(tl.int64)
                    res = tl.where(n_row > 0, out_a, out_b)
                else:
                    ii, f = _split(x, s, KSR, ST_W)
                    res = ii + ((f + _field(out, wcol, SR_WORD, SR_OFF, SR_WIDTH)) >> KSR)
                res = tl.minimum(tl.maximum(res, -MAX_MANT), MAX_MANT)
                tl.store(mant_ptr + i, res.to(mant_ptr.dtype.element_ty), mask=m)
                tl.store(exp_ptr + row, exp.to(exp_ptr.dtype.element_ty), mask=m & (i - row * COLS == 0))
    if PHASE == 2:
        if IN_PLACE:
            tl.store(s0_ptr + soff, s0, mask=smask)
            tl.store(s1_ptr + soff, s1, mask=smask)
        else:
            lmask = smask & (chunk == last_chunk)[:, None]
            tl.store(n0_ptr + soff, s0, mask=lmask)
            tl.store(n1_ptr + soff, s1, mask=lmask)


@functools.lru_cache(maxsize=128)
def _bfp_constants(cfg: BfpConfig) -> dict[str, Any]:
    st = cfg.state
    bits = cfg.term_bits
    return dict(
        **_rng_constants(cfg.rng, cfg.rng_words),
        IS_VC=cfg.variant is Variant.VC, GAUSSIAN=cfg.variant.has_gaussian,
        HAS_DECAY_FMT=cfg.decay is not None, NOISE_BOUND="noise" in bits,
        ST_W=st.width, ST_MIN_EXP=st.min_exp, ST_MAX_EXP=st.max_exp, HEADROOM=cfg.headroom,
        G_W=cfg.grad.width, STEP_FRAC=cfg.step.frac, DECAY_FRAC=cfg.decay.frac if cfg.decay is not None else 0,
        B_THETA=bits["theta"], B_GRAD=bits["grad"], B_DECAY=bits.get("decay", 0), B_NOISE=bits.get("noise", 0),
        A_N=cfg.noise_lsb_exp, WINDOW=cfg.window_bits, KSR=cfg.sr_bits, PM=cfg.vc_frac_bits,
        **_field_constants(cfg.fields, cfg.gaussian),
    )


def _vc_tables(regs: BfpRegisters, device: torch.device) -> tuple[Tensor, Tensor]:
    key = ("vc", regs.vc_noise, regs.vc_var, device)
    tab = _cached(key, lambda: torch.tensor([regs.vc_noise, regs.vc_var], dtype=torch.int64, device=device))
    return tab[0], tab[1]


def bfp_update(cfg: BfpConfig, regs: BfpRegisters, s0: Tensor, s1: Tensor, theta: BfpTensor, grad: BfpTensor,
               state_out: BfpTensor, weight_out: BfpTensor | None = None, *, target: int | None = None) -> None:
    """The BFP datapath (``emulator.spec.bfp.update``): one exponent per row of dim 0, same lane rule.

    ``theta``/``grad``: BfpTensors (mantissas in the tensor's shape, exponents shape (rows,)) of integer
    tensors on one device; ``state_out`` receives the new state (may be ``theta``: in place); for -F variants
    ``weight_out`` receives the emitted weight (rounded to nearest into the weight format, per row).
    ``s0``/``s1`` advanced in place. Registers and words are trusted (validated by the engine).
    """
    _check_states(s0, s1, cfg.lanes, cfg.rng_words, "lane")
    shape = tuple(theta.mant.shape)
    rows, cols = block_shape(shape)
    n = rows * cols
    dev = theta.mant.device
    st, wf = cfg.state, cfg.weight
    if n == 0:
        state_out.exp.fill_(st.min_exp)
        if weight_out is not None:
            weight_out.exp.fill_(wf.min_exp)
        return
    tm, gm = theta.mant.reshape(-1), grad.mant.reshape(-1)
    sch = _Schedule(n, cfg.lanes, dev, target)
    in_place = sch.chunks == 1
    n0, n1 = (s0, s1) if in_place else (torch.empty_like(s0), torch.empty_like(s1))
    dummy = _dummy(dev)
    jumps = _jump_tables(cfg.rng, sch.per, sch.jumps, dev)
    gauss = _gauss_table(cfg.gaussian, dev) if cfg.variant.has_gaussian else dummy
    vc = cfg.variant is Variant.VC
    vcn, vcv = _vc_tables(regs, dev) if vc else (dummy, dummy)
    any_a = vc and any(regs.vc_noise)
    noisy = cfg.variant.has_gaussian and bool(regs.noise) and not vc
    maxmu = torch.zeros(rows, dtype=torch.int64, device=dev)
    maxx = torch.zeros(rows, dtype=torch.int64, device=dev) if (any_a or noisy) else maxmu
    # the final pass writes each row's exponent while other elements of the row still read theta's:
    # writing in place needs theta's exponents kept aside (mantissas are read and written by one thread)
    te = theta.exp.clone() if state_out.exp.data_ptr() == theta.exp.data_ptr() else theta.exp
    consts = _bfp_constants(cfg)

    def launch(phase: int) -> None:
        _bfp_kernel[sch.grid](
            tm, te, gm, grad.exp, state_out.mant.view(-1), state_out.exp, maxmu, maxx,
            s0, s1, n0, n1, jumps, gauss, vcn, vcv,
            n, cols, cfg.lanes, sch.virtual, sch.per, sch.chunks - 1, sch.jumps,
            regs.step, regs.decay, regs.noise,
            PHASE=phase, ANY_A=any_a, HAS_DECAY=bool(regs.decay) and cfg.decay is not None, HAS_NOISE=bool(regs.noise),
            IN_PLACE=in_place, BLOCK=sch.block, **consts,
        )

    if not noisy:
        launch(0)  # max |mu| per row (VC: picks the branch; no noise: also max |x|)
    if any_a or noisy:
        launch(1)  # max |x| per row, the generator replayed without committing
    launch(2)
    if not in_place:
        s0.copy_(n0)
        s1.copy_(n1)
    if cfg.variant.has_accumulator and weight_out is not None:
        wm, we = _round_rows(_TORCH_OPS, state_out.mant.reshape(rows, cols).to(torch.int64),
                             state_out.exp.to(torch.int64), st, wf, cfg.headroom)
        weight_out.mant.view(-1).copy_(wm.reshape(-1))
        weight_out.exp.copy_(we)


# ---- stream words (the BFP gradient's SR uniforms) -------------------------------------------


@triton.jit
def _uniform_kernel(u_ptr, s0_ptr, s1_ptr, n0_ptr, n1_ptr, jump_ptr, M, L, V, per, last_chunk, K,
                    RA: tl.constexpr, RB: tl.constexpr, RC: tl.constexpr, AOX: tl.constexpr, BITS: tl.constexpr,
                    IN_PLACE: tl.constexpr, BLOCK: tl.constexpr):
    """u[i] = low BITS bits of word 0 of element i's draw (one-word lanes); advances the lanes."""
    pid = tl.program_id(0)
    v = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    vmask = v < V
    chunk = v // L
    lane = v - chunk * L
    wcol = tl.arange(0, 1)[None, :]
    smask = vmask[:, None] & (wcol < 1)
    soff = lane[:, None] + wcol
    s0 = tl.load(s0_ptr + soff, mask=smask, other=0)
    s1 = tl.load(s1_ptr + soff, mask=smask, other=0)
    s0, s1 = _jump_start(s0, s1, chunk, jump_ptr, K)
    cyc0 = chunk * per
    for c in range(per):
        i = (cyc0 + c) * L + lane
        m = vmask & (i < M)
        out, t0, t1 = _output_step(s0, s1, RA, RB, RC, AOX)
        s0 = tl.where(m[:, None], t0, s0)
        s1 = tl.where(m[:, None], t1, s1)
        tl.store(u_ptr + i, _word(out, wcol, 0) & ((1 << BITS) - 1), mask=m)
    if IN_PLACE:
        tl.store(s0_ptr + soff, s0, mask=smask)
        tl.store(s1_ptr + soff, s1, mask=smask)
    else:
        lmask = smask & (chunk == last_chunk)[:, None]
        tl.store(n0_ptr + soff, s0, mask=lmask)
        tl.store(n1_ptr + soff, s1, mask=lmask)


def stream_uniforms(spec: XoroshiroSpec, g0: Tensor, g1: Tensor, n: int, bits: int, *,
                    target: int | None = None) -> Tensor:
    """``n`` uniforms on [0, 2^bits): the low bits of the one-word lanes' words in element order
    (= ``torch_stream_words(rng, n)[:, 0] & (2^bits - 1)``); ``g0``/``g1`` (L, 1) advanced in place."""
    lanes = g0.shape[0]
    _check_states(g0, g1, lanes, 1, "stream")
    dev = g0.device
    u = torch.empty(n, dtype=torch.int64, device=dev)
    if n == 0:
        return u
    sch = _Schedule(n, lanes, dev, target)
    in_place = sch.chunks == 1
    n0, n1 = (g0, g1) if in_place else (torch.empty_like(g0), torch.empty_like(g1))
    rc = _rng_constants(spec, 1)
    _uniform_kernel[sch.grid](u, g0, g1, n0, n1, _jump_tables(spec, sch.per, sch.jumps, dev), n, lanes,
                              sch.virtual, sch.per, sch.chunks - 1, sch.jumps, RA=rc["RA"], RB=rc["RB"], RC=rc["RC"],
                              AOX=rc["AOX"], BITS=bits, IN_PLACE=in_place, BLOCK=sch.block)
    if not in_place:
        g0.copy_(n0)
        g1.copy_(n1)
    return u


def bfp_group_step(cfg: BfpConfig, regs: BfpRegisters, s0: Tensor, s1: Tensor, g0: Tensor, g1: Tensor,
                   params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], *,
                   rounding: str = "stochastic", sr_bits: int = 32, headroom: int = 0,
                   target: int | None = None) -> None:
    """One optimizer step of a BFP group (``emulator.optim.optimizer.sgld_bfp``'s semantics).

    Per tensor, in list order: the gradient's SR uniforms from the gradient stream (:func:`stream_uniforms`,
    none for nearest), ``BfpFormat.quantize``'s rule on the device (``quantize_core``), :func:`bfp_update`
    writing ``states[i]['mant'/'exp']`` in place (and ``['weight_mant'/'weight_exp']`` for -F variants),
    ``params[i]`` <- the emitted weight's value. NaN gradients must have been rejected by the caller.
    """
    from .torch_bfp_engine import to_float_torch

    _check_states(s0, s1, cfg.lanes, cfg.rng_words, "lane")
    stochastic = rounding == "stochastic"
    k = sr_bits if stochastic else 1
    for p, g, st in zip(params, grads, states, strict=True):
        shape = tuple(g.shape)
        rows, cols = block_shape(shape)
        u = stream_uniforms(cfg.rng, g0, g1, g.numel(), sr_bits, target=target).reshape(rows, cols) \
            if stochastic else None
        x = g.detach().to(torch.float64).reshape(rows, cols)
        gm, ge = quantize_core(_TORCH_OPS, cfg.grad, x, k, u, headroom)
        theta = BfpTensor(st["mant"], st["exp"])
        weight = None
        if cfg.variant.has_accumulator:
            if "weight_mant" not in st:
                st["weight_mant"] = torch.empty_like(st["mant"])
                st["weight_exp"] = torch.empty_like(st["exp"])
            weight = BfpTensor(st["weight_mant"], st["weight_exp"])
        bfp_update(cfg, regs, s0, s1, theta, BfpTensor(gm.reshape(shape), ge), theta, weight, target=target)
        out = weight if weight is not None else theta
        p.detach().copy_(to_float_torch(BfpTensor(out.mant.to(torch.int64), out.exp.to(torch.int64)), cfg.weight,
                                        p.dtype))
