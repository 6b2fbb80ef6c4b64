"""Hardware Gaussian generators built from uniform random bits, with exact output distributions.

Both kinds are a sum of ``terms`` table look-ups indexed by ``index_bits`` fresh
random bits each: ``z = T[u_1] + ... + T[u_terms]``. The tables are derived from
the spec, never typed by hand:

* ``"table"`` (default): inversion. ``T[i] = round(Phi^-1((i + 1/2) / 2^b) * 2^frac / sqrt(terms))``
  for the upper half (round half up), mirrored ``T[2^b - 1 - i] = -T[i]`` so the
  mean is exactly 0. A sum of a few inversion samples gives Gaussian tails
  far beyond a single table and a kurtosis close to 3.
* ``"clt"``: central limit of uniforms, ``T[i] = 2i - (2^b - 1)`` (odd integers,
  ``frac = 0``): adders only, no ROM; reaches only ``sqrt(3 * terms)`` sigma.

The output distribution is computed exactly by integer convolution of the
per-term distribution (:meth:`GaussianSpec.pmf`); moments come as Fractions.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

_KINDS = ("table", "clt")


@dataclass(frozen=True)
class GaussianSpec:
    kind: str = "table"
    terms: int = 4
    index_bits: int = 8
    frac: int = 8

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Gaussian kind must be one of {_KINDS}, got {self.kind!r}")
        for name, lo, hi in (("terms", 1, 16), ("index_bits", 1, 16), ("frac", 0, 24)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
        if self.kind == "clt" and self.frac != 0:
            raise ValueError(f"clt generator has frac 0 (odd-integer table), got frac={self.frac}")
        if self.terms * self.index_bits > 48:
            raise ValueError(
                f"Gaussian uses terms*index_bits = {self.terms * self.index_bits} random bits; at most 48"
            )

    @property
    def bits(self) -> int:
        """Random bits consumed per sample."""
        return self.terms * self.index_bits

    @functools.cached_property
    def table(self) -> np.ndarray:
        """Per-term look-up table (int64, length 2^index_bits, antisymmetric)."""
        n = 1 << self.index_bits
        if self.kind == "clt":
            return 2 * np.arange(n, dtype=np.int64) - (n - 1)
        nd = statistics.NormalDist()
        scale = 2.0**self.frac / math.sqrt(self.terms)
        upper = [math.floor(nd.inv_cdf((i + 0.5) / n) * scale + 0.5) for i in range(n // 2, n)]
        upper_arr = np.array(upper, dtype=np.int64)
        return np.concatenate([-upper_arr[::-1], upper_arr])

    @property
    def max_abs(self) -> int:
        return int(self.terms * np.abs(self.table).max())

    @property
    def width(self) -> int:
        """Signed word width that holds every output z."""
        return self.max_abs.bit_length() + 1

    def sample(self, bits: np.ndarray) -> np.ndarray:
        """z from ``bits`` (uint64 holding the generator's field in its low ``self.bits`` bits).

        Term j reads bits [j*index_bits, (j+1)*index_bits). Pairs of terms are looked
        up together in a derived sum table (a speed-up; same integers).
        """
        per, table = self._lookup
        b = per * self.index_bits
        mask = np.uint64((1 << b) - 1)
        # indices are < 2^63, so a view as intp is the same value without a copy
        z = table[(bits & mask).view(np.intp)]
        for j in range(1, -(-self.terms // per)):
            z = z + table[((bits >> np.uint64(j * b)) & mask).view(np.intp)]
        return z.astype(np.int64, copy=False)  # callers scale z: never let int32 wrap

    @functools.cached_property
    def _lookup(self) -> tuple[int, np.ndarray]:
        """(terms per look-up, table): the sum table of two terms when it stays small."""
        if self.terms % 2 == 0 and self.index_bits <= 8:
            t = self.table
            pair = (t[None, :] + t[:, None]).ravel()  # index = lo + (hi << b)
            return 2, pair.astype(np.int32 if self.max_abs < 1 << 31 else np.int64)
        return 1, self.table

    # ---- exact distribution ------------------------------------------------------

    def pmf(self) -> tuple[int, np.ndarray]:
        """Exact distribution: (z_min, counts) with counts[i] = #{bit patterns : z = z_min + i}.

        The counts sum to 2**bits.
        """
        return _pmf(self)

    def moments(self) -> dict[str, Fraction]:
        """Exact mean, variance (in units of z), and kurtosis E[(z-m)^4]/var^2 (from cumulants)."""
        return _moments(self)

    @property
    def variance(self) -> Fraction:
        """Exact variance of z in real units (z * 2^-frac)."""
        return self.moments()["variance"] / (1 << (2 * self.frac))

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def summary(self) -> dict[str, float]:
        """Variance, kurtosis, tail reach (max |z| / sigma) and tail mass ratios vs N(0, 1)."""
        m = self.moments()
        sigma = math.sqrt(m["variance"])
        zmin, counts = self.pmf()
        z = np.arange(zmin, zmin + len(counts))
        total = float(counts.sum())
        out: dict[str, float] = {
            "random_bits": float(self.bits),
            "variance_real": float(self.variance),
            "kurtosis": float(m["kurtosis"]),
            "tail_reach_sigma": self.max_abs / sigma,
        }
        for k in (2, 3, 4, 5):
            mass = float(counts[np.abs(z) > k * sigma].sum()) / total
            ideal = math.erfc(k / math.sqrt(2.0))
            out[f"tail_ratio_{k}sigma"] = mass / ideal
        return out


@functools.lru_cache(maxsize=64)
def _pmf(spec: GaussianSpec) -> tuple[int, np.ndarray]:
    t = spec.table
    lo = int(t.min())
    one = np.bincount(t - lo).astype(np.int64)
    counts = np.array([1], dtype=np.int64)
    for _ in range(spec.terms):
        counts = np.convolve(counts, one)  # exact in int64: every count <= 2**bits <= 2**48
    return spec.terms * lo, counts


@functools.lru_cache(maxsize=64)
def _moments(spec: GaussianSpec) -> dict[str, Fraction]:
    # From the per-term table's exact cumulants: they add over independent terms, so this is
    # exact without the convolution (fast for any table size).
    t = [int(v) for v in spec.table]
    n = len(t)
    mean1 = Fraction(sum(t), n)
    dev = [v - mean1 for v in t]
    k2 = sum((d * d for d in dev), Fraction(0)) / n
    m4 = sum(((d * d) * (d * d) for d in dev), Fraction(0)) / n
    k4 = m4 - 3 * k2 * k2
    var = spec.terms * k2
    return {"mean": spec.terms * mean1, "variance": var, "kurtosis": 3 + spec.terms * k4 / (var * var)}
