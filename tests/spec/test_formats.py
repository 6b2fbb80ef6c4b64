"""Fixed-point formats, rounding rules and float conversion."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.analysis.exact import sr_distribution
from emulator.spec.formats import FixedFormat, round_nearest, round_stochastic, sr_bias

formats = st.builds(FixedFormat, st.integers(2, 24), st.integers(-4, 30))
ints = st.integers(-(1 << 40), 1 << 40)


def test_ranges_and_str():
    f = FixedFormat(8, 3)
    assert (f.min_word, f.max_word) == (-128, 127)
    assert (f.min_value, f.max_value) == (-16.0, 15.875)
    assert str(f) == "Q(8,3)"
    u = FixedFormat(16, 24, signed=False)
    assert (u.min_word, u.max_word, str(u)) == (0, 65535, "UQ(16,24)")
    q = FixedFormat(8, 8)  # QPyTorch FixedPoint(8, 8)
    assert (q.min_value, q.max_value) == (-0.5, 0.5 - 2**-8)


@pytest.mark.parametrize(
    ("args", "exc", "msg"),
    [
        ((1, 0), ValueError, r"width must be in \[2, 62\], got 1"),
        ((63, 0), ValueError, r"width must be in \[2, 62\], got 63"),
        ((8, 65), ValueError, r"frac must be in \[-64, 64\], got 65"),
        ((8.0, 3), TypeError, r"width must be an int, got float 8.0"),
        ((8, True), TypeError, r"frac must be an int, got bool True"),
    ],
)
def test_bad_formats(args, exc, msg):
    with pytest.raises(exc, match=msg):
        FixedFormat(*args)


@given(ints, st.integers(1, 20))
def test_round_nearest_is_half_up(x, s):
    got = int(round_nearest(np.array([x]), s)[0])
    exact = Fraction(x, 1 << s)
    if exact.denominator == 2:
        assert got == exact + Fraction(1, 2)  # ties go toward +inf
    else:
        assert abs(exact - got) < Fraction(1, 2)


def test_round_nearest_ties_examples():
    x = np.array([1, 3, -1, -3, 5])  # /2: 0.5, 1.5, -0.5, -1.5, 2.5
    assert np.array_equal(round_nearest(x, 1), [1, 2, 0, -1, 3])


@given(ints, st.integers(1, 16), st.integers(1, 16))
def test_sr_brackets_and_bias(x, s, k):
    k = min(k, s)
    lo = x >> s
    dist = sr_distribution(x, s, k)
    assert set(dist) <= {lo, lo + 1}
    assert sum(dist.values()) == 1
    mean = sum(w * p for w, p in dist.items())
    assert mean - Fraction(x, 1 << s) == sr_bias(x, s, k)
    if k == s:
        assert sr_bias(x, s, k) == 0  # exactly unbiased when k covers every dropped bit


@settings(max_examples=50)
@given(ints, st.integers(1, 8), st.integers(1, 8))
def test_round_stochastic_matches_distribution_by_enumeration(x, s, k):
    k = min(k, s)
    u = np.arange(1 << k)
    out = round_stochastic(np.full(1 << k, x), s, k, u)
    vals, counts = np.unique(out, return_counts=True)
    got = {int(v): Fraction(int(c), 1 << k) for v, c in zip(vals, counts, strict=True)}
    assert got == sr_distribution(x, s, k)


def test_sr_bias_bound_few_bits():
    # With k of s bits the bias lies in (-2^-k, 0] output LSBs.
    s, k = 10, 3
    biases = [sr_bias(x, s, k) for x in range(1 << s)]
    assert min(biases) == -Fraction((1 << (s - k)) - 1, 1 << s)
    assert max(biases) == 0


@given(formats, st.floats(-1e6, 1e6, allow_nan=False))
def test_quantize_nearest_within_half_lsb_or_saturated(fmt, x):
    w = int(fmt.quantize(np.array([x]))[0])
    assert fmt.min_word <= w <= fmt.max_word
    exact = Fraction(x) * Fraction(2) ** fmt.frac
    if fmt.min_word <= exact <= fmt.max_word:
        assert -Fraction(1, 2) < w - exact <= Fraction(1, 2)
    else:
        assert w == (fmt.max_word if exact > 0 else fmt.min_word)


def test_quantize_ties_up_and_saturation():
    f = FixedFormat(4, 1)  # words -8..7, LSB 0.5
    got = f.quantize(np.array([0.25, -0.25, 0.75, 100.0, -np.inf, np.inf]))
    assert np.array_equal(got, [1, 0, 2, 7, -8, 7])


def test_quantize_stochastic_exact_mean_and_seeded():
    f = FixedFormat(8, 3)
    x = np.full(200_000, 0.3)  # 2.4 LSB: floor 2, P(up) = 0.4 to 32 bits
    a = f.quantize(x, "stochastic", np.random.default_rng(5))
    b = f.quantize(x, "stochastic", np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert set(np.unique(a)) == {2, 3}
    assert abs((a == 3).mean() - 0.4) < 0.005


def test_quantize_errors():
    f = FixedFormat(8, 3)
    with pytest.raises(ValueError, match=r"cannot quantize NaN \(first at flat index 2\) to Q\(8,3\)"):
        f.quantize(np.array([0.0, 1.0, np.nan]))
    with pytest.raises(TypeError, match=r"explicit numpy\.random\.Generator"):
        f.quantize(np.zeros(3), "stochastic")
    with pytest.raises(ValueError, match="rounding must be 'nearest' or 'stochastic', got 'up'"):
        f.quantize(np.zeros(3), "up")
    with pytest.raises(ValueError, match=r"sr_bits must be in \[1, 52\]"):
        f.quantize(np.zeros(3), "stochastic", np.random.default_rng(0), sr_bits=60)


def test_check_words():
    f = FixedFormat(8, 3)
    with pytest.raises(ValueError, match=r"theta word 128 outside Q\(8,3\) range \[-128, 127\]"):
        f.check_words(np.array([0, 128]), "theta")
    with pytest.raises(TypeError, match="grad must be an integer array for Q\\(8,3\\), got dtype float64"):
        f.check_words(np.array([0.5]), "grad")
    assert f.check_words(np.array([-128, 127], dtype=np.int16)).dtype == np.int64


def test_quantize_saturates_exactly_for_wide_formats():
    f = FixedFormat(56, 0)
    assert np.array_equal(f.quantize(np.array([1e30, -1e30])), [f.max_word, f.min_word])


def test_sr_helpers_reject_k_above_s():
    from emulator.spec.formats import sr_split

    with pytest.raises(ValueError, match="stochastic rounding needs 0 <= k <= s, got k=5, s=3"):
        round_stochastic(np.array([7]), 3, 5, np.array([0]))
    with pytest.raises(ValueError, match="got k=2, s=1"):
        sr_split(np.array([7]), 1, 2)


class _FixedUniforms(np.random.Generator):
    """A Generator whose ``integers`` returns given values: pins the SR uniforms exactly."""

    def __init__(self, u):
        super().__init__(np.random.PCG64(0))
        self.u = np.asarray(u, dtype=np.int64)

    def integers(self, low, high, size=None, dtype=np.int64):
        assert (low, high) == (0, 1 << 52)
        return np.broadcast_to(self.u, size).astype(dtype)


def _exact_fk(x: float, frac: int, k: int) -> int:
    t = Fraction(x) * Fraction(2) ** frac
    return math.floor(t * 2**k) % (1 << k)


def test_quantize_stochastic_fraction_exact_for_negative_values():
    # t - floor(t) rounds for t in (-1/2, 0) with fraction bits below 2^-53: f_k must be
    # floor(t 2^k) mod 2^k exactly, so u = f_k - 1 rounds up and u = f_k rounds down.
    f = FixedFormat(8, 0)
    xs = [-(2**-40 + 2**-60), -(2**-1 + 2**-60), -(2**-3 + 2**-55 + 2**-70), -(1 + 2**-30 + 2**-80)]
    for x in xs:
        fk = _exact_fk(x, 0, 52)
        fl = math.floor(x)
        assert 0 < fk < 1 << 52
        up = f.quantize(np.array([x]), "stochastic", _FixedUniforms([fk - 1]), sr_bits=52)
        down = f.quantize(np.array([x]), "stochastic", _FixedUniforms([fk]), sr_bits=52)
        assert (int(up[0]), int(down[0])) == (fl + 1, fl), x
    assert _exact_fk(xs[0], 0, 52) == (1 << 52) - (1 << 12) - 1
