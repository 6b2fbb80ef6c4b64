"""Fixed-point formats and the integer rounding rules of the datapath.

A word is held as its integer value in an ``int64`` array; the real value is
``word * 2**-frac``. Every narrowing in the datapath is one of:

* :func:`round_nearest`: round half up, i.e. ties toward +infinity
  (``(x + 2**(s-1)) >> s``: one adder, then drop bits);
* :func:`round_stochastic`: stochastic rounding with ``k`` random bits: keep the
  top ``k`` of the ``s`` discarded bits (truncating the rest), add a uniform
  ``k``-bit integer, drop the ``k`` bits. Exactly unbiased when ``k == s``;
  otherwise the bias is ``-(x mod 2**(s-k)) / 2**s`` output LSBs (see
  :func:`sr_bias`);

followed by :meth:`FixedFormat.saturate` (clamp, never wrap).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

import numpy as np

MAX_WIDTH = 62  # words and intermediate sums must fit int64 with headroom

# The rounding rules act alike on int64 arrays (engine) and Python ints (exact enumeration).
Word = TypeVar("Word", int, np.ndarray)


def check_int(name: str, value: object) -> int:
    """``value`` as a Python int; TypeError naming it otherwise (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


@dataclass(frozen=True)
class FixedFormat:
    """Two's-complement (or unsigned) fixed point: ``width`` bits, ``frac`` fractional bits.

    Signed range ``[-2**(width-1), 2**(width-1) - 1]`` words, real gap ``2**-frac``.
    ``frac`` may exceed ``width`` or be negative (QPyTorch's FixedPoint(8, 8) is
    ``FixedFormat(8, 8)``: range [-0.5, 0.5)).
    """

    width: int
    frac: int
    signed: bool = True

    def __post_init__(self) -> None:
        w = check_int("width", self.width)
        f = check_int("frac", self.frac)
        object.__setattr__(self, "width", w)  # normalize numpy ints
        object.__setattr__(self, "frac", f)
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool, got {self.signed!r}")
        lo = 2 if self.signed else 1
        if not lo <= w <= MAX_WIDTH:
            raise ValueError(f"width must be in [{lo}, {MAX_WIDTH}], got {w}")
        if not -64 <= f <= 64:
            raise ValueError(f"frac must be in [-64, 64], got {f}")

    def __str__(self) -> str:
        return f"{'Q' if self.signed else 'UQ'}({self.width},{self.frac})"

    @property
    def min_word(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_word(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def lsb(self) -> float:
        return 2.0**-self.frac

    @property
    def min_value(self) -> float:
        return self.min_word * self.lsb

    @property
    def max_value(self) -> float:
        return self.max_word * self.lsb

    def saturate(self, words: np.ndarray) -> np.ndarray:
        """Clamp integer words to the representable range (the hardware's answer to overflow)."""
        return np.clip(words, self.min_word, self.max_word)

    def check_words(self, words: np.ndarray, name: str = "words") -> np.ndarray:
        """Validate an integer word array: dtype integer, every word in range; masked arrays refused."""
        reject_masked(words, name)
        arr = np.asarray(words)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array for {self}, got dtype {arr.dtype}")
        if arr.size:
            lo, hi = arr.min(), arr.max()
            if lo < self.min_word or hi > self.max_word:
                bad = int(lo) if lo < self.min_word else int(hi)
                raise ValueError(
                    f"{name} word {bad} outside {self} range [{self.min_word}, {self.max_word}]"
                )
        return arr.astype(np.int64, copy=False)

    def to_float(self, words: np.ndarray) -> np.ndarray:
        return np.asarray(words, dtype=np.int64).astype(np.float64) * self.lsb

    def quantize(
        self,
        values: np.ndarray,
        rounding: str = "nearest",
        rng: np.random.Generator | None = None,
        sr_bits: int = 32,
    ) -> np.ndarray:
        """Convert floats to saturated words.

        ``rounding='nearest'`` rounds half up (ties toward +inf). ``'stochastic'``
        rounds down with probability ``1 - f_k / 2**k`` where ``f_k`` is the fraction
        truncated to ``sr_bits`` bits, drawing ``sr_bits``-bit integers from ``rng``
        (an explicit, seeded ``numpy.random.Generator``). NaN raises ValueError;
        +-Inf and out-of-range values saturate.
        """
        reject_masked(values, "values")
        x = np.asarray(values, dtype=np.float64)
        if np.isnan(x).any():
            idx = int(np.flatnonzero(np.isnan(x.ravel()))[0])
            raise ValueError(f"cannot quantize NaN (first at flat index {idx}) to {self}")
        with np.errstate(over="ignore"):  # an overflow to +-inf saturates below, as the docstring says
            t = np.ldexp(x, self.frac)  # exact scaling by a power of two, unless it underflows
        # |x * 2^F| < 2^-64: ldexp may flush it to +-0 (or lose bits as a subnormal), but only its sign
        # matters to every rule: replace it by +-2^-64, which rounds alike (floor -1 or 0, and the
        # k <= 52 SR bits below the point all ones or all zeros)
        tiny = (x != 0) & (np.abs(x) < np.ldexp(1.0, -64 - self.frac))
        if tiny.any():
            t = np.where(tiny, np.copysign(2.0**-64, x), t)
        lo, hi = self.min_word, self.max_word
        t = np.clip(t, lo - 1.0, hi + 1.0)  # saturate early: also maps +-inf
        if rounding == "nearest":
            fl = np.floor(t)  # t - fl is exact in float64, so the tie test is exact
            q = fl + (t - fl >= 0.5)
        elif rounding == "stochastic":
            if rng is None or not isinstance(rng, np.random.Generator):
                raise TypeError(
                    f"stochastic rounding needs an explicit numpy.random.Generator, got {rng!r}"
                )
            k = check_int("sr_bits", sr_bits)
            if not 1 <= k <= 52:
                raise ValueError(f"sr_bits must be in [1, 52] for float inputs, got {k}")
            fl = np.floor(t)
            # f_k = floor(t * 2^k) mod 2^k: the scaling and floor are exact, and the difference of
            # the two integers is exact (its value is an integer < 2^52). floor((t - fl) * 2^k)
            # is not: t - fl rounds for negative t whose fraction has bits below 2^-53.
            fk = np.floor(np.ldexp(t, k)) - np.ldexp(fl, k)
            u = rng.integers(0, 1 << k, size=t.shape, dtype=np.int64)
            q = fl + (u < fk)
        else:
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
        # q is within [lo - 1, hi + 1] (< 2^62): convert, then clamp exactly in the integer domain
        return np.clip(q.astype(np.int64), lo, hi)


def reject_masked(values: object, name: str) -> None:
    """TypeError for a numpy masked array: the datapath has no mask, and ignoring it would be silent."""
    if isinstance(values, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy masked array; the datapath has no mask: pass "
                        f"{name}.filled(value) or the unmasked elements")


def round_nearest(x: Word, s: int) -> Word:
    """Drop ``s`` low bits of integer ``x``, rounding half up (ties toward +inf)."""
    if s <= 0:
        return x << -s
    return (x + (1 << (s - 1))) >> s


def sr_split(x: Word, s: int, k: int) -> tuple[Word, Word]:
    """Floor and the ``k``-bit retained fraction of ``x / 2**s`` (``0 <= k <= s``)."""
    if not 0 <= k <= s:
        raise ValueError(f"stochastic rounding needs 0 <= k <= s, got k={k}, s={s}")
    y = x >> (s - k)
    return y >> k, y & ((1 << k) - 1)


def round_stochastic(x: np.ndarray, s: int, k: int, u: np.ndarray | int) -> np.ndarray:
    """Drop ``s`` bits of ``x`` by stochastic rounding with ``k`` random bits ``u`` in [0, 2**k).

    ``k`` must be ``min(sr_bits, s)``; with ``s == 0`` the value is returned unchanged.
    """
    if not 0 <= k <= s:
        raise ValueError(f"stochastic rounding needs 0 <= k <= s, got k={k}, s={s}")
    if s == 0:
        return x
    return ((x >> (s - k)) + u) >> k


def sr_bias(x: int, s: int, k: int) -> Fraction:
    """Exact bias E[SR(x)] - x/2**s, in output LSBs, of :func:`round_stochastic`."""
    k = min(k, s)
    return -Fraction(x % (1 << (s - k)), 1 << s)
