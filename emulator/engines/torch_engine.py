"""The datapath on torch tensors (CPU and CUDA), bit-exact to :class:`emulator.engines.numpy_engine.NumpyEngine`.

Words are ``int64`` tensors. The generators' ``uint64`` words are held in ``int64`` with the
same bits: XOR/AND/OR are unchanged, ``<<`` wraps modulo 2^64 (checked by the tests), and the
logical right shift is the arithmetic one masked to ``64 - r`` bits (:func:`_shr`).

Element order, lanes and random streams follow docs/spec.md section 8 exactly as the numpy
engine does. These paths compute the same integers:

* ``path="kernel"`` (default unless ``compile=True``): on CPU the compiled lane kernels of
  :mod:`emulator.engines.cpu_kernels` (numba) on zero-copy numpy views of the tensors; on CUDA the
  Triton lane kernels of :mod:`emulator.engines.gpu_kernels`; elsewhere the fused path below.
  ``path="triton"`` runs the Triton kernels on any device (CPU tensors only under ``TRITON_INTERPRET=1``).

* ``path="reference"``: :func:`torch_stream_words` materializes every element's random words,
  then :func:`torch_update` runs the datapath as plain per-tensor ops (a line-by-line port of
  :func:`emulator.spec.datapath.update`).
* ``path="fused"`` (the default with ``compile=True``): the lanes are jumped to the starts of chunks of cycles (GF(2)
  jump-ahead with byte tables) and all chunk states step together; each step produces one
  cycle's words for every chunk and feeds them straight into the update, so the words are
  never stored. With ``compile=True`` that per-cycle function (generator output, transition,
  gradient conversion for ``step_quantize`` and the whole update) is one ``torch.compile``
  kernel, and so is each jump; tested equal to the reference path on CPU (inductor C++).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..spec.datapath import WORD_BITS, DatapathConfig, Field, StepRegisters, Variant
from ..spec.formats import FixedFormat
from ..spec.gaussian import GaussianSpec
from ..spec.rng import LaneRng, XoroshiroSpec, vec
from . import cpu_kernels
from .numpy_engine import check_engine_state, check_rng_layout, engine_state, transaction

_I64 = torch.int64
_VIRTUAL_LANES = 1 << 16  # chunk states stepped together (CPU): temporaries stay near the caches
_EAGER_BELOW = 1 << 14  # smaller kernel calls run eagerly: no compile for tiny shapes
_VIRTUAL_LANES_CUDA = 1 << 22  # on CUDA, fewer and larger launches (untested here)


def _virtual_lanes(device: torch.device) -> int:
    return _VIRTUAL_LANES_CUDA if device.type == "cuda" else _VIRTUAL_LANES
DeviceLike = str | torch.device

# ---- 64-bit word helpers -------------------------------------------------------------


def u64_to_tensor(a: np.ndarray, device: DeviceLike = "cpu") -> Tensor:
    """uint64 numpy words as an int64 tensor with the same bits."""
    arr = np.ascontiguousarray(a, dtype=np.uint64).view(np.int64).copy()
    return torch.from_numpy(arr).to(device)


def tensor_to_u64(t: Tensor) -> np.ndarray:
    """int64 tensor words as uint64 numpy words with the same bits."""
    if t.dtype != _I64:
        raise TypeError(f"expected an int64 tensor, got {t.dtype}")
    return t.detach().cpu().numpy().view(np.uint64).copy()


def _shr(x: Tensor, r: int) -> Tensor:
    """Logical right shift of 64-bit words held in int64 (0 < r < 64)."""
    return (x >> r) & ((1 << (WORD_BITS - r)) - 1)


def _rotl(x: Tensor, r: int) -> Tensor:
    return (x << r) | _shr(x, WORD_BITS - r)


class _Gen:
    """Transition and output of one 64-bit xoroshiro spec on int64 tensors."""

    def __init__(self, spec: XoroshiroSpec):
        if spec.word_bits != WORD_BITS:
            raise ValueError(f"the torch backend runs 64-bit generators only, got word_bits={spec.word_bits}")
        self.spec = spec

    def _transition(self, s0: Tensor, sx: Tensor) -> tuple[Tensor, Tensor]:
        sp = self.spec
        return _rotl(s0, sp.a) ^ sx ^ (sx << sp.b), _rotl(sx, sp.c)

    def step(self, s0: Tensor, s1: Tensor) -> tuple[Tensor, Tensor]:
        return self._transition(s0, s0 ^ s1)

    def output_step(self, s0: Tensor, s1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(output word, next s0, next s1): the output is read before the transition."""
        sx = s0 ^ s1
        if self.spec.scrambler == "linear":
            out = sx
        else:
            sa = s0 & s1
            out = sx ^ _rotl(sa | _rotl(sa, 1), 1)  # rotl(sa,1) | rotl(sa,2)
        return (out, *self._transition(s0, sx))


# ---- jump-ahead ----------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _jump_tables_np(spec: XoroshiroSpec, n: int) -> np.ndarray:
    """Byte tables of the jump T^n: shape (2, 16 * 256) int64.

    T^n is linear over GF(2): the image of a state is the XOR over its 16 bytes of the image
    of that byte alone (byte i < 8 of s0, byte i - 8 of s1). Columns come from the scalar
    jump polynomial applied to the 128 unit states.
    """
    v = vec(spec)
    one = np.uint64(1) << np.arange(64, dtype=np.uint64)
    zero = np.zeros(64, dtype=np.uint64)
    c0, c1 = v.jump(np.concatenate([one, zero]), np.concatenate([zero, one]), n)
    tab = np.zeros((2, 16, 256), dtype=np.uint64)
    values = np.arange(256)
    for i in range(16):
        for bit in range(8):
            sel = ((values >> bit) & 1).astype(bool)
            tab[0, i, sel] ^= c0[8 * i + bit]
            tab[1, i, sel] ^= c1[8 * i + bit]
    return tab.reshape(2, 16 * 256).view(np.int64)


