"""The lane random source: xoroshiro-class generators with jump-ahead.

Each lane owns one or more xoroshiro generators (an F2-linear state transition
of two ``w``-bit words) followed by an optional cheap non-linear output stage:

* ``aox`` (Hanlon & Felix, Graphcore IPU): ``sx ^ (rotl(sa, 1) | rotl(sa, 2))``
  with ``sx = s0 ^ s1`` and ``sa = s0 & s1``: one AND, OR and XOR per bit;
* ``linear``: ``s0 ^ s1``, the raw F2-linear output (for design studies).

State transition (constants a, b, c; default 55, 14, 36)::

    sx = s0 ^ s1
    s0' = rotl(s0, a) ^ sx ^ (sx << b)
    s1' = rotl(sx, c)

Seeding rule (normative): the base state is two consecutive outputs of
SplitMix64 started at ``seed`` (masked to ``w`` bits; if both words are zero,
which cannot happen for w = 64, ``s0 = 1``). Stream ``j`` starts at
``T^(j * 2^w)`` applied to the base state, and lane ``l`` with ``words``
generators per update owns streams ``j = l * words + k``. For w = 64 the
streams are 2^64 updates long and never overlap, and no stream is in the
all-zero state (the transition is invertible and the base state is non-zero).

``generate`` is the scalar software model; :class:`LaneRng` is the vectorized
engine, tested equal to it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import gf2
from .formats import check_int as _check_int

_SCRAMBLERS = ("aox", "linear")
_U64 = np.uint64


@dataclass(frozen=True)
class XoroshiroSpec:
    """Parameters of one xoroshiro generator: word size, shift/rotate constants, scrambler."""

    word_bits: int = 64
    a: int = 55
    b: int = 14
    c: int = 36
    scrambler: str = "aox"

    def __post_init__(self) -> None:
        w = _check_int("word_bits", self.word_bits)
        if not 3 <= w <= 64:
            raise ValueError(f"word_bits must be in [3, 64], got {w}")
        object.__setattr__(self, "word_bits", w)  # normalize numpy ints: equal specs print and hash alike
        for name in ("a", "b", "c"):
            v = _check_int(name, getattr(self, name))
            object.__setattr__(self, name, v)
            if not 1 <= v < w:
                raise ValueError(f"{name} must be in [1, {w - 1}] for word_bits={w}, got {v}")
        if self.scrambler not in _SCRAMBLERS:
            raise ValueError(f"scrambler must be one of {_SCRAMBLERS}, got {self.scrambler!r}")

    @property
    def mask(self) -> int:
        return (1 << self.word_bits) - 1

    @property
    def state_bits(self) -> int:
        return 2 * self.word_bits

    # ---- scalar software model -------------------------------------------------

    def _rotl(self, x: int, r: int) -> int:
        w = self.word_bits
        return ((x << r) | (x >> (w - r))) & self.mask

    def next_state(self, s0: int, s1: int) -> tuple[int, int]:
        sx = s0 ^ s1
        n0 = self._rotl(s0, self.a) ^ sx ^ ((sx << self.b) & self.mask)
        return n0, self._rotl(sx, self.c)

    def output(self, s0: int, s1: int) -> int:
        sx = s0 ^ s1
        if self.scrambler == "linear":
            return sx
        sa = s0 & s1
        return sx ^ (self._rotl(sa, 1) | self._rotl(sa, 2))

    def generate(self, s0: int, s1: int) -> Iterator[int]:
        """Software model: the output words from state (s0, s1), forever."""
        while True:
            yield self.output(s0, s1)
            s0, s1 = self.next_state(s0, s1)

    # ---- linear algebra over GF(2) -----------------------------------------------

    @functools.cached_property
    def charpoly(self) -> int:
        """Characteristic polynomial of the state transition (via Berlekamp-Massey).

        Raises ValueError if the transition is not cyclic (jump-ahead then needs
        more than one bit sequence, which no shipped configuration requires).
        """
        n = self.state_bits
        s0, s1 = 1, 0
        bits = []
        for _ in range(2 * n):
            bits.append(s0 & 1)
            s0, s1 = self.next_state(s0, s1)
        poly = gf2.berlekamp_massey(bits)
        if poly.bit_length() - 1 != n:
            raise ValueError(
                f"{self}: state transition is not cyclic (minimal polynomial degree "
                f"{poly.bit_length() - 1} < {n}); jump-ahead is not supported"
            )
        return poly

    def is_full_period(self) -> bool:
        """True if every non-zero state lies on one cycle of length 2^(2w) - 1."""
        try:
            p = self.charpoly
        except ValueError:
            return False
        n = self.state_bits
        factors = gf2.FACTORS_2_128_MINUS_1 if n == 128 else gf2.prime_factors((1 << n) - 1)
        return gf2.is_primitive(p, factors)

    def jump_poly(self, n: int) -> int:
        """x^n mod charpoly: applying it to a state advances the state by n steps."""
        return _jump_poly(self, n)

    def jump_state(self, s0: int, s1: int, n: int) -> tuple[int, int]:
        """Scalar jump-ahead by n steps."""
        poly = self.jump_poly(n)
        a0 = a1 = 0
        while poly:
            if poly & 1:
                a0 ^= s0
                a1 ^= s1
            s0, s1 = self.next_state(s0, s1)
            poly >>= 1
        return a0, a1

    def base_state(self, seed: int) -> tuple[int, int]:
        """The seeding rule's base state (two SplitMix64 outputs, masked)."""
        seed = _check_int("seed", seed)
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        z = seed
        words = []
        for _ in range(2):
            z, out = splitmix64(z)
            words.append(out & self.mask)
        s0, s1 = words
        if s0 == 0 and s1 == 0:
            s0 = 1
        return s0, s1

    @property
    def stream_spacing(self) -> int:
        """Distance between consecutive streams (2^w steps)."""
        return 1 << self.word_bits


