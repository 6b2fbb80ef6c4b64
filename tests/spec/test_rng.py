"""Tests of the lane random source (emulator.spec.rng), the GF(2) helpers (emulator.spec.gf2)
and the engine's chunked word stream (emulator.engines.numpy_engine.stream_words).

Every random choice is explicitly seeded, so every assertion is deterministic.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from scipy import stats

from emulator.engines.numpy_engine import stream_words
from emulator.spec import gf2
from emulator.spec.rng import LaneRng, XoroshiroSpec, splitmix64, vec

U64 = np.uint64
SPEC = XoroshiroSpec()
LINEAR = XoroshiroSpec(scrambler="linear")
MASK64 = (1 << 64) - 1

# word_bits=8 parameter sets that is_full_period() accepts, and one it rejects.
W8_FULL = (2, 5, 5)
W8_NOT_FULL = (1, 1, 1)
# word_bits=16 parameter sets with a full period, and non-full ones with the period
# of state (1, 0) found once by stepping (each is checked again below).
W16_FULL = ((1, 2, 8), (2, 1, 11), (2, 9, 9), (3, 3, 10), (5, 8, 4))
W16_SHORT = {(1, 1, 1): 48, (1, 1, 3): 2730, (1, 1, 5): 1020, (1, 7, 13): 10710, (1, 9, 9): 19530}


def _rand_states(rs: np.random.Generator, spec: XoroshiroSpec, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random non-zero states of ``spec`` as two uint64 arrays."""
    hi = 1 << spec.word_bits
    s0 = rs.integers(0, hi, size=shape, dtype=U64)
    s1 = rs.integers(0, hi, size=shape, dtype=U64)
    s0[(s0 | s1) == 0] = U64(1)
    return s0, s1


def _scalar_steps(spec: XoroshiroSpec, s0: int, s1: int, n: int) -> tuple[int, int]:
    for _ in range(n):
        s0, s1 = spec.next_state(s0, s1)
    return s0, s1


def _take(it, n: int) -> list[int]:
    return list(itertools.islice(it, n))


# ---- 1. known answers: the published xoroshiro128aox + SplitMix64 ---------------------