_TABLES: dict[tuple[XoroshiroSpec, int, torch.device], Tensor] = {}


def _jump_tables(spec: XoroshiroSpec, n: int, device: torch.device) -> Tensor:
    key = (spec, n, device)
    t = _TABLES.get(key)
    if t is None:
        if len(_TABLES) > 256:
            _TABLES.clear()
        t = _TABLES[key] = torch.from_numpy(_jump_tables_np(spec, n).copy()).to(device)
    return t


def _apply_jump_tables(s0: Tensor, s1: Tensor, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
    """The byte-table jump as 32 gathers XORed together (one fused kernel when compiled)."""
    a0 = torch.zeros_like(s0)
    a1 = torch.zeros_like(s1)
    for i in range(16):
        src = s0 if i < 8 else s1
        idx = ((src >> (8 * (i % 8))) & 255) + 256 * i
        a0 = a0 ^ t0[idx]
        a1 = a1 ^ t1[idx]
    return a0, a1


# Dynamo caches compiled graphs per code object: every configuration's kernel shares one, and
# each needs a few graphs (static, then symbolic sizes; contiguous and strided views), so the
# default limit of 8 would silently send later configurations back to (slow) eager Python.
_RECOMPILE_LIMIT = 64


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` with automatic dynamic shapes (see :func:`_kernel`) and a larger recompile limit."""
    compiled = torch.compile(fn, dynamic=None)

    def call(*args: Any) -> Any:
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return compiled(*args)

    return call


@functools.cache
def _compiled_jump() -> Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    return _compiled(_apply_jump_tables)


def _jump(spec: XoroshiroSpec, s0: Tensor, s1: Tensor, n: int, compiled: bool = False) -> tuple[Tensor, Tensor]:
    """States advanced by ``n`` steps (any n >= 0), elementwise."""
    if n == 0:
        return s0.clone(), s1.clone()
    tab = _jump_tables(spec, n, s0.device)
    if compiled and s0.numel() >= _EAGER_BELOW:
        return _compiled_jump()(s0, s1, tab[0], tab[1])
    t0, t1 = tab[0], tab[1]
    a0 = torch.zeros_like(s0)
    a1 = torch.zeros_like(s1)
    for i in range(16):
        src = s0 if i < 8 else s1
        idx = (((src >> (8 * (i % 8))) & 255) + 256 * i).view(-1)
        a0 ^= t0.index_select(0, idx).view(s0.shape)  # index_select: much faster than t[idx] on CPU
        a1 ^= t1.index_select(0, idx).view(s0.shape)
    return a0, a1


def _spread(spec: XoroshiroSpec, s0: Tensor, s1: Tensor, count: int, spacing: int,
            compiled: bool = False) -> tuple[Tensor, Tensor]:
    """States T^(c * spacing) s for c in [0, count), stacked on a new leading axis."""
    c0, c1 = s0[None], s1[None]
    dist = spacing
    while c0.shape[0] < count:
        need = min(c0.shape[0], count - c0.shape[0])
        n0, n1 = _jump(spec, c0[:need], c1[:need], dist, compiled)
        c0 = torch.cat([c0, n0])
        c1 = torch.cat([c1, n1])
        dist *= 2
    return c0, c1


# ---- lane random state ---------------------------------------------------------------


class TorchLaneRng:
    """Per-lane generator states on a device: ``s0``, ``s1`` int64 tensors of shape (lanes, words).

    The torch twin of :class:`emulator.spec.rng.LaneRng` (same seeding, same streams).
    """

    def __init__(self, spec: XoroshiroSpec, s0: Tensor, s1: Tensor):
        if not isinstance(spec, XoroshiroSpec):
            raise TypeError(f"spec must be an XoroshiroSpec, got {spec!r}")
        self.gen = _Gen(spec)
        for name, s in (("s0", s0), ("s1", s1)):
            if not isinstance(s, Tensor) or s.dtype != _I64:
                raise TypeError(f"state {name} must be an int64 tensor, got {getattr(s, 'dtype', type(s).__name__)}")
        if s0.ndim != 2 or s0.shape != s1.shape or s0.device != s1.device:
            raise ValueError(
                f"states must both have shape (lanes, words) on one device, got {tuple(s0.shape)} on {s0.device} "
                f"and {tuple(s1.shape)} on {s1.device}"
            )
        zero = ((s0 | s1) == 0).nonzero()
        if zero.numel():
            raise ValueError(f"generator state of lane {int(zero[0, 0])} word {int(zero[0, 1])} is all-zero")
        self.spec = spec
        self.s0 = s0.clone()
        self.s1 = s1.clone()

    @classmethod
    def seeded(
        cls, spec: XoroshiroSpec, seed: int, lanes: int, words: int = 1, device: DeviceLike = "cpu"
    ) -> TorchLaneRng:
        return cls.from_lane_rng(LaneRng.seeded(spec, seed, lanes, words), device)

    @classmethod
    def from_lane_rng(cls, rng: LaneRng, device: DeviceLike = "cpu") -> TorchLaneRng:
        return cls(rng.spec, u64_to_tensor(rng.s0, device), u64_to_tensor(rng.s1, device))

    def to_lane_rng(self) -> LaneRng:
        return LaneRng(self.spec, tensor_to_u64(self.s0), tensor_to_u64(self.s1))

    @property
    def lanes(self) -> int:
        return int(self.s0.shape[0])

    @property
    def words(self) -> int:
        return int(self.s0.shape[1])

    @property
    def device(self) -> torch.device:
        return self.s0.device

    def copy(self) -> TorchLaneRng:
        return TorchLaneRng(self.spec, self.s0, self.s1)

    def state_dict(self) -> dict[str, Any]:
        """Plain types and CPU int64 tensors only (loads with ``torch.load(weights_only=True)``)."""
        return {"spec": dataclasses.asdict(self.spec), "s0": self.s0.cpu().clone(), "s1": self.s1.cpu().clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: DeviceLike = "cpu") -> TorchLaneRng:
        s0, s1 = state["s0"], state["s1"]
        if isinstance(s0, np.ndarray):  # a LaneRng (numpy engine) state dict
            return cls.from_lane_rng(LaneRng.from_state_dict(state), device)
        return cls(XoroshiroSpec(**state["spec"]), s0.to(device), s1.to(device))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TorchLaneRng):
            return NotImplemented
        return (
            self.spec == other.spec
            and torch.equal(self.s0.cpu(), other.s0.cpu())
            and torch.equal(self.s1.cpu(), other.s1.cpu())
        )

    __hash__ = None  # type: ignore[assignment]


# ---- the cycle driver ----------------------------------------------------------------

States = list[tuple[Tensor, Tensor]]
Select = Callable[[Tensor], Tensor]
Body = Callable[[States, Select, int], States]
_BLOCK_CYCLES = 4  # cycles per body call in the chunked phases: states are read once per 4 elements


def drive_cycles(rngs: Sequence[TorchLaneRng], n: int, body: Body, virtual: int | None = None,
                 compiled: bool = False) -> None:
    """Run ``n`` elements' cycles through ``body``, advancing every generator in ``rngs``.

    ``rngs`` share one lane count (each may have its own word count). A call
    ``body(states, select, k)`` covers ``k`` consecutive cycles of ``rows`` independent chunks:
    per generator it gets states of shape (rows, m, words) and must return them after ``k``
    updates; ``select(x)`` views any flat tensor ``x`` (shape (n, ...)) as (rows, k, m, ...),
    entry (r, c, j) being lane j's element in the c-th of those cycles of chunk r.

    Schedule: while whole cycles remain, jump the lanes to the starts of ``full`` chunks of
    ``per`` cycles (``per`` a power of two, so the jump tables are reused) and step all chunk
    states together; the remainder (fewer than ``per`` cycles) repeats this with a smaller
    ``per``. A last partial cycle steps only the busy lanes ``0 .. m-1``. ``compiled``: each jump
    runs as one ``torch.compile`` kernel (the same gathers and XORs).
    """
    if n <= 0:
        return
    lanes = rngs[0].lanes
    if any(r.lanes != lanes for r in rngs):
        raise ValueError("generators driven together must have the same lane count")
    lane_states: States = [(r.s0, r.s1) for r in rngs]
    base = 0
    target = max(1, (virtual or _virtual_lanes(rngs[0].device)) // lanes)
    while (cycles := (n - base) // lanes) > 0:
        per = 1 << (-(-cycles // target) - 1).bit_length()  # next power of two >= cycles / target
        while per > cycles:
            per //= 2
        full = cycles // per
        starts = [_spread(r.spec, s0, s1, full + 1, per, compiled)
                  for r, (s0, s1) in zip(rngs, lane_states, strict=True)]
        cur: States = [(s0[:full], s1[:full]) for s0, s1 in starts]
        k = min(_BLOCK_CYCLES, per)
        lo, hi = base, base + full * per * lanes
        for b in range(0, per, k):

            def sel(x: Tensor, b: int = b, k: int = k, lo: int = lo, hi: int = hi, per: int = per,
                    full: int = full) -> Tensor:
                return x[lo:hi].view(full, per, lanes, *x.shape[1:])[:, b : b + k]

            cur = body(cur, sel, k)
        lane_states = [(s0[full], s1[full]) for s0, s1 in starts]
        base = hi
    m = n - base
    if m:  # the last, partial cycle
        lo = base

        def sel_last(x: Tensor) -> Tensor:
            return x[lo:].view(1, 1, m, *x.shape[1:])

        new = body([(s0[None, :m], s1[None, :m]) for s0, s1 in lane_states], sel_last, 1)
        lane_states = [(torch.cat([a0[0], s0[m:]]), torch.cat([a1[0], s1[m:]]))
                       for (a0, a1), (s0, s1) in zip(new, lane_states, strict=True)]
    for r, (s0, s1) in zip(rngs, lane_states, strict=True):
        r.s0 = s0.contiguous()
        r.s1 = s1.contiguous()


def torch_stream_words(rng: TorchLaneRng, n: int) -> Tensor:
    """Random words for elements 0..n-1 in element order, shape (n, words) int64; advances ``rng``.

    The torch version of :func:`emulator.engines.numpy_engine.stream_words` (same words, bit for bit):
    element ``i`` gets lane ``i mod L``'s output at cycle ``i div L``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"element count must be an int, got {n!r}")
    if n < 0:
        raise ValueError(f"element count must be >= 0, got {n}")
    buf = torch.empty((int(n), rng.words), dtype=_I64, device=rng.device)
    gen = rng.gen

    def body(cur: States, sel: Select, k: int) -> States:
        (s0, s1), = cur
        view = sel(buf)
        for c in range(k):
            out, s0, s1 = gen.output_step(s0, s1)
            view[:, c].copy_(out)
        return [(s0, s1)]

    drive_cycles([rng], int(n), body)
    return buf


# ---- the datapath --------------------------------------------------------------------


class _Regs(NamedTuple):
    """Register values (Python ints or 0-dim int64 tensors) and the static branch flags."""

    step: Any
    decay: Any
    noise: Any
    vc_var: Any
    has_decay: bool
    has_noise: bool
    vc_noise: bool
    gauss_table: Tensor | None = None  # the Gaussian look-up table (see _gauss_lookup), when noise is on


def _static_regs(cfg: DatapathConfig, regs: StepRegisters, device: torch.device) -> _Regs:
    table = _gauss_lookup(cfg.gaussian, device) if cfg.uses_noise else None
    return _Regs(regs.step, regs.decay, regs.noise, regs.vc_var, bool(regs.decay), bool(regs.noise), regs.vc_noise,
                 table)


def _tensor_regs(cfg: DatapathConfig, regs: StepRegisters, device: torch.device) -> _Regs:
    vals = torch.tensor([regs.step, regs.decay, regs.noise, regs.vc_var], dtype=_I64, device=device)
    table = _gauss_lookup(cfg.gaussian, device) if cfg.uses_noise else None
    return _Regs(vals[0], vals[1], vals[2], vals[3], bool(regs.decay), bool(regs.noise), regs.vc_noise, table)


def _extract(words: Tensor, f: Field) -> Tensor:
    w = words[..., f.word]
    if f.width == WORD_BITS:
        return w
    return (w >> f.offset) & ((1 << f.width) - 1)  # offset + width <= 64: no sign bits enter


def _round_nearest(x: Tensor, s: int) -> Tensor:
    if s <= 0:
        return x << -s
    return (x + (1 << (s - 1))) >> s


_GAUSS: dict[tuple[GaussianSpec, torch.device], Tensor] = {}


def _gauss_terms_per_lookup(spec: GaussianSpec) -> int:
    """Terms looked up together, as in GaussianSpec.sample: pairs (a sum table) when small."""
    return 2 if spec.terms % 2 == 0 and spec.index_bits <= 8 else 1


def _gauss_lookup(spec: GaussianSpec, device: torch.device) -> Tensor:
    key = (spec, device)
    if key not in _GAUSS:
        t = spec.table
        if _gauss_terms_per_lookup(spec) == 2:
            t = (t[None, :] + t[:, None]).ravel()  # index = lo + (hi << b)
        _GAUSS[key] = torch.from_numpy(t.copy()).to(device)
    return _GAUSS[key]


def _gauss(cfg: DatapathConfig, words: Tensor, table: Tensor) -> Tensor:
    g = cfg.fields["gauss"]
    spec = cfg.gaussian
    per = _gauss_terms_per_lookup(spec)
    bits = words[..., g.word] >> g.offset  # term j reads bits [j*b, (j+1)*b): never the sign fill
    b = per * spec.index_bits
    mask = (1 << b) - 1
    def look(i: Tensor) -> Tensor:
        return table.index_select(0, i.reshape(-1)).view(i.shape)

    z = look(bits & mask)
    for j in range(1, -(-spec.terms // per)):
        z = z + look((bits >> (j * b)) & mask)
    return z


def _noise(cfg: DatapathConfig, r: _Regs, words: Tensor) -> Tensor | int:
    if not r.has_noise or r.gauss_table is None:
        return 0
    return (r.noise * _gauss(cfg, words, r.gauss_table)) << (cfg.sum_frac - cfg.noise.frac - cfg.gaussian.frac)


def _sr_variance(fk: Tensor, k: int, pm: int) -> Tensor:
    h = 2 * pm
    fh = fk >> (k - h) if k >= h else fk << (h - k)
    return (fh * ((1 << h) - fh) + (1 << (h - 1))) >> h


def _vc(cfg: DatapathConfig, mu: Tensor, r: _Regs, words: Tensor) -> Tensor:
    f = cfg.fields
    pm = cfg.vc_frac_bits
    s = cfg.drop_bits
    u = _extract(words, f["vc"])
    if r.vc_noise:  # branch A (docs/spec.md section 6)
        x = mu + _noise(cfg, r, words)
        y = _round_nearest(x, s - pm) + (1 << (pm - 1))
        low = y & ((1 << pm) - 1)
        up = low * low
        high = (1 << pm) - low
        down = up + high * high
        step_up = u < up
        step_down = (u < down) ^ step_up
        return (y >> pm) + (step_up.to(_I64) - step_down.to(_I64))
    k = cfg.sr_k  # branch B
    if s == 0:
        q = mu
        vs: Tensor | int = 0
    else:
        y = mu >> (s - k)
        fk = y & ((1 << k) - 1)
        q = (y >> k) + ((fk + _extract(words, f["sr"])) >> k)
        vs = _sr_variance(fk, k, pm)
    w = torch.clamp_min(r.vc_var - vs, 0) if isinstance(vs, Tensor) else r.vc_var  # vc_var >= 0
    up_b = u < w
    down_b = (u < 2 * w) ^ up_b
    return q + (up_b.to(_I64) - down_b.to(_I64))


def _saturate(x: Tensor, fmt: FixedFormat) -> Tensor:
    return torch.clamp(x, fmt.min_word, fmt.max_word)


def _update(cfg: DatapathConfig, theta: Tensor, grad: Tensor, r: _Regs, words: Tensor) -> tuple[Tensor, Tensor]:
    st = cfg.state
    x = cfg.sum_frac
    mu = (theta << (x - st.frac)) - ((r.step * grad) << (x - cfg.step.frac - cfg.grad.frac))
    if r.has_decay and cfg.decay is not None:
        mu = mu - ((r.decay * theta) << (x - cfg.decay.frac - st.frac))
    v = cfg.variant
    if v is Variant.VC:
        out = _vc(cfg, mu, r, words)
    else:
        xs = mu + _noise(cfg, r, words) if v.has_gaussian else mu
        s, k = cfg.drop_bits, cfg.sr_k
        out = ((xs >> (s - k)) + _extract(words, cfg.fields["sr"])) >> k if s else xs
    out = _saturate(out, st)
    if v.has_accumulator:
        return out, _saturate(_round_nearest(out, st.frac - cfg.weight.frac), cfg.weight)
    return out, out


class TorchUpdateResult(NamedTuple):
    """New state words (the accumulator for -F variants) and emitted weight words (int64 tensors)."""

    state: Tensor
    weight: Tensor


def torch_update(
    cfg: DatapathConfig, theta: Tensor, grad: Tensor, regs: StepRegisters, words: Tensor
) -> TorchUpdateResult:
    """The datapath on flat int64 tensors (reference path): port of :func:`emulator.spec.datapath.update`.

    ``words`` holds each element's random words, shape (n, rng_words) int64. Word ranges are
    trusted here (the engine validates them).
    """
    for name, t in (("theta", theta), ("grad", grad), ("words", words)):
        if not isinstance(t, Tensor) or t.dtype != _I64:
            raise TypeError(f"torch_update() needs int64 {name} tensors, got {getattr(t, 'dtype', type(t).__name__)}")
    return TorchUpdateResult(*_update(cfg, theta, grad, _static_regs(cfg, regs, theta.device), words))


# ---- the engine ----------------------------------------------------------------------

_PATHS = ("kernel", "fused", "reference", "triton")
# gradients the CPU kernel reads as numpy views (numba has no float16: half gradients take the fused path)
KERNEL_FLOATS = (torch.float32, torch.float64)
Kernel = Callable[..., tuple[Tensor, Tensor]]


def _make_kernel(cfg: DatapathConfig, flags: tuple[bool, bool, bool], cycles: int) -> Kernel:
    """One body call of the fused path: ``cycles`` generator steps, each feeding the update.

    Writes the new state (and, for -F variants, weight) words into the given views.
    """
    gen = _Gen(cfg.rng)
    has_decay, has_noise, vc_noise = flags
    acc = cfg.variant.has_accumulator

    def kernel(s0: Tensor, s1: Tensor, theta: Tensor, grad: Tensor, state: Tensor, weight: Tensor,
               step: Tensor, decay: Tensor, noise: Tensor, vc_var: Tensor, table: Tensor | None
               ) -> tuple[Tensor, Tensor]:
        r = _Regs(step, decay, noise, vc_var, has_decay, has_noise, vc_noise, table)
        for c in range(cycles):
            out, s0, s1 = gen.output_step(s0, s1)
            new_state, new_weight = _update(cfg, theta[:, c], grad[:, c], r, out)
            state[:, c].copy_(new_state)
            if acc:
                weight[:, c].copy_(new_weight)
        return s0, s1

    return kernel


@functools.lru_cache(maxsize=64)
def _kernel(cfg: DatapathConfig, flags: tuple[bool, bool, bool], cycles: int, compiled: bool) -> Kernel:
    fn = _make_kernel(cfg, flags, cycles)
    if compiled:
        # dynamic=None, not True: with dynamic=True Dynamo traces the configuration's integer
        # constants (rotations, field offsets, fraction bits) as symbolic sizes, and inductor's
        # C++ printer (torch 2.13) writes a mask 2^k - 1 as ``(-1L) + (1 << (ks))`` with a 32-bit
        # ``1``: for k >= 32 the shift wraps (xoroshiro's rotl by 55 lost bits 23..54 of s0).
        # Automatic dynamic makes only the tensor sizes symbolic; the constants stay literal.
        return _compiled(fn)
    return fn


def _make_quantize_kernel(cfg: DatapathConfig, flags: tuple[bool, bool, bool], rounding: str, sr_bits: int,
                          stochastic: bool) -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]:
    """One cycle of :meth:`TorchEngine.step_quantize`: gradient word, then the update (compiled)."""
    gen = _Gen(cfg.rng)
    has_decay, has_noise, vc_noise = flags
    acc = cfg.variant.has_accumulator
    mask = (1 << sr_bits) - 1

    def kernel(s0: Tensor, s1: Tensor, g0: Tensor, g1: Tensor, theta: Tensor, grad: Tensor, state: Tensor,
               weight: Tensor, step: Tensor, decay: Tensor, noise: Tensor, vc_var: Tensor, table: Tensor | None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r = _Regs(step, decay, noise, vc_var, has_decay, has_noise, vc_noise, table)
        u = None
        if stochastic:
            gout, g0, g1 = gen.output_step(g0, g1)
            u = gout[..., 0] & mask
        gw = _quantize_words(grad, cfg.grad, rounding, u, sr_bits)
        out, s0, s1 = gen.output_step(s0, s1)
        new_state, new_weight = _update(cfg, theta, gw, r, out)
        state.copy_(new_state)
        if acc:
            weight.copy_(new_weight)
        return s0, s1, g0, g1

    return kernel


@functools.lru_cache(maxsize=64)
def _quantize_kernel(cfg: DatapathConfig, flags: tuple[bool, bool, bool], rounding: str, sr_bits: int,
                     stochastic: bool) -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]:
    return _compiled(_make_quantize_kernel(cfg, flags, rounding, sr_bits, stochastic))


class TorchEngine:
    """Runs a :class:`DatapathConfig` on int64 torch tensors, bit-exact to ``NumpyEngine``.

    >>> eng = TorchEngine(cfg, seed=1, device="cuda")          # doctest: +SKIP
    >>> state, weight = eng.step(theta_words, grad_words, regs)  # doctest: +SKIP

    ``path``: ``"kernel"`` (default unless ``compile=True``: the compiled numba lane kernels on CPU, the
    Triton lane kernels of :mod:`emulator.engines.gpu_kernels` on CUDA, the fused path elsewhere),
    ``"fused"``, ``"reference"`` or ``"triton"`` (the Triton kernels on any device: on CPU tensors only
    under ``TRITON_INTERPRET=1``, set before triton is imported; the tests use it). ``compile=True``
    (fused path only) runs
    the per-cycle kernel and the jumps as ``torch.compile`` kernels (automatic dynamic shapes,
    see :func:`_kernel`); the first calls compile (tens of seconds per kernel on CPU). Tested
    equal to the reference path and ``NumpyEngine`` on CPU; ``scripts/gpu_check.py`` checks CUDA.
    """

    def __init__(self, cfg: DatapathConfig, seed: int, *, device: DeviceLike = "cpu", path: str | None = None,
                 compile: bool = False, rng: TorchLaneRng | None = None):
        if not isinstance(cfg, DatapathConfig):
            raise TypeError(f"cfg must be a DatapathConfig, got {type(cfg).__name__}")
        if path is None:
            path = "fused" if compile else "kernel"
        if path not in _PATHS:
            raise ValueError(f"path must be one of {_PATHS}, got {path!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        if rng is None:
            rng = TorchLaneRng.seeded(cfg.rng, seed, cfg.lanes, cfg.rng_words, self.device)
        else:
            check_rng_layout(cfg, rng)
        self.rng = rng
        self.path = path
        self.compile = bool(compile)
        if self.compile and path != "fused":
            raise ValueError(f"compile=True needs path='fused', got path={path!r}")

    def _check(self, t: Tensor, fmt: FixedFormat, name: str, check_words: bool) -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.dtype != _I64:
            raise TypeError(f"{name} must be an int64 tensor of {fmt} words, got dtype {t.dtype}")
        if t.device != self.device:
            raise ValueError(f"{name} is on {t.device}, the engine on {self.device}")
        if check_words and t.numel():
            lo, hi = torch.aminmax(t)
            lo_i, hi_i = int(lo), int(hi)
            if lo_i < fmt.min_word or hi_i > fmt.max_word:
                bad = lo_i if lo_i < fmt.min_word else hi_i
                raise ValueError(f"{name} word {bad} outside {fmt} range [{fmt.min_word}, {fmt.max_word}]")
        return t.contiguous().view(-1)

    def step(self, theta: Tensor, grad: Tensor, regs: StepRegisters, *, check_words: bool = True) -> TorchUpdateResult:
        """One SGLD update of every element; returns new state words and emitted weight words.

        ``check_words=False`` skips the range check of ``theta`` and ``grad`` (two passes over the
        data) for callers whose words are in range by construction (the optimizer).
        """
        cfg = self.cfg
        cfg.check_registers(regs)
        if not isinstance(theta, Tensor) or not isinstance(grad, Tensor):
            raise TypeError(f"theta and grad must be torch tensors, got {type(theta).__name__}, {type(grad).__name__}")
        if theta.shape != grad.shape:
            raise ValueError(f"theta shape {tuple(theta.shape)} != grad shape {tuple(grad.shape)}")
        shape = theta.shape
        th = self._check(theta, cfg.state, "theta", check_words)
        g = self._check(grad, cfg.grad, "grad", check_words)
        if self._on_cpu_kernel():
            state = torch.empty_like(th)
            weight = torch.empty_like(th) if cfg.variant.has_accumulator else state
            s0, s1 = self.rng.s0.clone(), self.rng.s1.clone()
            cpu_kernels.fixed_update(cfg, regs, s0.numpy(), s1.numpy(), th.numpy(), g.numpy(), state.numpy(),
                                     weight.numpy())
            self.rng.s0, self.rng.s1 = s0, s1  # only after the kernel finished: a failed call changes nothing
            return TorchUpdateResult(state.view(shape), weight.view(shape))
        with transaction(self.rng):  # a step that raises leaves the lanes as they were
            if self.path == "reference":
                words = torch_stream_words(self.rng, th.numel())
                r = torch_update(cfg, th, g, regs, words)
                return TorchUpdateResult(r.state.view(shape), r.weight.view(shape))
            if self.uses_triton:
                state, weight = self._triton(th, g, regs)
                return TorchUpdateResult(state.view(shape), weight.view(shape))
            state, weight = self._fused(th, g, regs)
        return TorchUpdateResult(state.view(shape), weight.view(shape))

    def _on_cpu_kernel(self) -> bool:
        return self.path == "kernel" and self.device.type == "cpu"

    def step_quantize(self, theta: Tensor, grad: Tensor, regs: StepRegisters, *, grad_rng: TorchLaneRng | None,
                      rounding: str = "stochastic", sr_bits: int = 32, check_words: bool = True) -> TorchUpdateResult:
        """Quantize float ``grad`` to gradient words, then :meth:`step`; the optimizer's step.

        Equal to ``u = torch_stream_words(grad_rng, n)[:, 0] & (2^sr_bits - 1)`` (only for
        stochastic rounding), ``g = torch_quantize(grad, cfg.grad, rounding, u=u, sr_bits=sr_bits)``,
        ``step(theta, g, regs)``; the fused path drives both generators together and never
        stores the gradient words.
        """
        cfg = self.cfg
        cfg.check_registers(regs)
        if not isinstance(grad, Tensor) or not grad.is_floating_point():
            raise TypeError(f"grad must be a floating-point tensor, got {getattr(grad, 'dtype', type(grad).__name__)}")
        if not isinstance(theta, Tensor) or theta.shape != grad.shape:
            raise ValueError(f"theta shape {tuple(getattr(theta, 'shape', ()))} != grad shape {tuple(grad.shape)}")
        if grad.device != self.device:
            raise ValueError(f"grad is on {grad.device}, the engine on {self.device}")
        _check_rounding(rounding, sr_bits)
        stochastic = rounding == "stochastic"
        if stochastic and (grad_rng is None or grad_rng.lanes != cfg.lanes or grad_rng.device != self.device):
            raise ValueError("stochastic gradient rounding needs grad_rng with the engine's lane count and device")
        _check_nan(grad, cfg.grad)
        with transaction(*([self.rng, grad_rng] if grad_rng is not None else [self.rng])):
            return self._step_quantize(theta, grad, regs, grad_rng, rounding, sr_bits, check_words)

    def _step_quantize(self, theta: Tensor, grad: Tensor, regs: StepRegisters, grad_rng: TorchLaneRng | None,
                       rounding: str, sr_bits: int, check_words: bool) -> TorchUpdateResult:
        cfg = self.cfg
        stochastic = rounding == "stochastic"
        if self.path == "reference":
            u = torch_stream_words(grad_rng, grad.numel())[:, 0] & ((1 << sr_bits) - 1) if grad_rng and stochastic \
                else None
            g = _quantize_words(grad.detach().reshape(-1), cfg.grad, rounding, u, sr_bits).view(grad.shape)
            return self.step(theta, g, regs, check_words=check_words)
        if self._on_cpu_kernel() and grad.dtype in KERNEL_FLOATS:
            shape = theta.shape
            th = self._check(theta, cfg.state, "theta", check_words)
            state = torch.empty_like(th)
            weight = torch.empty_like(th) if cfg.variant.has_accumulator else state
            s0, s1 = self.rng.s0.clone(), self.rng.s1.clone()
            g0, g1 = (grad_rng.s0.clone(), grad_rng.s1.clone()) if stochastic and grad_rng else (s0, s1)
            cpu_kernels.fixed_quantize_update(cfg, regs, s0.numpy(), s1.numpy(), g0.numpy(), g1.numpy(), th.numpy(),
                                              grad.detach().contiguous().view(-1).numpy(), state.numpy(),
                                              weight.numpy(), rounding=rounding, sr_bits=sr_bits)
            self.rng.s0, self.rng.s1 = s0, s1  # only after the kernel finished
            if stochastic and grad_rng:
                grad_rng.s0, grad_rng.s1 = g0, g1
            return TorchUpdateResult(state.view(shape), weight.view(shape))
        shape = theta.shape
        th = self._check(theta, cfg.state, "theta", check_words)
        gf = grad.detach().contiguous().view(-1)
        if self.uses_triton:
            state, weight = self._triton(th, gf, regs, grad_rng=grad_rng if stochastic else None, rounding=rounding,
                                         sr_bits=sr_bits)
            return TorchUpdateResult(state.view(shape), weight.view(shape))
        n = th.numel()
        state = torch.empty_like(th)
        weight = torch.empty_like(th) if cfg.variant.has_accumulator else state
        r = _tensor_regs(cfg, regs, self.device)
        gen = self.rng.gen
        mask = (1 << sr_bits) - 1
        rngs = [self.rng, grad_rng] if stochastic and grad_rng is not None else [self.rng]

        flags = (r.has_decay, r.has_noise, r.vc_noise)

        def body(cur: States, sel: Select, k: int) -> States:
            s0, s1 = cur[0]
            g0, g1 = cur[1] if stochastic else (s0, s1)
            tv, gv, sv, wv = sel(th), sel(gf), sel(state), sel(weight)
            if self.compile and s0.shape[0] * s0.shape[1] >= _EAGER_BELOW:
                kernel = _quantize_kernel(cfg, flags, rounding, sr_bits, stochastic)
                for c in range(k):
                    s0, s1, g0, g1 = kernel(s0, s1, g0, g1, tv[:, c], gv[:, c], sv[:, c], wv[:, c], r.step, r.decay,
                                            r.noise, r.vc_var, r.gauss_table)
                return [(s0, s1), (g0, g1)] if stochastic else [(s0, s1)]
            for c in range(k):
                u = None
                if stochastic:
                    gout, g0, g1 = gen.output_step(g0, g1)
                    u = gout[..., 0] & mask
                gw = _quantize_words(gv[:, c], cfg.grad, rounding, u, sr_bits)
                out, s0, s1 = gen.output_step(s0, s1)
                new_state, new_weight = _update(cfg, tv[:, c], gw, r, out)
                sv[:, c].copy_(new_state)
                if weight is not state:
                    wv[:, c].copy_(new_weight)
            return [(s0, s1), (g0, g1)] if stochastic else [(s0, s1)]

        drive_cycles(rngs, n, body, compiled=self.compile)
        return TorchUpdateResult(state.view(shape), weight.view(shape))

    @property
    def uses_triton(self) -> bool:
        """True when steps run the Triton lane kernels (path ``"triton"``, or ``"kernel"`` on CUDA)."""
        return self.path == "triton" or (self.path == "kernel" and self.device.type == "cuda")

    def _triton(self, th: Tensor, g: Tensor, regs: StepRegisters, *, grad_rng: TorchLaneRng | None = None,
                rounding: str | None = None, sr_bits: int = 32) -> tuple[Tensor, Tensor]:
        """:mod:`emulator.engines.gpu_kernels` on flat ``th`` and ``g`` (words, or floats with ``rounding``)."""
        from . import gpu_kernels  # triton is needed only here

        cfg = self.cfg
        state = torch.empty_like(th)
        weight = torch.empty_like(th) if cfg.variant.has_accumulator else state
        rng = self.rng
        rng.s0, rng.s1 = rng.s0.contiguous(), rng.s1.contiguous()
        if rounding is None:
            gpu_kernels.fixed_update(cfg, regs, rng.s0, rng.s1, th, g, state, weight)
            return state, weight
        g0 = g1 = None
        if grad_rng is not None:
            grad_rng.s0, grad_rng.s1 = grad_rng.s0.contiguous(), grad_rng.s1.contiguous()
            g0, g1 = grad_rng.s0, grad_rng.s1
        gpu_kernels.fixed_quantize_update(cfg, regs, rng.s0, rng.s1, g0, g1, th, g, state, weight,
                                          rounding=rounding, sr_bits=sr_bits)
        return state, weight

    def _fused(self, th: Tensor, g: Tensor, regs: StepRegisters) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        n = th.numel()
        state = torch.empty_like(th)
        weight = torch.empty_like(th) if cfg.variant.has_accumulator else state
        r = _tensor_regs(cfg, regs, self.device)
        flags = (r.has_decay, r.has_noise, r.vc_noise)

        def body(cur: States, sel: Select, k: int) -> States:
            (s0, s1), = cur
            views = sel(th), sel(g), sel(state), sel(weight)
            if self.compile and s0.shape[0] * s0.shape[1] >= _EAGER_BELOW:
                # one compiled one-cycle kernel, called per cycle: a quarter of the C++ of a
                # 4-cycle kernel to compile, one kernel for every k
                kernel = _kernel(cfg, flags, 1, True)
                for c in range(k):
                    s0, s1 = kernel(s0, s1, *(v[:, c : c + 1] for v in views), r.step, r.decay, r.noise,
                                    r.vc_var, r.gauss_table)
                return [(s0, s1)]
            kernel = _kernel(cfg, flags, k, False)
            return [kernel(s0, s1, *views, r.step, r.decay, r.noise, r.vc_var, r.gauss_table)]

        drive_cycles([self.rng], n, body, compiled=self.compile)
        return state, weight

    def state_dict(self) -> dict[str, Any]:
        """The lane states, the configuration's identity (``repr``) and the state format version."""
        return engine_state(self.cfg, self.rng.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (also a NumpyEngine's); ValueError for another configuration or format."""
        rng = TorchLaneRng.from_state_dict(check_engine_state(self.cfg, state), self.device)
        check_rng_layout(self.cfg, rng, loaded=True)
        self.rng = rng


# ---- float to words ------------------------------------------------------------------


def _check_nan(x: Tensor, fmt: FixedFormat) -> None:
    nan = torch.isnan(x).reshape(-1)
    if bool(nan.any()):
        idx = int(nan.nonzero()[0, 0])
        raise ValueError(f"cannot quantize NaN (first at flat index {idx}) to {fmt}")


def _check_rounding(rounding: str, sr_bits: int) -> None:
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    if isinstance(sr_bits, bool) or not isinstance(sr_bits, int) or not 1 <= sr_bits <= 52:
        raise ValueError(f"sr_bits must be an int in [1, 52] for float inputs, got {sr_bits!r}")


def _quantize_words(x: Tensor, fmt: FixedFormat, rounding: str, u: Tensor | None, sr_bits: int) -> Tensor:
    """The float64 steps of FixedFormat.quantize (NaN already excluded); ``u`` shaped like ``x``."""
    lo, hi = fmt.min_word, fmt.max_word
    xd = x.to(torch.float64)
    t = xd * 2.0**fmt.frac  # exact power-of-two scaling, unless it underflows
    # as FixedFormat.quantize: |x 2^F| < 2^-64 rounds as +-2^-64 (an underflow to -0 would lose the sign)
    tiny = (xd != 0) & (xd.abs() < 2.0 ** (-64 - fmt.frac))
    t = torch.where(tiny, torch.copysign(torch.full_like(t, 2.0**-64), xd), t)
    t = torch.clamp(t, lo - 1.0, hi + 1.0)
    fl = torch.floor(t)
    if rounding == "nearest" or u is None:
        q = fl + (t - fl >= 0.5).to(torch.float64)
    else:
        fk = torch.floor(t * 2.0**sr_bits) - fl * 2.0**sr_bits  # = floor(t 2^k) mod 2^k, exact (formats.py)
        q = fl + (u.to(torch.float64) < fk).to(torch.float64)
    return torch.clamp(q.to(_I64), lo, hi)


def torch_quantize(x: Tensor, fmt: FixedFormat, rounding: str = "nearest", *, u: Tensor | None = None,
                   sr_bits: int = 32) -> Tensor:
    """:meth:`FixedFormat.quantize` on tensors, with the stochastic uniforms given explicitly.

    Same definition, step for step, in float64 (every step is exact, so CPU and CUDA agree):
    NaN raises ValueError naming the first flat index; ``t = x * 2^frac`` is clamped to
    ``[min_word - 1, max_word + 1]`` (+-Inf saturate); nearest: ``floor(t) + [frac(t) >= 1/2]``;
    stochastic: ``floor(t) + [u < floor(t * 2^k) mod 2^k]`` with ``u`` int64 on ``[0, 2^k)``, one per
    element in C order; then an exact integer clamp. Returns int64 words, shape of ``x``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"torch_quantize needs a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    _check_rounding(rounding, sr_bits)
    _check_nan(x, fmt)
    if rounding == "stochastic":
        if not isinstance(u, Tensor) or u.dtype != _I64 or u.numel() != x.numel():
            raise TypeError(f"stochastic rounding needs u: an int64 tensor of {x.numel()} uniforms, got "
                            f"{getattr(u, 'dtype', type(u).__name__)}")
        return _quantize_words(x.detach(), fmt, rounding, u.reshape(x.shape), sr_bits)
    return _quantize_words(x.detach(), fmt, rounding, None, sr_bits)