@functools.lru_cache(maxsize=256)
def _jump_poly(spec: XoroshiroSpec, n: int) -> int:
    if n < 0:
        raise ValueError(f"jump distance must be >= 0, got {n}")
    return gf2.x_pow_mod(n, spec.charpoly)


def splitmix64(z: int) -> tuple[int, int]:
    """One SplitMix64 step: returns (new counter, output)."""
    m = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & m
    x = z
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return z, x ^ (x >> 31)


# ---- vectorized model ------------------------------------------------------------


class _Vec:
    """Vectorized transition and output of one spec over uint64 arrays."""

    def __init__(self, spec: XoroshiroSpec):
        self.spec = spec
        self.w = spec.word_bits
        self.full = self.w == 64
        self.m = _U64(spec.mask)

    def rotl(self, x: np.ndarray, r: int) -> np.ndarray:
        y = (x << _U64(r)) | (x >> _U64(self.w - r))
        if not self.full:
            y &= self.m
        return y

    def _transition(self, s0: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sp = self.spec
        sh = sx << _U64(sp.b)
        if not self.full:
            sh &= self.m
        n0 = self.rotl(s0, sp.a)
        n0 ^= sx
        n0 ^= sh
        return n0, self.rotl(sx, sp.c)

    def _scramble(self, s0: np.ndarray, s1: np.ndarray, sx: np.ndarray) -> np.ndarray:
        if self.spec.scrambler == "linear":
            return sx.copy()
        sa = s0 & s1
        # rotl(sa,1) | rotl(sa,2) == rotl(sa | rotl(sa,1), 1)
        t = self.rotl(sa, 1)
        t |= sa
        out = self.rotl(t, 1)
        out ^= sx
        return out

    def step(self, s0: np.ndarray, s1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._transition(s0, s0 ^ s1)

    def output(self, s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
        return self._scramble(s0, s1, s0 ^ s1)

    def output_step(self, s0: np.ndarray, s1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(output, next s0, next s1) sharing s0 ^ s1 between the scrambler and the transition."""
        sx = s0 ^ s1
        return (self._scramble(s0, s1, sx), *self._transition(s0, sx))

    def apply_poly(self, s0: np.ndarray, s1: np.ndarray, poly: int) -> tuple[np.ndarray, np.ndarray]:
        a0 = np.zeros_like(s0)
        a1 = np.zeros_like(s1)
        while poly:
            if poly & 1:
                a0 ^= s0
                a1 ^= s1
            poly >>= 1
            if poly:
                s0, s1 = self.step(s0, s1)
        return a0, a1

    def jump(self, s0: np.ndarray, s1: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n == 0:
            return s0.copy(), s1.copy()
        return self.apply_poly(s0, s1, self.spec.jump_poly(n))

    def spread(self, s0: np.ndarray, s1: np.ndarray, count: int, spacing: int) -> tuple[np.ndarray, np.ndarray]:
        """States T^(i*spacing) s for i in [0, count), stacked on a new leading axis."""
        c0, c1 = s0[None].copy(), s1[None].copy()
        while c0.shape[0] < count:
            n0, n1 = self.jump(c0, c1, spacing * c0.shape[0])
            c0 = np.concatenate([c0, n0])
            c1 = np.concatenate([c1, n1])
        return c0[:count], c1[:count]


@functools.lru_cache(maxsize=32)
def vec(spec: XoroshiroSpec) -> _Vec:
    return _Vec(spec)


class LaneRng:
    """Per-lane random state: ``words`` generators per lane, stepped together once per update."""

    def __init__(self, spec: XoroshiroSpec, s0: np.ndarray, s1: np.ndarray):
        s0 = np.asarray(s0)
        s1 = np.asarray(s1)
        if s0.dtype != np.uint64 or s1.dtype != np.uint64:
            raise TypeError(f"state arrays must be uint64, got {s0.dtype} and {s1.dtype}")
        if s0.ndim != 2 or s0.shape != s1.shape:
            raise ValueError(f"state arrays must both have shape (lanes, words), got {s0.shape} and {s1.shape}")
        if np.any((s0 | s1) == 0):
            bad = np.argwhere((s0 | s1) == 0)[0]
            raise ValueError(f"generator state of lane {bad[0]} word {bad[1]} is all-zero")
        if spec.word_bits < 64 and np.any(((s0 | s1) >> _U64(spec.word_bits)) != 0):
            raise ValueError(f"state words exceed word_bits={spec.word_bits}")
        self.spec = spec
        self.s0 = s0.copy()
        self.s1 = s1.copy()

    @classmethod
    def seeded(cls, spec: XoroshiroSpec, seed: int, lanes: int, words: int = 1) -> LaneRng:
        lanes = _check_int("lanes", lanes)
        words = _check_int("words", words)
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        if words < 1:
            raise ValueError(f"words must be >= 1, got {words}")
        b0, b1 = spec.base_state(seed)
        v = vec(spec)
        s0, s1 = v.spread(np.array([b0], _U64), np.array([b1], _U64), lanes * words, spec.stream_spacing)
        return cls(spec, s0.reshape(lanes, words), s1.reshape(lanes, words))

    @property
    def lanes(self) -> int:
        return int(self.s0.shape[0])

    @property
    def words(self) -> int:
        return int(self.s0.shape[1])

    def next(self) -> np.ndarray:
        """Output words of every lane for one update, shape (lanes, words); advances all lanes."""
        v = vec(self.spec)
        out = v.output(self.s0, self.s1)
        self.s0, self.s1 = v.step(self.s0, self.s1)
        return out

    def advance(self, steps: np.ndarray | int) -> None:
        """Jump each lane ahead by ``steps`` updates (scalar or one count per lane)."""
        if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
            if steps < 0:
                raise ValueError(f"advance counts must be >= 0, got min {steps}")
            self.s0, self.s1 = vec(self.spec).jump(self.s0, self.s1, int(steps))  # any size, e.g. 2**64
            return
        arr = np.asarray(steps)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"advance counts must be integers, got {steps!r}")
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= 1 << 63:
            raise ValueError("per-lane advance counts must be < 2**63; jump all lanes with a Python int")
        counts = np.broadcast_to(arr.astype(np.int64), (self.lanes,))
        if np.any(counts < 0):
            raise ValueError(f"advance counts must be >= 0, got min {int(counts.min())}")
        v = vec(self.spec)
        for n in np.unique(counts):
            sel = counts == n
            if sel.all():
                self.s0, self.s1 = (v.step(self.s0, self.s1) if n == 1 else v.jump(self.s0, self.s1, int(n)))
            elif n:
                self.s0[sel], self.s1[sel] = v.jump(self.s0[sel], self.s1[sel], int(n))

    def copy(self) -> LaneRng:
        return LaneRng(self.spec, self.s0, self.s1)

    def state_dict(self) -> dict[str, Any]:
        return {"spec": dataclasses.asdict(self.spec), "s0": self.s0.copy(), "s1": self.s1.copy()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LaneRng:
        return cls(XoroshiroSpec(**state["spec"]), state["s0"], state["s1"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LaneRng):
            return NotImplemented
        return (
            self.spec == other.spec
            and np.array_equal(self.s0, other.s0)
            and np.array_equal(self.s1, other.s1)
        )

    __hash__ = None  # type: ignore[assignment]