C_REFERENCE = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    uint64_t seed = strtoull(argv[1], NULL, 0);
    long n = strtol(argv[2], NULL, 0);
    int linear = strcmp(argv[3], "linear") == 0;
    uint64_t s0 = splitmix64(&seed);
    uint64_t s1 = splitmix64(&seed);
    printf("%016llx %016llx\n", (unsigned long long)s0, (unsigned long long)s1);
    for (long i = 0; i < n; i++) {
        uint64_t sx = s0 ^ s1;
        uint64_t sa = s0 & s1;
        uint64_t res = linear ? sx : sx ^ (rotl(sa, 1) | rotl(sa, 2));
        s0 = rotl(s0, 55) ^ sx ^ (sx << 14);
        s1 = rotl(sx, 36);
        printf("%016llx\n", (unsigned long long)res);
    }
    return 0;
}
"""

# Generated once from C_REFERENCE (seed 0): base state, then the first outputs.
SEED0_BASE = (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4)
SEED0_AOX = [
    0x409B06A31CD33782,
    0xF04456E5B1835B7E,
    0x8C61F9AD050FD4DD,
    0x3D4BA4049780717D,
    0x585A243BEA50EEBA,
    0xD6B52F57795D1550,
    0x25C0B89FE5CFB749,
    0xF9FBDBC7EC955F2A,
]
SEED0_LINEAR = [0x8C583653DAA4A85B, 0xFC775516298C8380, 0xEF51F992996FD511]


@pytest.fixture(scope="module")
def c_reference(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found on PATH: cannot build the C xoroshiro128aox reference")
    d = tmp_path_factory.mktemp("xoroshiro_ref")
    src, exe = d / "ref.c", d / "ref"
    src.write_text(C_REFERENCE)
    subprocess.run([gcc, "-O2", "-std=c99", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)

    def run(seed: int, n: int, scrambler: str) -> tuple[tuple[int, int], list[int]]:
        out = subprocess.run([str(exe), str(seed), str(n), scrambler], check=True, capture_output=True, text=True)
        lines = out.stdout.split()
        base = (int(lines[0], 16), int(lines[1], 16))
        words = [int(x, 16) for x in lines[2:]]
        assert len(words) == n
        return base, words

    return run


def test_splitmix64_seed0_known_answer():
    # Published SplitMix64 first output for seed 0 (e.g. Vigna's splitmix64.c).
    z, out = splitmix64(0)
    assert out == 0xE220A8397B1DCDAF
    assert z == 0x9E3779B97F4A7C15
    assert SPEC.base_state(0) == SEED0_BASE


@pytest.mark.parametrize(("spec", "expected"), [(SPEC, SEED0_AOX), (LINEAR, SEED0_LINEAR)])
def test_seed0_pinned_words(spec, expected):
    assert _take(spec.generate(*spec.base_state(0)), len(expected)) == expected
    rng = LaneRng.seeded(spec, 0, lanes=1)
    got = [int(rng.next()[0, 0]) for _ in expected]
    assert got == expected


@pytest.mark.parametrize("scrambler", ["aox", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 42, 0x123456789ABCDEF0, MASK64])
def test_matches_c_reference(c_reference, seed, scrambler):
    n = 1000
    spec = XoroshiroSpec(scrambler=scrambler)
    base, words = c_reference(seed, n, scrambler)
    assert spec.base_state(seed) == base
    assert _take(spec.generate(*base), n) == words
    # lanes=1: the lane owns stream 0, i.e. exactly the base state.
    rng = LaneRng.seeded(spec, seed, lanes=1)
    got = np.array([rng.next()[0, 0] for _ in range(n)], dtype=U64)
    assert np.array_equal(got, np.array(words, dtype=U64))
    # Lane 0 of a wider rng is stream 0 too; stream_words reproduces it.
    rng4 = LaneRng.seeded(spec, seed, lanes=4)
    assert int(rng4.s0[0, 0]) == base[0] and int(rng4.s1[0, 0]) == base[1]
    assert np.array_equal(stream_words(LaneRng.seeded(spec, seed, 1), n)[:, 0], np.array(words, dtype=U64))
    if seed == 0:
        ref = SEED0_AOX if scrambler == "aox" else SEED0_LINEAR
        assert words[: len(ref)] == ref


def test_c_reference_pins_seed0(c_reference):
    base, words = c_reference(0, len(SEED0_AOX), "aox")
    assert base == SEED0_BASE and words == SEED0_AOX


# ---- 2. scalar model == vectorized model -------------------------------------------------

SPECS_FOR_EQUIV = [
    SPEC,
    LINEAR,
    XoroshiroSpec(a=49, b=21, c=28),
    XoroshiroSpec(word_bits=8, a=2, b=5, c=5),
    XoroshiroSpec(word_bits=8, a=2, b=5, c=5, scrambler="linear"),
    XoroshiroSpec(word_bits=16, a=2, b=9, c=9),
    XoroshiroSpec(word_bits=16, a=2, b=9, c=9, scrambler="linear"),
]


@pytest.mark.parametrize("spec", SPECS_FOR_EQUIV, ids=str)
@pytest.mark.parametrize(("seed", "lanes", "words"), [(0, 1, 1), (7, 3, 2), (2**63 + 5, 5, 1), (123, 2, 3)])
def test_scalar_equals_vectorized(spec, seed, lanes, words):
    steps = 200
    rng = LaneRng.seeded(spec, seed, lanes, words)
    start0, start1 = rng.s0.copy(), rng.s1.copy()
    outs = np.stack([rng.next() for _ in range(steps)])  # (steps, lanes, words)
    assert outs.shape == (steps, lanes, words) and outs.dtype == U64
    for lane in range(lanes):
        for k in range(words):
            s0, s1 = int(start0[lane, k]), int(start1[lane, k])
            ref = _take(spec.generate(s0, s1), steps)
            assert [int(x) for x in outs[:, lane, k]] == ref
            assert max(ref) <= spec.mask
            end = _scalar_steps(spec, s0, s1, steps)
            assert (int(rng.s0[lane, k]), int(rng.s1[lane, k])) == end


@pytest.mark.parametrize("spec", SPECS_FOR_EQUIV, ids=str)
def test_scalar_equals_vectorized_random_states(spec):
    rs = np.random.default_rng(20240611)
    s0, s1 = _rand_states(rs, spec, (64,))
    v = vec(spec)
    keep0, keep1 = s0.copy(), s1.copy()
    out = v.output(s0, s1)
    n0, n1 = v.step(s0, s1)
    fused = v.output_step(s0, s1)
    assert np.array_equal(s0, keep0) and np.array_equal(s1, keep1)  # inputs untouched
    assert all(np.array_equal(x, y) for x, y in zip(fused, (out, n0, n1), strict=True))
    for i in range(64):
        a, b = int(s0[i]), int(s1[i])
        assert int(out[i]) == spec.output(a, b)
        assert (int(n0[i]), int(n1[i])) == spec.next_state(a, b)


def test_output_formulas_by_hand():
    # aox on a hand-worked 64-bit state; linear is s0 ^ s1.
    s0, s1 = 0x8000000000000003, 0x8000000000000001
    sx = s0 ^ s1  # 2; sa = s0 & s1 = 0x8000000000000001
    rot1 = 0x0000000000000003  # rotl(sa, 1)
    rot2 = 0x0000000000000006  # rotl(sa, 2)
    assert SPEC.output(s0, s1) == sx ^ (rot1 | rot2) == 0x5
    assert LINEAR.output(s0, s1) == 2
    # next_state with a=55, b=14, c=36 on (1, 0): sx = 1
    assert SPEC.next_state(1, 0) == ((1 << 55) ^ 1 ^ (1 << 14), 1 << 36)


# ---- 3. small-width periods by brute force -----------------------------------------------


def _w8_permutation(spec: XoroshiroSpec) -> np.ndarray:
    """The transition as a permutation table of the 2^16 states, index s0 << 8 | s1."""
    idx = np.arange(1 << 16, dtype=U64)
    n0, n1 = vec(spec).step(idx >> U64(8), idx & U64(0xFF))
    return ((n0 << U64(8)) | n1).astype(np.int64)


def _orbit(perm: np.ndarray, start: int, length: int) -> np.ndarray:
    """start, P(start), P^2(start), ... (``length`` entries) by doubling."""
    seq = np.array([start], dtype=np.int64)
    p = perm
    while seq.size < length:
        seq = np.concatenate([seq, p[seq]])
        p = p[p]
    return seq[:length]


def _is_single_cycle(perm: np.ndarray) -> bool:
    n = perm.size - 1  # non-zero states
    if perm[0] != 0:
        return False
    orbit = _orbit(perm, 1, n + 1)
    return bool(np.unique(orbit[:n]).size == n and np.all(orbit[:n] != 0) and orbit[n] == 1)


def test_w8_full_period_single_cycle_brute_force():
    spec = XoroshiroSpec(8, *W8_FULL)
    assert spec.is_full_period()
    perm = _w8_permutation(spec)
    # The vectorized step agrees with the scalar model on every state.
    scalar = [(lambda t: t[0] << 8 | t[1])(spec.next_state(i >> 8, i & 0xFF)) for i in range(1 << 16)]
    assert np.array_equal(perm, np.array(scalar, dtype=np.int64))
    assert perm[0] == 0  # zero is fixed
    assert np.unique(perm).size == 1 << 16  # a bijection
    # Follow the cycle through state 1 step by step: it visits every non-zero state.
    seen = np.zeros(1 << 16, dtype=bool)
    x, length = 1, 0
    while True:
        seen[x] = True
        x = int(perm[x])
        length += 1
        if x == 1:
            break
    assert length == (1 << 16) - 1
    assert np.all(seen[1:]) and not seen[0]
    assert _is_single_cycle(perm)


def test_w8_not_full_period_has_shorter_cycle():
    spec = XoroshiroSpec(8, *W8_NOT_FULL)
    assert not spec.is_full_period()
    perm = _w8_permutation(spec)
    x, length = 1, 0
    while True:
        x = int(perm[x])
        length += 1
        if x == 1 or length > 1 << 16:
            break
    assert x == 1 and length < (1 << 16) - 1
    assert not _is_single_cycle(perm)


def test_w8_is_full_period_agrees_with_brute_force_for_all_parameters():
    full = []
    for a, b, c in itertools.product(range(1, 8), repeat=3):
        spec = XoroshiroSpec(8, a, b, c)
        brute = _is_single_cycle(_w8_permutation(spec))
        assert spec.is_full_period() == brute, (a, b, c)
        if brute:
            full.append((a, b, c))
    assert W8_FULL in full and W8_NOT_FULL not in full
    assert len(full) == 12


@pytest.mark.parametrize("abc", W16_FULL)
def test_w16_full_period_via_jump(abc):
    spec = XoroshiroSpec(16, *abc)
    assert spec.is_full_period()
    period = (1 << 32) - 1
    factors = gf2.prime_factors(period)
    assert factors == [3, 5, 17, 257, 65537]
    assert spec.charpoly.bit_length() - 1 == 32
    assert gf2.is_primitive(spec.charpoly, factors)
    assert gf2.x_pow_mod(period, spec.charpoly) == 1
    rs = np.random.default_rng(16)
    starts = [(1, 0), (0, 1), *((int(a), int(b)) for a, b in zip(*_rand_states(rs, spec, (3,)), strict=True))]
    for s in starts:
        assert spec.jump_state(*s, period) == s
        for q in factors:
            assert spec.jump_state(*s, period // q) != s
    # No early return within the first 20000 steps (brute force from one state).
    s = (1, 0)
    for _ in range(20000):
        s = spec.next_state(*s)
        assert s != (1, 0)


@pytest.mark.parametrize(("abc", "period"), sorted(W16_SHORT.items()))
def test_w16_not_full_period_brute_force(abc, period):
    spec = XoroshiroSpec(16, *abc)
    assert not spec.is_full_period()
    start = s = (1, 0)
    steps = 0
    while True:
        s = spec.next_state(*s)
        steps += 1
        if s == start:
            break
        assert steps < period
    assert steps == period
    # The brute-force period of (1, 0) is the order of x modulo the charpoly.
    p = spec.charpoly
    assert gf2.x_pow_mod(period, p) == 1
    assert all(gf2.x_pow_mod(period // q, p) != 1 for q in gf2.prime_factors(period))
    assert spec.jump_state(1, 0, period) == start
    assert spec.jump_state(1, 0, (1 << 32) - 1) != start


# ---- 4. the default spec and GF(2) helpers -------------------------------------------------


def test_default_spec_full_period():
    p = SPEC.charpoly
    assert p.bit_length() - 1 == 128
    assert p & 1  # x does not divide p: the transition is invertible
    assert SPEC.is_full_period()
    # primitive also with the exact prime factors of 2^128 - 1 (F0 .. F6)
    assert gf2.is_primitive(p, (3, 5, 17, 257, 641, 65537, 274177, 6700417, 67280421310721))
    assert LINEAR.charpoly == p and LINEAR.is_full_period()
    # Cayley-Hamilton: charpoly(T) annihilates every state.
    rs = np.random.default_rng(4)
    s0, s1 = _rand_states(rs, SPEC, (16,))
    z0, z1 = vec(SPEC).apply_poly(s0, s1, p)
    assert not z0.any() and not z1.any()
    # x^(2^128-1) == 1 and jump by the full period returns to the start.
    assert gf2.x_pow_mod((1 << 128) - 1, p) == 1
    assert SPEC.jump_state(*SEED0_BASE, (1 << 128) - 1) == SEED0_BASE
    assert SPEC.jump_state(*SEED0_BASE, ((1 << 128) - 1) // 3) != SEED0_BASE


def test_factors_of_2_128_minus_1():
    """gf2.FACTORS_2_128_MINUS_1 must be exactly the distinct primes of 2^128 - 1."""
    n = (1 << 128) - 1
    factors = gf2.FACTORS_2_128_MINUS_1
    # 2^128 - 1 = F0 F1 ... F6 (Fermat numbers), with F5 = 641 * 6700417 and
    # F6 = 274177 * 67280421310721; it is square-free.
    expected = (3, 5, 17, 257, 641, 65537, 274177, 6700417, 67280421310721)
    assert math.prod(expected) == n
    not_dividing = [q for q in factors if n % q]
    assert not not_dividing, (
        f"FACTORS_2_128_MINUS_1 lists {not_dividing}, which do not divide 2^128 - 1 "
        "(they are factors of F7 = 2^128 + 1)"
    )
    assert tuple(sorted(factors)) == expected


def test_gf2_primitive_small():
    assert gf2.is_primitive(0b10011, gf2.prime_factors(15))  # x^4 + x + 1
    assert gf2.is_primitive(0b11001, [3, 5])  # x^4 + x^3 + 1
    assert not gf2.is_primitive(0b11111, [3, 5])  # x^4+x^3+x^2+x+1: irreducible, order 5
    assert not gf2.is_primitive(0b10101, [3, 5])  # (x^2 + x + 1)^2
    assert not gf2.is_primitive(0b10010, [3, 5])  # divisible by x
    assert gf2.is_primitive(0b111, [3])  # x^2 + x + 1
    # 2^13 - 1 is prime, so every irreducible degree-13 polynomial is primitive.
    assert gf2.is_primitive(0b10000000011011, gf2.prime_factors((1 << 13) - 1))  # x^13+x^4+x^3+x+1
    assert not gf2.is_primitive((1 << 13) | 1, [8191])  # x^13 + 1 = (x + 1)(...)
    # Exhaustive check at degree 6: primitive <=> x has order exactly 63 (by brute force).
    count = 0
    for p in range(1 << 6, 1 << 7):
        x, order = 1, 0
        while True:
            x = gf2.mulmod(x, 2, p)
            order += 1
            if x == 1 or order > 63:
                break
        brute = x == 1 and order == 63
        assert gf2.is_primitive(p, gf2.prime_factors(63)) == brute, bin(p)
        count += brute
    assert count == 6  # phi(63) / 6 primitive polynomials of degree 6


def test_gf2_arithmetic():
    assert gf2.clmul(0b11, 0b11) == 0b101  # (x+1)^2 = x^2 + 1
    assert gf2.clmul(0, 0b1011) == 0
    assert gf2.clmul(0b1011, 0b111) == gf2.clmul(0b111, 0b1011) == 0b1011 ^ (0b1011 << 1) ^ (0b1011 << 2)
    assert gf2.polymod(0b10011, 0b10011) == 0
    assert gf2.polymod(0b10000, 0b10011) == 0b0011  # x^4 = x + 1 mod x^4+x+1
    assert gf2.polymod(0b101, 0b10011) == 0b101
    rs = np.random.default_rng(5)
    p = 0b10011
    for _ in range(50):
        n = int(rs.integers(0, 200))
        ref = 1
        for _ in range(n):
            ref = gf2.mulmod(ref, 2, p)
        assert gf2.x_pow_mod(n, p) == ref
    assert gf2.x_pow_mod(15, p) == 1 and gf2.x_pow_mod(5, p) != 1
    with pytest.raises(ValueError, match=re.escape("exponent must be >= 0, got -1")):
        gf2.x_pow_mod(-1, p)
    with pytest.raises(ZeroDivisionError, match="polynomial modulus is zero"):
        gf2.polymod(5, 0)
    assert gf2.prime_factors(2**16 - 1) == [3, 5, 17, 257]
    assert gf2.prime_factors(97) == [97]
    assert gf2.prime_factors(2**2 * 3**3 * 7) == [2, 3, 7]


def _lfsr_generates(poly: int, bits: list[int]) -> bool:
    """Does the recurrence with characteristic polynomial ``poly`` produce ``bits``?"""
    deg = poly.bit_length() - 1
    for i in range(deg, len(bits)):
        acc = 0
        for k in range(deg):
            if poly >> k & 1:
                acc ^= bits[i - deg + k]
        if acc != bits[i]:
            return False
    return True


def test_berlekamp_massey():
    # An m-sequence of x^4 + x + 1 (s_{i+4} = s_{i+1} ^ s_i).
    bits = [1, 0, 0, 0]
    while len(bits) < 30:
        bits.append(bits[-3] ^ bits[-4])
    assert gf2.berlekamp_massey(bits) == 0b10011
    assert gf2.berlekamp_massey([0] * 10) == 1
    assert gf2.berlekamp_massey([0, 0, 0, 1]).bit_length() - 1 == 4
    # Random short sequences: the result generates them and no shorter LFSR does.
    rs = np.random.default_rng(6)
    for _ in range(60):
        n = int(rs.integers(1, 11))
        seq = [int(b) for b in rs.integers(0, 2, size=n)]
        poly = gf2.berlekamp_massey(seq)
        deg = poly.bit_length() - 1
        assert deg <= n
        assert _lfsr_generates(poly, seq), (seq, bin(poly))
        for d in range(deg):
            for low in range(1 << d):
                assert not _lfsr_generates((1 << d) | low, seq), (seq, d, low)


# ---- 5. jump-ahead == stepping -------------------------------------------------------------

JUMPS = [0, 1, 2, 127, 128, 1000]


@pytest.mark.parametrize("spec", [SPEC, XoroshiroSpec(16, 2, 9, 9), XoroshiroSpec(8, *W8_FULL)], ids=str)
def test_jump_state_equals_stepping(spec):
    rs = np.random.default_rng(55)
    s0s, s1s = _rand_states(rs, spec, (3,))
    for s0, s1 in zip(s0s.tolist(), s1s.tolist(), strict=True):
        for n in JUMPS:
            assert spec.jump_state(s0, s1, n) == _scalar_steps(spec, s0, s1, n), n
    with pytest.raises(ValueError, match=re.escape("jump distance must be >= 0, got -1")):
        spec.jump_state(1, 0, -1)


def test_jump_composes():
    s = SEED0_BASE
    a, b = 2**64 + 12345, 3 * 2**70 + 7
    assert SPEC.jump_state(*SPEC.jump_state(*s, a), b) == SPEC.jump_state(*s, a + b)


@pytest.mark.parametrize("n", JUMPS)
def test_lanerng_advance_equals_next(n):
    a = LaneRng.seeded(SPEC, 99, lanes=4, words=2)
    b = a.copy()
    a.advance(n)
    for _ in range(n):
        b.next()
    assert a == b
    assert np.array_equal(a.next(), b.next())


def test_lanerng_advance_per_lane():
    counts = [0, 1, 5, 5, 1000, 2, 1]
    rng = LaneRng.seeded(LINEAR, 3, lanes=len(counts), words=2)
    ref0, ref1 = rng.s0.copy(), rng.s1.copy()
    rng.advance(np.array(counts))
    for lane, n in enumerate(counts):
        for k in range(2):
            end = _scalar_steps(LINEAR, int(ref0[lane, k]), int(ref1[lane, k]), n)
            assert (int(rng.s0[lane, k]), int(rng.s1[lane, k])) == end
    # all-equal per-lane counts take the same path as a scalar count
    x, y = LaneRng.seeded(SPEC, 4, 3), LaneRng.seeded(SPEC, 4, 3)
    x.advance([1, 1, 1])
    y.next()
    assert x == y
    x.advance([0, 0, 0])
    assert x == y
    with pytest.raises(ValueError, match=re.escape("advance counts must be >= 0, got min -1")):
        x.advance([1, -1, 0])
    assert x == y  # nothing moved


# ---- 6. seeding rule -----------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "lanes", "words"), [(0, 3, 2), (2**64 - 1, 5, 1), (77, 2, 3)])
def test_seeding_rule(seed, lanes, words):
    rng = LaneRng.seeded(SPEC, seed, lanes, words)
    assert rng.s0.shape == rng.s1.shape == (lanes, words)
    assert (rng.lanes, rng.words) == (lanes, words)
    base = SPEC.base_state(seed)
    states = set()
    for lane in range(lanes):
        for k in range(words):
            expect = SPEC.jump_state(*base, (lane * words + k) * 2**64)
            got = (int(rng.s0[lane, k]), int(rng.s1[lane, k]))
            assert got == expect, (lane, k)
            assert got != (0, 0)
            states.add(got)
    assert len(states) == lanes * words


def test_lanes_do_not_overlap():
    rng = LaneRng.seeded(SPEC, 2024, lanes=2)
    out = np.stack([rng.next()[:, 0] for _ in range(10_000)])  # (10000, 2)
    lane0, lane1 = out[:, 0], out[:, 1]
    win0 = np.lib.stride_tricks.sliding_window_view(lane0, 4)
    win1 = np.lib.stride_tricks.sliding_window_view(lane1, 4)
    assert not np.any(np.all(win0 == lane1[:4], axis=1))
    assert not np.any(np.all(win1 == lane0[:4], axis=1))
    # Lane 1 is lane 0 jumped by exactly 2^64.
    start = LaneRng.seeded(SPEC, 2024, lanes=2)
    l0 = (int(start.s0[0, 0]), int(start.s1[0, 0]))
    l1 = (int(start.s0[1, 0]), int(start.s1[1, 0]))
    assert SPEC.jump_state(*l0, 2**64) == l1
    j0, j1 = vec(SPEC).jump(start.s0[:1], start.s1[:1], 2**64)
    assert np.array_equal(j0[0], start.s0[1]) and np.array_equal(j1[0], start.s1[1])


def test_seed_masking_and_zero_fallback():
    # Seed 127 makes both SplitMix64 outputs == 0 mod 2^3; seed 3378 mod 2^8.
    for w, seed in ((3, 127), (8, 3378)):
        z, a = splitmix64(seed)
        _, b = splitmix64(z)
        assert a & ((1 << w) - 1) == 0 and b & ((1 << w) - 1) == 0
        assert XoroshiroSpec(w, 1, 1, 1).base_state(seed) == (1, 0)
    spec = XoroshiroSpec(8, *W8_FULL)
    z, a = splitmix64(5)
    _, b = splitmix64(z)
    assert spec.base_state(5) == (a & 0xFF, b & 0xFF)
    rng = LaneRng.seeded(spec, 3378, lanes=4)
    assert (int(rng.s0[0, 0]), int(rng.s1[0, 0])) == (1, 0)
    for lane in range(4):
        assert (int(rng.s0[lane, 0]), int(rng.s1[lane, 0])) == spec.jump_state(1, 0, lane * 256)


# ---- 7. engine.stream_words == cycle-by-cycle stepping -------------------------------------

STREAM_CASES = [
    # (spec, seed, lanes, words, n)
    (SPEC, 1, 4, 1, 0),
    (SPEC, 1, 4, 1, 3),  # n < lanes
    (SPEC, 2, 4, 2, 4),  # n == lanes
    (SPEC, 3, 4, 1, 5),
    (SPEC, 4, 5, 1, 23),  # not a multiple of lanes
    (SPEC, 5, 1, 1, 5000),
    (SPEC, 6, 3, 1, 20001),
    (SPEC, 7, 7, 2, 999),
    (LINEAR, 8, 8, 1, 4096),
    (SPEC, 9, 16, 3, 16 * 100 + 15),
    (SPEC, 10, 2, 1, 40_000),  # several steps per chunk (per > 1)
    (SPEC, 11, 16385, 1, 40_000),  # more lanes than virtual lanes: one chunk
    (XoroshiroSpec(8, *W8_FULL), 12, 3, 2, 1001),
    (XoroshiroSpec(16, 2, 9, 9, "linear"), 13, 6, 1, 7777),
]


@pytest.mark.parametrize(("spec", "seed", "lanes", "words", "n"), STREAM_CASES)
def test_stream_words_equals_stepping(spec, seed, lanes, words, n):
    rng = LaneRng.seeded(spec, seed, lanes, words)
    start = rng.copy()
    got = stream_words(rng, n)
    assert got.shape == (n, words) and got.dtype == U64

    ref_rng = start.copy()
    parts = []
    for c in range(-(-n // lanes)):
        out = ref_rng.next()
        parts.append(out[: min(lanes, n - c * lanes)])
    ref = np.concatenate(parts) if parts else np.empty((0, words), dtype=U64)
    assert np.array_equal(got, ref)

    counts = np.array([-(-(n - lane) // lanes) for lane in range(lanes)], dtype=np.int64)
    counts = np.maximum(counts, 0)
    assert counts.sum() == n
    expect = start.copy()
    expect.advance(counts)
    assert rng == expect
    if lanes <= 16:
        for lane in range(lanes):
            for k in range(words):
                end = _scalar_steps(spec, int(start.s0[lane, k]), int(start.s1[lane, k]), int(counts[lane]))
                assert (int(rng.s0[lane, k]), int(rng.s1[lane, k])) == end


def test_stream_words_consecutive_calls_continue_the_stream():
    a = LaneRng.seeded(SPEC, 21, lanes=5, words=1)
    b = a.copy()
    whole = stream_words(a, 5 * 300)
    first = stream_words(b, 5 * 120)
    second = stream_words(b, 5 * 180)
    assert np.array_equal(whole, np.concatenate([first, second]))
    assert a == b


def test_stream_words_negative():
    rng = LaneRng.seeded(SPEC, 0, 2)
    before = rng.copy()
    with pytest.raises(ValueError, match=re.escape("element count must be >= 0, got -1")):
        stream_words(rng, -1)
    assert rng == before


# ---- 8. simple statistics of the bit stream --------------------------------------------------


@pytest.fixture(scope="module", params=["aox", "linear"])
def lane_stream(request):
    """Per-lane outputs (cycles, lanes) of an 8-lane rng, 2^18 words in all."""
    spec = XoroshiroSpec(scrambler=request.param)
    lanes, cycles = 8, 1 << 15
    words = stream_words(LaneRng.seeded(spec, 31337, lanes), lanes * cycles)[:, 0]
    return words.reshape(cycles, lanes)


def _uniform(x: np.ndarray) -> np.ndarray:
    return (x >> U64(11)).astype(np.float64) * 2.0**-53


def test_byte_chi_square(lane_stream):
    data = np.ascontiguousarray(lane_stream).view(np.uint8)
    assert data.size >= 1 << 20
    counts = np.bincount(data.ravel(), minlength=256)
    expected = data.size / 256
    chi = float(((counts - expected) ** 2 / expected).sum())
    lo, hi = stats.chi2.ppf(1e-6, 255), stats.chi2.ppf(1 - 1e-6, 255)
    assert lo < chi < hi, (chi, lo, hi)


def test_bit_frequencies(lane_stream):
    x = lane_stream.ravel()
    n = x.size
    ones = np.array([int(np.count_nonzero((x >> U64(b)) & U64(1))) for b in range(64)])
    sd = math.sqrt(n) / 2
    assert np.all(np.abs(ones - n / 2) < 5 * sd), ones


def test_correlations(lane_stream):
    cycles = lane_stream.shape[0]
    u = _uniform(lane_stream)
    bound = 5 / math.sqrt(cycles)
    for lane in range(lane_stream.shape[1]):
        r = np.corrcoef(u[:-1, lane], u[1:, lane])[0, 1]
        assert abs(r) < bound, ("consecutive", lane, r)
    for other in (1, 7):
        r = np.corrcoef(u[:, 0], u[:, other])[0, 1]
        assert abs(r) < bound, ("lanes", other, r)
    # the uniforms look uniform: mean 1/2, variance 1/12
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
    assert abs(u.var() - 1 / 12) < 0.002


# ---- 9. bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "exc", "msg"),
    [
        (-1, ValueError, "seed must be in [0, 2**64), got -1"),
        (2**64, ValueError, f"seed must be in [0, 2**64), got {2**64}"),
        (1.0, TypeError, "seed must be an int, got float 1.0"),
        ("3", TypeError, "seed must be an int, got str '3'"),
        (True, TypeError, "seed must be an int, got bool True"),
        (None, TypeError, "seed must be an int, got NoneType None"),
    ],
)
def test_bad_seed(seed, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        LaneRng.seeded(SPEC, seed, 2)
    with pytest.raises(exc, match=re.escape(msg)):
        SPEC.base_state(seed)


def test_numpy_int_seed_accepted():
    a = LaneRng.seeded(SPEC, np.uint64(2**64 - 1), 2)
    b = LaneRng.seeded(SPEC, 2**64 - 1, 2)
    assert a == b


@pytest.mark.parametrize(
    ("lanes", "words", "exc", "msg"),
    [
        (0, 1, ValueError, "lanes must be >= 1, got 0"),
        (-3, 1, ValueError, "lanes must be >= 1, got -3"),
        (1, 0, ValueError, "words must be >= 1, got 0"),
        (2.0, 1, TypeError, "lanes must be an int, got float 2.0"),
        (2, "1", TypeError, "words must be an int, got str '1'"),
    ],
)
def test_bad_lanes_words(lanes, words, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        LaneRng.seeded(SPEC, 0, lanes, words)


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"word_bits": 2}, ValueError, "word_bits must be in [3, 64], got 2"),
        ({"word_bits": 65}, ValueError, "word_bits must be in [3, 64], got 65"),
        ({"word_bits": 8.0}, TypeError, "word_bits must be an int, got float 8.0"),
        ({"a": 0}, ValueError, "a must be in [1, 63] for word_bits=64, got 0"),
        ({"a": 64}, ValueError, "a must be in [1, 63] for word_bits=64, got 64"),
        ({"b": -1}, ValueError, "b must be in [1, 63] for word_bits=64, got -1"),
        ({"word_bits": 8, "a": 2, "b": 5, "c": 8}, ValueError, "c must be in [1, 7] for word_bits=8, got 8"),
        ({"c": True}, TypeError, "c must be an int, got bool True"),
        ({"scrambler": "foo"}, ValueError, "scrambler must be one of ('aox', 'linear'), got 'foo'"),
    ],
)
def test_bad_spec(kwargs, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        XoroshiroSpec(**kwargs)


def test_not_cyclic_spec():
    spec = XoroshiroSpec(8, 1, 2, 1)
    with pytest.raises(ValueError, match=r"state transition is not cyclic \(minimal polynomial degree 5 < 16\)"):
        _ = spec.charpoly
    assert spec.is_full_period() is False
    with pytest.raises(ValueError, match="jump-ahead is not supported"):
        spec.jump_state(1, 0, 5)


def test_bad_state_arrays():
    good = np.ones((3, 2), dtype=U64)
    zero = good.copy()
    zero[1, 0] = 0
    with pytest.raises(ValueError, match=re.escape("generator state of lane 1 word 0 is all-zero")):
        LaneRng(SPEC, zero, zero.copy())
    # zero in only one word of the pair is fine
    LaneRng(SPEC, zero, good)
    with pytest.raises(TypeError, match=re.escape("state arrays must be uint64, got int64 and uint64")):
        LaneRng(SPEC, good.astype(np.int64), good)
    with pytest.raises(TypeError, match=re.escape("state arrays must be uint64, got uint64 and uint32")):
        LaneRng(SPEC, good, good.astype(np.uint32))
    with pytest.raises(TypeError, match=re.escape("state arrays must be uint64, got float64 and float64")):
        LaneRng(SPEC, good.astype(np.float64), good.astype(np.float64))
    with pytest.raises(
        ValueError, match=re.escape("state arrays must both have shape (lanes, words), got (3,) and (3,)")
    ):
        LaneRng(SPEC, good[:, 0], good[:, 0])
    with pytest.raises(ValueError, match=re.escape("got (3, 2) and (2, 3)")):
        LaneRng(SPEC, good, good.T.copy())
    with pytest.raises(ValueError, match=re.escape("state words exceed word_bits=8")):
        LaneRng(XoroshiroSpec(8, *W8_FULL), good, good * U64(256))


def test_constructor_copies_state():
    s0 = np.full((2, 1), 5, dtype=U64)
    s1 = np.full((2, 1), 9, dtype=U64)
    rng = LaneRng(SPEC, s0, s1)
    s0[:] = 0
    assert np.all(rng.s0 == 5)


# ---- 10. state_dict round trip -----------------------------------------------------------------


def test_state_dict_round_trip_fresh_spec():
    spec = XoroshiroSpec(word_bits=16, a=2, b=9, c=9)  # fresh instance: nothing cached on it
    rs = np.random.default_rng(10)
    s0, s1 = _rand_states(rs, spec, (3, 2))
    rng = LaneRng(spec, s0, s1)
    for _ in range(5):
        rng.next()
    restored = LaneRng.from_state_dict(rng.state_dict())
    assert restored == rng
    for _ in range(20):
        assert np.array_equal(restored.next(), rng.next())
    assert restored == rng


@pytest.mark.parametrize("spec", [SPEC, XoroshiroSpec(16, 2, 9, 9, "linear")], ids=str)
def test_state_dict_round_trip_seeded(spec):
    rng = LaneRng.seeded(spec, 5, lanes=3, words=2)
    for _ in range(7):
        rng.next()
    sd = rng.state_dict()
    field_names = {f.name for f in dataclasses.fields(XoroshiroSpec)}
    assert set(sd["spec"]) == field_names, (
        f"state_dict()['spec'] has keys {sorted(sd['spec'])}: spec.__dict__ also holds the "
        "cached_property 'charpoly', so from_state_dict(state_dict()) raises TypeError"
    )
    restored = LaneRng.from_state_dict(sd)
    assert restored == rng
    # The dict holds copies: advancing the original does not change it.
    rng_next = rng.next()
    assert np.array_equal(restored.next(), rng_next)
    again = LaneRng.from_state_dict(sd)
    assert np.array_equal(again.next(), rng_next)
    for _ in range(20):
        assert np.array_equal(restored.next(), rng.next())
    assert restored == rng


def test_equality():
    a = LaneRng.seeded(SPEC, 1, 2)
    assert a == a.copy()
    assert a != LaneRng.seeded(SPEC, 2, 2)
    assert a != LaneRng(LINEAR, a.s0, a.s1)
    assert a != "not an rng"
    with pytest.raises(TypeError):
        hash(a)


def test_advance_accepts_huge_scalars_and_rejects_fractions():
    spec = XoroshiroSpec()
    rng = LaneRng.seeded(spec, 11, lanes=2)
    jumped = rng.copy()
    jumped.advance(1 << 64)  # one stream spacing: lane 0 lands on lane 1's start
    assert (int(jumped.s0[0, 0]), int(jumped.s1[0, 0])) == (int(rng.s0[1, 0]), int(rng.s1[1, 0]))
    with pytest.raises(TypeError, match=r"advance counts must be integers, got 1\.7"):
        rng.advance(1.7)
    assert XoroshiroSpec(a=np.int64(55)) == spec and type(XoroshiroSpec(a=np.int64(55)).a) is int


def test_advance_rejects_wrapping_unsigned_counts():
    rng = LaneRng.seeded(XoroshiroSpec(), 1, lanes=2)
    with pytest.raises(ValueError, match=r"per-lane advance counts must be < 2\*\*63"):
        rng.advance(np.array([1, 1 << 63], dtype=np.uint64))
