"""Block floating point (BFP): the format, host quantization, and the BFP SGLD update datapath.

A BFP tensor holds signed ``W``-bit mantissas ``m`` and one shared exponent ``E`` per
block; a block is one row of dim 0 (a 1-D tensor's rows are single elements, a scalar
is one block). The value of an element is ``m * 2**(E + 2 - W)``; ``E`` is
``floor(log2(max |block|))`` clamped to the exponent range, so the block maximum has
a mantissa in ``[2**(W-2), 2**(W-1)]`` and saturation is symmetric,
``|m| <= 2**(W-1) - 1`` (QPyTorch's BFP rule). Everything is defined on integers; the
normative text is the "Block floating point" section of ``docs/spec.md``.

The update (:func:`update`) computes, per row, the sum
``theta - step*g - decay*theta (+ noise)`` in a ``window_bits``-wide integer window
anchored at a static bound of the row's terms (each term truncated toward -inf at
the window's LSB), takes the new row exponent from the row maximum of that sum (VC: the
noise-free sum's exponent picks branch and constants, a noisy row overflowing that grid
takes its own exponent; an optional ``headroom`` keeps row maxima off saturation), and
rounds every element to the new row grid with the fixed datapath's SR / VC rules.
One kernel is written against a tiny array namespace and runs on numpy arrays and
on torch int64 tensors (CPU or CUDA) with identical integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .datapath import Field, Variant, _coerce_variant, field_layout, sr_variance
from .formats import FixedFormat, check_int, reject_masked
from .gaussian import GaussianSpec
from .host import UNDERFLOW_POLICIES, HyperParams, _register, shared_registers, sized_registers
from .rng import XoroshiroSpec

MAX_BFP_WIDTH = 24  # mantissas stay exact in float32 and far inside int64 in every intermediate
MAX_EXP_BITS = 8  # E in [-128, 127]: every grid 2**(E + 2 - W) and its square are normal float64


# ---- the format ------------------------------------------------------------------------


class BfpTensor(NamedTuple):
    """Mantissas (int64, the tensor's shape) and one exponent ``E`` per row (int64, shape ``(rows,)``).

    Works for numpy arrays and torch tensors alike; a scalar has ``rows = 1``.
    """

    mant: Any
    exp: Any


def block_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, elements per row): rows of dim 0; a 1-D tensor's rows are single elements; a scalar is one block."""
    if len(shape) == 0:
        return 1, 1
    rows = int(shape[0])
    return rows, int(math.prod(shape[1:]))


@dataclass(frozen=True)
class BfpFormat:
    """Block floating point: ``width``-bit signed mantissas, one ``exp_bits``-bit exponent per row.

    Value ``m * 2**(E + 2 - width)``; ``E`` in ``[-2**(exp_bits-1), 2**(exp_bits-1) - 1]``
    (two's complement); mantissas saturate symmetrically at ``+-(2**(width-1) - 1)``.
    """

    width: int = 8
    exp_bits: int = 8

    def __post_init__(self) -> None:
        w = check_int("width", self.width)
        e = check_int("exp_bits", self.exp_bits)
        object.__setattr__(self, "width", w)
        object.__setattr__(self, "exp_bits", e)
        if not 2 <= w <= MAX_BFP_WIDTH:
            raise ValueError(f"BFP mantissa width must be in [2, {MAX_BFP_WIDTH}], got {w}")
        if not 2 <= e <= MAX_EXP_BITS:
            raise ValueError(f"BFP exp_bits must be in [2, {MAX_EXP_BITS}], got {e}")

    def __str__(self) -> str:
        return f"BFP({self.width},e{self.exp_bits})"

    @property
    def max_mant(self) -> int:
        """Largest mantissa magnitude (symmetric saturation)."""
        return (1 << (self.width - 1)) - 1

    @property
    def min_exp(self) -> int:
        return -(1 << (self.exp_bits - 1))

    @property
    def max_exp(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    def grid_exp(self, e: Any) -> Any:
        """log2 of the grid step D of a row with exponent ``e``: ``e + 2 - width``."""
        return e + 2 - self.width

    def check(self, t: BfpTensor, name: str = "bfp") -> BfpTensor:
        """Validate numpy words: integer dtypes, exponent shape ``(rows,)``, every word in range."""
        if not isinstance(t, tuple) or len(t) != 2:
            raise TypeError(f"{name} must be a BfpTensor(mant, exp), got {type(t).__name__}")
        reject_masked(t[0], f"{name} mantissas")
        reject_masked(t[1], f"{name} exponents")
        mant, exp = np.asarray(t[0]), np.asarray(t[1])
        for part, arr in (("mantissas", mant), ("exponents", exp)):
            if arr.dtype.kind not in "iu":
                raise TypeError(f"{name} {part} must be an integer array for {self}, got dtype {arr.dtype}")
        rows, _ = block_shape(mant.shape)
        if exp.shape != (rows,):
            raise ValueError(f"{name} exponents must have shape ({rows},) for mantissas {mant.shape}, got {exp.shape}")
        _check_range(f"{name} mantissa", mant, -self.max_mant, self.max_mant, str(self))
        _check_range(f"{name} exponent", exp, self.min_exp, self.max_exp, str(self))
        return BfpTensor(mant.astype(np.int64, copy=False), exp.astype(np.int64, copy=False))

    def to_float(self, t: BfpTensor) -> np.ndarray:
        """Exact float64 values (every BFP value is a float64)."""
        mant = np.asarray(t.mant, dtype=np.int64)
        rows, cols = block_shape(mant.shape)
        g = self.grid_exp(np.asarray(t.exp, dtype=np.int64))
        return np.ldexp(mant.reshape(rows, cols).astype(np.float64), g[:, None]).reshape(mant.shape)

    def quantize(
        self,
        values: Any,
        rounding: str = "nearest",
        rng: np.random.Generator | None = None,
        sr_bits: int = 32,
        headroom: int = 0,
    ) -> BfpTensor:
        """Float -> BFP (host side). See docs/spec.md, "Block floating point".

        Per row ``E = clamp(floor(log2 max|x|), min_exp, max_exp)`` from the float bits
        (``min_exp`` for an all-zero row), ``t = x / 2**(E + 2 - W)``; ``'nearest'``
        gives ``floor(t + 1/2)`` (ties toward +inf), ``'stochastic'`` gives
        ``floor(t) + [u < f_k]`` with ``f_k = floor(frac(t) * 2**k)`` and ``u`` drawn from
        ``rng`` (one ``k``-bit integer per element, C order), both computed exactly in
        integers; then symmetric saturation. NaN raises ValueError naming the flat index;
        +-Inf saturates (its row takes ``max_exp``). ``headroom = h > 0`` raises a row's ``E`` by one
        when its maximum exceeds ``(max_mant - h) * D`` (see :func:`check_headroom`).
        """
        h = check_headroom(self, headroom)
        reject_masked(values, "values")
        x = np.asarray(values, dtype=np.float64)
        if np.isnan(x).any():
            idx = int(np.flatnonzero(np.isnan(x.ravel()))[0])
            raise ValueError(f"cannot quantize NaN (first at flat index {idx}) to {self}")
        k, u = 1, None
        if rounding == "stochastic":
            if rng is None or not isinstance(rng, np.random.Generator):
                raise TypeError(f"stochastic rounding needs an explicit numpy.random.Generator, got {rng!r}")
            k = check_quantize_bits(self, sr_bits)
            u = rng.integers(0, 1 << k, size=x.shape, dtype=np.int64)
        elif rounding != "nearest":
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
        rows, cols = block_shape(x.shape)
        uu = None if u is None else u.reshape(rows, cols)
        mant, exp = quantize_core(NUMPY_OPS, self, x.reshape(rows, cols), k, uu, h)
        return BfpTensor(mant.reshape(x.shape), exp)


def check_headroom(fmt: BfpFormat, headroom: int) -> int:
    """Validate a headroom ``h`` in ``[0, 2**(W-2) - 1]`` (one exponent step then always suffices).

    ``h = 0`` is QPyTorch's rule, ``E = floor(log2 max)``: the row maximum can round up to
    ``2**(W-1)`` and saturate (a bias toward zero). ``h = 1`` keeps every SR result, ``h = 2``
    every VC result (``+-1`` correction) inside ``+-max_mant``.
    """
    h = check_int("headroom", headroom)
    hi = (1 << (fmt.width - 2)) - 1
    if not 0 <= h <= hi:
        raise ValueError(f"headroom must be in [0, {hi}] for {fmt}, got {h}")
    return h


def check_quantize_bits(fmt: BfpFormat, sr_bits: int) -> int:
    k = check_int("sr_bits", sr_bits)
    hi = min(52, 62 - fmt.width)
    if not 1 <= k <= hi:
        raise ValueError(f"sr_bits must be in [1, {hi}] for {fmt}, got {k}")
    return k


def _check_range(name: str, arr: np.ndarray, lo: int, hi: int, fmt: str) -> None:
    if arr.size:
        amin, amax = int(arr.min()), int(arr.max())
        if amin < lo or amax > hi:
            bad = amin if amin < lo else amax
            raise ValueError(f"{name} {bad} outside {fmt} range [{lo}, {hi}]")


# ---- array namespaces: one kernel for numpy and torch ----------------------------------------


class _NumpyOps:
    """The handful of array operations the kernels need, on int64 numpy arrays."""

    @staticmethod
    def clamp(x: Any, lo: Any, hi: Any) -> Any:
        return np.minimum(np.maximum(x, lo), hi)

    @staticmethod
    def where(c: Any, a: Any, b: Any) -> Any:
        return np.where(c, a, b)

    @staticmethod
    def as_int(x: Any) -> Any:
        return np.asarray(x).astype(np.int64)

    @staticmethod
    def rowmax(x: Any) -> Any:
        return x.max(axis=1, keepdims=True)

    @staticmethod
    def const(x: Any, like: Any) -> Any:
        return np.asarray(x, dtype=np.int64)

    @staticmethod
    def frexp(x: Any) -> tuple[Any, Any]:
        m, e = np.frexp(x)
        return (m * 2.0**53).astype(np.int64), e.astype(np.int64)  # exact: m has 53 significant bits


class _TorchOps:
    """The same operations on torch int64 tensors (imported lazily: torch is optional)."""

    @staticmethod
    def clamp(x: Any, lo: Any, hi: Any) -> Any:
        import torch

        if not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor):
            return torch.clamp(x, int(lo), int(hi))
        lo = lo if isinstance(lo, torch.Tensor) else torch.tensor(lo, dtype=torch.int64, device=x.device)
        hi = hi if isinstance(hi, torch.Tensor) else torch.tensor(hi, dtype=torch.int64, device=x.device)
        return torch.minimum(torch.maximum(x, lo), hi)

    @staticmethod
    def where(c: Any, a: Any, b: Any) -> Any:
        import torch

        return torch.where(c, a, b)

    @staticmethod
    def as_int(x: Any) -> Any:
        import torch

        return x.to(torch.int64)

    @staticmethod
    def rowmax(x: Any) -> Any:
        return x.amax(dim=1, keepdim=True)

    @staticmethod
    def const(x: Any, like: Any) -> Any:
        import torch

        return torch.as_tensor(x, dtype=torch.int64, device=like.device)

    @staticmethod
    def frexp(x: Any) -> tuple[Any, Any]:
        import torch

        m, e = torch.frexp(x)
        return (m * 2.0**53).to(torch.int64), e.to(torch.int64)


NUMPY_OPS = _NumpyOps()
TORCH_OPS = _TorchOps()


def bit_length(ops: Any, x: Any) -> Any:
    """Bit length of non-negative int64 values (exact; binary search with shifts)."""
    n = ops.as_int(x < 0) * 0  # zeros, right type and shape
    for sh in (32, 16, 8, 4, 2, 1):
        big = x >= (1 << sh)
        n = n + ops.as_int(big) * sh
        x = ops.where(big, x >> sh, x)
    return n + ops.as_int(x > 0)


def shift(ops: Any, v: Any, d: Any) -> Any:
    """``floor(v * 2**d)`` for int64 ``v`` and per-row shift ``d``: left for ``d >= 0``, arithmetic right else.

    Callers guarantee the left shifts stay below 2**62; right shifts are clamped to
    63 bits, which is exact (a further shift gives the same 0 or -1).
    """
    return ops.where(d >= 0, v << ops.clamp(d, 0, 62), v >> ops.clamp(-d, 0, 63))


def row_exponent(ops: Any, x: Any, lsb: Any, fmt: BfpFormat, headroom: int = 0) -> Any:
    """``clamp(floor(log2(max|row| * 2**lsb)), min_exp, max_exp)`` per row (``min_exp`` for an all-zero row),
    plus one if ``headroom > 0`` and ``max|row| * 2**lsb > (max_mant - headroom) * D`` (below ``max_exp``).

    ``x`` is (rows, cols) int64 with ``cols >= 1``, ``lsb`` a (rows, 1) exponent.
    """
    amax = ops.rowmax(abs(x))
    e = lsb + bit_length(ops, amax) - 1
    e = ops.clamp(ops.where(amax > 0, e, fmt.min_exp), fmt.min_exp, fmt.max_exp)
    if headroom:
        lim = fmt.max_mant - headroom
        s = fmt.grid_exp(e) - lsb  # D = 2**s window units
        big = 1 << fmt.width
        over_pos = ((amax - 1) >> ops.clamp(s, 0, 63)) >= lim  # amax > lim * 2**s  (s >= 0)
        over_neg = (ops.clamp(amax, 0, big) << ops.clamp(-s, 0, fmt.width + 1)) > lim  # (s < 0)
        over = ops.where(s >= 0, over_pos, over_neg) & (e < fmt.max_exp)
        e = e + ops.as_int(over)
    return e


def split(ops: Any, x: Any, s: Any, frac_bits: int, width: int) -> tuple[Any, Any]:
    """``(I, f)``: ``I = floor(x / 2**s)`` clamped to ``[-(2**(W-1) + 2), 2**(W-1) + 1]`` and
    ``f = floor(frac(x / 2**s) * 2**frac_bits)`` (zero-extended when ``s < frac_bits``; 0 when ``s <= 0``).

    The clamp never changes a saturated output: every rounding below adds -1..+2 to ``I``
    and saturates at ``+-(2**(W-1) - 1)`` (docs/spec.md).
    """
    big = 1 << (width + 1)
    i_pos = x >> ops.clamp(s, 0, 63)
    i_neg = ops.clamp(x, -big, big) << ops.clamp(-s, 0, width + 1)  # |x| >= 1 saturates once -s > W
    i = ops.where(s >= 0, i_pos, i_neg)
    i = ops.clamp(i, -((1 << (width - 1)) + 2), (1 << (width - 1)) + 1)
    mask = (1 << frac_bits) - 1
    f_hi = (x >> ops.clamp(s - frac_bits, 0, 63)) & mask  # s >= frac_bits
    sl = ops.clamp(s, 0, frac_bits)
    f_lo = (x & ((ops.const(1, x) << sl) - 1)) << (frac_bits - sl)  # 0 <= s < frac_bits: zero-extend
    f = ops.where(s >= frac_bits, f_hi, ops.where(s > 0, f_lo, ops.const(0, x)))
    return i, f


def pow2(ops: Any, e: Any) -> Any:
    """``2.0**e`` (float64) for int64 ``e`` in the normal range, built from its bits: exact on every device."""
    if ops is NUMPY_OPS:
        return ((np.asarray(e, dtype=np.int64) + 1023) << 52).view(np.float64)
    import torch

    return ((e + 1023) << 52).view(torch.float64)


def quantize_core(
    ops: Any, fmt: BfpFormat, x: Any, k: int, u: Any | None, headroom: int = 0
) -> tuple[Any, Any]:
    """Float64 rows (rows, cols) -> (mantissas, exponents); nearest if ``u`` is None, else SR with k-bit ``u``.

    Exact: ``x = M * 2**(e - 53)`` with an integer ``|M| < 2**53`` (from ``frexp``), so
    ``floor(x * 2**(k - g))`` is an integer shift of ``M``. +-Inf is replaced by the
    largest finite float (its row takes ``max_exp``); an element at or above
    ``2**(g + W)`` has its shift capped at that size, which still saturates.
    """
    rows, cols = x.shape
    if cols == 0:
        return ops.as_int(x), ops.const(np.full(rows, fmt.min_exp), x)
    x = x.nan_to_num() if ops is TORCH_OPS else np.nan_to_num(x)  # callers rejected NaN; +-inf -> +-max
    amax = abs(x).amax(dim=1) if ops is TORCH_OPS else abs(x).max(axis=1)
    _, e = ops.frexp(amax)  # floor(log2 a) = e - 1 for a > 0
    exp = ops.clamp(ops.where(amax > 0, e - 1, fmt.min_exp), fmt.min_exp, fmt.max_exp)
    if headroom:  # exact float compare: (max_mant - headroom) * 2**g is a float64
        over = (amax > (fmt.max_mant - headroom) * pow2(ops, exp + 2 - fmt.width)) & (exp < fmt.max_exp)
        exp = exp + ops.as_int(over)
    g = (exp + 2 - fmt.width)[:, None]
    m, ex = ops.frexp(x)
    d = ops.clamp(ex - 53 + k - g, -(1 << 20), fmt.width + k - 53)
    t = shift(ops, m, d)  # floor(x * 2**(k - g)), |t| < 2**(W + k) <= 2**62
    if u is None:  # k == 1: floor(t + 1/2) = (floor(2t) + 1) >> 1
        q = (t + 1) >> 1
    else:
        q = (t >> k) + ops.as_int(u < (t & ((1 << k) - 1)))
    return ops.clamp(q, -fmt.max_mant, fmt.max_mant), exp


# ---- the BFP datapath ----------------------------------------------------------------------


_U = dict(signed=False)


@dataclass(frozen=True)
class BfpConfig:
    """The BFP SGLD datapath: BFP weight/gradient/accumulator formats and the fixed datapath's registers.

    Registers (``step``, ``noise``, ``decay``) are unsigned fixed point in absolute
    units, exactly as in :class:`emulator.spec.datapath.DatapathConfig`; each term is
    aligned to the row's sum window by a per-row shift. ``sr_bits`` is the width
    ``k`` of the SR uniform (a fixed field: the bits a row drops vary per row).
    ``window_bits`` is the width ``B`` of the exact-sum window (docs/spec.md).
    ``headroom`` (default 0, QPyTorch's exponent rule) raises a row's exponent when its
    maximum lies within ``headroom`` grid steps of saturation (:func:`check_headroom`).
    """

    variant: Variant
    weight: BfpFormat = BfpFormat(8, 8)
    grad: BfpFormat = BfpFormat(8, 8)
    acc: BfpFormat | None = None
    step: FixedFormat = FixedFormat(16, 24, **_U)
    noise: FixedFormat = FixedFormat(16, 19, **_U)
    decay: FixedFormat | None = None
    gaussian: GaussianSpec = field(default_factory=GaussianSpec)
    sr_bits: int = 24
    vc_frac_bits: int = 8
    window_bits: int = 48
    headroom: int = 0
    rng: XoroshiroSpec = field(default_factory=XoroshiroSpec)
    rng_words: int = 1
    lanes: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", _coerce_variant(self.variant))
        v = self.variant
        if v is Variant.FP:
            raise ValueError("variant 'fp' is the float64 reference (emulator.analysis.reference), not a datapath")
        for name in ("weight", "grad"):
            if not isinstance(getattr(self, name), BfpFormat):
                raise TypeError(f"{name} must be a BfpFormat, got {getattr(self, name)!r}")
        for name in ("step", "noise"):
            fmt = getattr(self, name)
            if not isinstance(fmt, FixedFormat) or fmt.signed:
                raise ValueError(f"{name} register format must be an unsigned FixedFormat, got {fmt!r}")
        if self.decay is not None and (not isinstance(self.decay, FixedFormat) or self.decay.signed):
            raise ValueError(f"decay register format must be an unsigned FixedFormat or None, got {self.decay!r}")
        if v.has_accumulator:
            if not isinstance(self.acc, BfpFormat):
                raise ValueError(f"variant {v.value!r} needs a BfpFormat accumulator, got acc={self.acc!r}")
            if self.acc.width < self.weight.width:
                raise ValueError(f"accumulator {self.acc} is narrower than weight {self.weight}")
        elif self.acc is not None:
            raise ValueError(f"variant {v.value!r} has no accumulator; got acc={self.acc}")
        if not isinstance(self.gaussian, GaussianSpec):
            raise TypeError(f"gaussian must be a GaussianSpec, got {self.gaussian!r}")
        if not isinstance(self.rng, XoroshiroSpec) or self.rng.word_bits != 64:
            raise ValueError(f"rng must be a 64-bit XoroshiroSpec, got {self.rng!r}")
        for name, lo, hi in (
            ("sr_bits", 1, 48),
            ("vc_frac_bits", 1, 15),
            ("window_bits", self.state.width + 4, 62),
            ("rng_words", 1, 8),
            ("lanes", 1, 1 << 24),
        ):
            val = check_int(name, getattr(self, name))
            object.__setattr__(self, name, val)
            if not lo <= val <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {val}")
        for fmt in (self.state, self.weight):
            check_headroom(fmt, self.headroom)
        for name, bits in self.term_bits.items():
            if bits > 60:
                raise ValueError(f"term {name} needs {bits} magnitude bits; at most 60")
        _ = self.fields  # validates the random budget

    @classmethod
    def paper(
        cls,
        variant: Variant | str,
        *,
        lanes: int = 1024,
        max_lr: float = 0.5,
        weight_decay: float = 5e-4,
        temperature: float = 1e-3,
        dataset_size: int = 50000,
        acc_width: int = 16,
        register_width: int = 16,
        width: int = 8,
        exp_bits: int = 8,
    ) -> BfpConfig:
        """The paper's 8-bit BFP setting, registers sized for the largest hyper-parameters given.

        Weights and gradients ``BfpFormat(8, 8)``; ``lp_f``/``sgd_f`` keep a ``BfpFormat(acc_width, 8)``
        accumulator. ``headroom`` 2 for ``vc`` and 1 for the SR variants (spec section 10.2: no
        row-maximum saturation bias). ``step``, ``decay`` (``lr * weight_decay``; none if
        ``weight_decay == 0``) and ``noise`` (``sqrt(2 lr T / N) / sigma_z``, the largest naive/lp_f
        word and an upper bound of every VC table entry) are unsigned ``register_width``-bit formats
        with the most fractional bits that still hold the value at ``lr = max_lr``: smaller lr only
        loses relative precision, and an lr below half a register LSB underflows (the optimizer
        flushes it to 0). Defaults: the paper's CIFAR runs (lr 0.5, weight decay 5e-4, T = 1e-3,
        N = 50000). ``width``/``exp_bits`` change the weight and gradient format (and the
        accumulator's exponent bits) for other word sizes.
        """
        v = _coerce_variant(variant)
        hp = HyperParams(max_lr, temperature, dataset_size, weight_decay)  # validates the values
        if max_lr <= 0:
            raise ValueError(f"max_lr must be > 0, got {max_lr!r}")
        w = check_int("register_width", register_width)
        if not 2 <= w <= 32:
            raise ValueError(f"register_width must be in [2, 32], got {w}")

        kw: dict[str, Any] = sized_registers(v, hp, width=w)
        return cls(
            v,
            weight=BfpFormat(width, exp_bits),
            grad=BfpFormat(width, exp_bits),
            acc=BfpFormat(acc_width, exp_bits) if v.has_accumulator else None,
            headroom=2 if v is Variant.VC else 1,
            lanes=lanes,
            **kw,
        )

    @property
    def state(self) -> BfpFormat:
        """Format of the updated state: the accumulator for -F variants, else the weight."""
        return self.acc if self.acc is not None else self.weight

    @property
    def fields(self) -> dict[str, Field]:
        return field_layout(self.variant, self.sr_bits, self.vc_frac_bits, self.gaussian.bits, self.rng_words)

    @property
    def noise_lsb_exp(self) -> int:
        """log2 of the noise term's LSB: ``-(noise.frac + gaussian.frac)``."""
        return -(self.noise.frac + self.gaussian.frac)

    @property
    def term_bits(self) -> dict[str, int]:
        """Magnitude bits ``b`` of each configured term (``|term| < 2**b`` in its own LSBs)."""
        st = self.state
        out = {"theta": st.width - 1, "grad": self.step.width + self.grad.width - 1}
        if self.decay is not None:
            out["decay"] = self.decay.width + st.width - 1
        if self.variant.has_gaussian:
            out["noise"] = (self.noise.max_word * self.gaussian.max_abs).bit_length()
        return out


@dataclass(frozen=True)
class BfpRegisters:
    """Per-step registers of the BFP datapath (integer words).

    ``step``, ``decay``, ``noise`` as in :class:`emulator.spec.datapath.StepRegisters`
    (absolute units; ``noise`` for naive / lp_f only). VC: one entry per weight
    exponent ``E`` (index ``E - min_exp``): ``vc_noise[i] > 0`` selects branch A with
    that noise word; otherwise branch B with variance ``vc_var[i]`` in units of
    ``2**-(2 vc_frac_bits)`` LSB^2 of that row's grid.
    """

    step: int
    decay: int = 0
    noise: int = 0
    vc_noise: tuple[int, ...] = ()
    vc_var: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("step", "decay", "noise"):
            val = check_int(f"register {name}", getattr(self, name))
            if val < 0:
                raise ValueError(f"register {name} must be >= 0, got {val}")
            object.__setattr__(self, name, val)
        for name in ("vc_noise", "vc_var"):
            vals = tuple(check_int(f"register {name} entry", x) for x in getattr(self, name))
            if any(x < 0 for x in vals):
                raise ValueError(f"register {name} entries must be >= 0, got min {min(vals)}")
            object.__setattr__(self, name, vals)


def check_registers(cfg: BfpConfig, regs: BfpRegisters) -> None:
    """Raise ValueError/TypeError naming the register if ``regs`` does not fit ``cfg``."""
    if not isinstance(regs, BfpRegisters):
        raise TypeError(f"registers must be BfpRegisters, got {type(regs).__name__}")
    if regs.step > cfg.step.max_word:
        raise ValueError(f"register step={regs.step} exceeds {cfg.step} max {cfg.step.max_word}")
    if regs.decay:
        if cfg.decay is None:
            raise ValueError(f"register decay={regs.decay} but the configuration has no decay register")
        if regs.decay > cfg.decay.max_word:
            raise ValueError(f"register decay={regs.decay} exceeds {cfg.decay} max {cfg.decay.max_word}")
    v = cfg.variant
    if regs.noise and v not in (Variant.NAIVE, Variant.LP_F):
        raise ValueError(f"register noise={regs.noise} is for naive/lp_f; variant is {v.value!r} (VC uses vc_noise)")
    if regs.noise > cfg.noise.max_word:
        raise ValueError(f"register noise={regs.noise} exceeds {cfg.noise} max {cfg.noise.max_word}")
    n = 1 << cfg.weight.exp_bits
    if v is Variant.VC:
        if len(regs.vc_noise) != n or len(regs.vc_var) != n:
            raise ValueError(
                f"VC needs vc_noise and vc_var tables of {n} entries (one per weight exponent), "
                f"got {len(regs.vc_noise)} and {len(regs.vc_var)}"
            )
        if max(regs.vc_noise) > cfg.noise.max_word:
            raise ValueError(f"register vc_noise entry {max(regs.vc_noise)} exceeds {cfg.noise} max")
        vmax = 1 << (2 * cfg.vc_frac_bits - 2)
        if max(regs.vc_var) > vmax:
            raise ValueError(f"register vc_var entry {max(regs.vc_var)} exceeds v0 = {vmax}")
    elif regs.vc_noise or regs.vc_var:
        raise ValueError(f"registers vc_noise/vc_var are VC-only; variant is {v.value!r}")


def bfp_registers(cfg: BfpConfig, hp: HyperParams, *, underflow: str = "raise") -> BfpRegisters:
    """Registers for one step: the fixed host's rules, and for VC one entry per weight exponent.

    ``step``, ``decay`` and (naive, lp_f) ``noise`` are rounded half up from float64 as in
    :func:`emulator.spec.host.step_registers`. VC, for each ``E`` with grid ``D = 2**g``,
    ``g = E + 2 - W``: ``vL = v * 2**(-2g)`` (exact scaling); if ``vL > 1/4`` the entry's
    noise word is ``reg(sqrt(vL - 1/4) * 2**g / sigma_z, noise)`` (branch A); if it is 0
    or ``vL <= 1/4``, branch B with ``vc_var = v0 = 2**(2p-2)`` or
    ``floor(vL * 2**(2p) + 1/2)`` respectively (0 allowed: rows too coarse for ``v``).

    Overflow always raises ValueError naming the register. Underflow (a non-zero ``lr``,
    ``lr*weight_decay`` or naive/lp_f ``noise scale`` that rounds to 0) raises with
    ``underflow='raise'`` (default) and sets the register to 0 with ``underflow='flush'``
    (:func:`bfp_registers_flushed` also names them), the policy of
    :func:`emulator.spec.host.step_registers`. VC table entries are allowed to be 0 and never underflow.
    """
    return bfp_registers_flushed(cfg, hp, underflow=underflow)[0]


def bfp_registers_flushed(
    cfg: BfpConfig, hp: HyperParams, *, underflow: str = "flush"
) -> tuple[BfpRegisters, tuple[str, ...]]:
    """:func:`bfp_registers` and the names of the registers flushed to 0 by underflow.

    Names as :func:`emulator.spec.host.step_registers_flushed`: ``"lr"``, ``"lr*weight_decay"``,
    ``"noise scale"``. With ``underflow='raise'`` the tuple is always empty.
    """
    if not isinstance(cfg, BfpConfig):
        raise TypeError(f"cfg must be a BfpConfig, got {type(cfg).__name__}")
    if not isinstance(hp, HyperParams):
        raise TypeError(f"hp must be HyperParams, got {type(hp).__name__}")
    if underflow not in UNDERFLOW_POLICIES:
        raise ValueError(f"underflow must be one of {UNDERFLOW_POLICIES}, got {underflow!r}")
    fl: list[str] | None = [] if underflow == "flush" else None
    regs = _bfp_registers(cfg, hp, fl)
    return regs, tuple(fl or ())


def _bfp_registers(cfg: BfpConfig, hp: HyperParams, fl: list[str] | None) -> BfpRegisters:
    step, decay, noise = shared_registers(cfg, hp, fl)
    if noise is not None:
        return BfpRegisters(step, decay, noise)
    v = hp.noise_variance if cfg.variant.is_langevin else 0.0
    sigma_z = cfg.gaussian.std
    if cfg.variant is not Variant.VC:
        return BfpRegisters(step, decay)
    p = cfg.vc_frac_bits
    noise_tab: list[int] = []
    var_tab: list[int] = []
    for e in range(cfg.weight.min_exp, cfg.weight.max_exp + 1):
        g = cfg.weight.grid_exp(e)
        v_lsb2 = math.ldexp(v, -2 * g)
        word = 0
        if v_lsb2 > 0.25:
            extra = math.ldexp(math.sqrt(v_lsb2 - 0.25), g)
            word = _register(f"noise scale (E={e})", extra / sigma_z, cfg.noise, allow_zero=True)
            var = 0 if word else 1 << (2 * p - 2)
        else:
            var = math.floor(math.ldexp(v_lsb2, 2 * p) + 0.5)
        noise_tab.append(word)
        var_tab.append(var)
    return BfpRegisters(step, decay, 0, tuple(noise_tab), tuple(var_tab))


class BfpUpdateResult(NamedTuple):
    """New state (the accumulator for -F variants) and the emitted weight, both BFP."""

    state: BfpTensor
    weight: BfpTensor


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def update(cfg: BfpConfig, theta: BfpTensor, grad: BfpTensor, regs: BfpRegisters, words: Any) -> BfpUpdateResult:
    """One BFP SGLD update of every element: the bit-exact kernel (numpy or torch).

    ``theta`` (state words: the accumulator for -F variants) and ``grad`` are
    :class:`BfpTensor` s of the same shape, either numpy int64 arrays or torch int64
    tensors (one device). ``words`` holds each element's generator words in flat C
    order, shape ``(n, rng_words)``: numpy uint64/int64 or a torch int64 tensor (the
    uint64 bits reinterpreted, e.g. ``torch.from_numpy(w.view(np.int64))``). Word
    ranges are trusted here (:class:`BfpEngine` validates); registers are checked.
    """
    check_registers(cfg, regs)
    torch_mode = _is_torch(theta.mant)
    ops = TORCH_OPS if torch_mode else NUMPY_OPS
    parts = (theta.mant, theta.exp, grad.mant, grad.exp, words)
    for name, arr in zip(("theta.mant", "theta.exp", "grad.mant", "grad.exp", "words"), parts, strict=True):
        if _is_torch(arr) != torch_mode:
            raise TypeError(f"{name} must be a {'torch tensor' if torch_mode else 'numpy array'} like theta.mant")
        dt = str(arr.dtype)
        ok = ("torch.int64",) if torch_mode else ("int64", "uint64") if name == "words" else ("int64",)
        if dt not in ok:
            raise TypeError(f"update() needs int64 {name}, got {dt}")
    shape = tuple(theta.mant.shape)
    if tuple(grad.mant.shape) != shape:
        raise ValueError(f"theta shape {shape} != grad shape {tuple(grad.mant.shape)}")
    rows, cols = block_shape(shape)
    n = rows * cols
    if tuple(words.shape) != (n, cfg.rng_words):
        raise ValueError(f"words must have shape ({n}, {cfg.rng_words}), got {tuple(words.shape)}")
    for name, arr in (("theta.exp", theta.exp), ("grad.exp", grad.exp)):
        if tuple(arr.shape) != (rows,):
            raise ValueError(f"{name} must have shape ({rows},), got {tuple(arr.shape)}")
    if not torch_mode:
        words = np.asarray(words).view(np.int64)
    st, wf = cfg.state, cfg.weight
    if cols == 0:
        e = ops.const(np.full(rows, st.min_exp), theta.exp)
        out = BfpTensor(theta.mant.reshape(shape), e)
        w = out if st is wf else BfpTensor(theta.mant.reshape(shape), ops.const(np.full(rows, wf.min_exp), e))
        return BfpUpdateResult(out, w)
    mant, exp = _kernel(ops, cfg, theta.mant.reshape(rows, cols), theta.exp, grad.mant.reshape(rows, cols),
                        grad.exp, regs, words, torch_mode)
    out = BfpTensor(mant.reshape(shape), exp)
    if not cfg.variant.has_accumulator:
        return BfpUpdateResult(out, out)
    wm, we = _round_rows(ops, mant, exp, st, wf, cfg.headroom)
    return BfpUpdateResult(out, BfpTensor(wm.reshape(shape), we))


def _field(words: Any, f: Field) -> Any:
    """Field ``f`` of int64 words: (n,) int64 (the arithmetic shift's sign bits are masked off)."""
    return (words[:, f.word] >> f.offset) & ((1 << f.width) - 1)


def _gauss(cfg: BfpConfig, ops: Any, bits: Any, torch_mode: bool) -> Any:
    """z (int64) from the gauss field: the sum of ``terms`` table look-ups (docs/spec.md section 5)."""
    g = cfg.gaussian
    tab: Any = g.table
    if torch_mode:
        import torch

        tab = torch.as_tensor(tab, device=bits.device)
    mask = (1 << g.index_bits) - 1
    z = tab[(bits >> 0) & mask]
    for j in range(1, g.terms):
        z = z + tab[(bits >> (j * g.index_bits)) & mask]
    return z


def _kernel(
    ops: Any, cfg: BfpConfig, tm: Any, te: Any, gm: Any, ge: Any, regs: BfpRegisters, words: Any, torch_mode: bool
) -> tuple[Any, Any]:
    st = cfg.state
    rows, cols = tm.shape
    te_c = te.reshape(rows, 1)
    ge_c = ge.reshape(rows, 1)
    a_t = st.grid_exp(te_c)  # LSB exponent of each term, per row
    a_g = cfg.grad.grid_exp(ge_c) - cfg.step.frac
    bits = cfg.term_bits
    top = ops.where(a_t + bits["theta"] > a_g + bits["grad"], a_t + bits["theta"], a_g + bits["grad"])
    if cfg.decay is not None:
        a_d = a_t - cfg.decay.frac
        top = ops.where(a_d + bits["decay"] > top, a_d + bits["decay"], top)
    a_n = cfg.noise_lsb_exp
    if "noise" in bits:
        top = ops.clamp(top, a_n + bits["noise"], 1 << 30)
    lsb = top + 2 - cfg.window_bits  # L: the window's LSB exponent; |sum| < 2**(top + 2)
    mu = shift(ops, tm, a_t - lsb) + shift(ops, -(regs.step * gm), a_g - lsb)
    if cfg.decay is not None and regs.decay:
        mu = mu + shift(ops, -(regs.decay * tm), a_d - lsb)
    flat = words.reshape(rows * cols, cfg.rng_words)
    fields = cfg.fields
    k = cfg.sr_bits
    v = cfg.variant

    def col(x: Any) -> Any:
        return x.reshape(rows, cols)

    def noise_term(scale: Any) -> Any:
        z = col(_gauss(cfg, ops, _field(flat, fields["gauss"]), torch_mode))
        return shift(ops, scale * z, a_n - lsb)

    if v is not Variant.VC:
        x = mu + noise_term(regs.noise) if v.has_gaussian and regs.noise else mu
        exp = row_exponent(ops, x, lsb, st, cfg.headroom)
        s = st.grid_exp(exp) - lsb
        i, f = split(ops, x, s, k, st.width)
        out = i + ((f + col(_field(flat, fields["sr"]))) >> k)
        return ops.clamp(out, -st.max_mant, st.max_mant), exp.reshape(rows)
    # VC: D0 from mu selects the branch and constants; a noisy row that overflows D0's range
    # takes the exponent of x instead (never a finer grid than D0)
    exp0 = row_exponent(ops, mu, lsb, st, cfg.headroom)
    idx = exp0 - st.min_exp
    noise_tab = ops.const(np.asarray(regs.vc_noise, dtype=np.int64), mu)
    var_tab = ops.const(np.asarray(regs.vc_var, dtype=np.int64), mu)
    n_row = noise_tab[idx]  # (rows, 1)
    var_row = var_tab[idx]
    branch_a = n_row > 0
    x = ops.where(branch_a, mu + noise_term(n_row), mu)
    exp_x = row_exponent(ops, x, lsb, st, cfg.headroom)
    exp = ops.where(exp_x > exp0, exp_x, exp0)
    s = st.grid_exp(exp) - lsb
    p = cfg.vc_frac_bits
    kk = max(k, p + 1)
    i, f = split(ops, x, s, kk, st.width)
    u = col(_field(flat, fields["vc"]))
    # branch A: y = x + 1/2 at p fractional bits of the row LSB; +1 w.p. l^2/2, -1 w.p. (1-l)^2/2
    y = (i << p) + (((f >> (kk - p - 1)) + 1) >> 1) + (1 << (p - 1))
    low = y & ((1 << p) - 1)
    up = low * low
    high = (1 << p) - low
    down = up + high * high
    out_a = (y >> p) + ops.as_int(u < up) - ops.as_int((u < down) & (u >= up))
    # branch B: SR with k bits, then a symmetric top-up to the row's target variance
    fk = f >> (kk - k)
    q = i + ((fk + col(_field(flat, fields["sr"]))) >> k)
    w = var_row - sr_variance(fk, k, p)
    w = ops.where(w > 0, w, 0 * w)
    out_b = q + ops.as_int(u < w) - ops.as_int((u < 2 * w) & (u >= w))
    out = ops.where(branch_a, out_a, out_b)
    return ops.clamp(out, -st.max_mant, st.max_mant), exp.reshape(rows)


def _round_rows(ops: Any, mant: Any, exp: Any, src: BfpFormat, dst: BfpFormat, headroom: int) -> tuple[Any, Any]:
    """Round BFP rows to ``dst`` to nearest (ties toward +inf), exponent from the row maximum."""
    rows = exp.shape[0]
    a = src.grid_exp(exp.reshape(rows, 1))
    e = row_exponent(ops, mant, a, dst, headroom)
    i, f = split(ops, mant, dst.grid_exp(e) - a, 1, dst.width)
    return ops.clamp(i + f, -dst.max_mant, dst.max_mant), e.reshape(rows)
