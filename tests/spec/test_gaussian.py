"""Gaussian generators: tables derived from the spec, exact distributions and moments."""

import math
from fractions import Fraction

import numpy as np
import pytest

from emulator.spec.gaussian import GaussianSpec


@pytest.mark.parametrize("n,b", [(1, 4), (2, 3), (4, 8), (12, 4)])
def test_clt_moments_match_closed_form(n, b):
    g = GaussianSpec("clt", n, b, 0)
    m = g.moments()
    big_n = 1 << b
    # per term 2u - (N-1) with u uniform on {0..N-1}: variance (N^2 - 1)/3,
    # excess kurtosis -6(N^2+1)/(5(N^2-1)); a sum of n terms divides the excess by n.
    assert m["mean"] == 0
    assert m["variance"] == Fraction(n * (big_n * big_n - 1), 3)
    assert m["kurtosis"] == 3 - Fraction(6 * (big_n**2 + 1), 5 * (big_n**2 - 1)) / n
    assert g.max_abs == n * (big_n - 1)


def test_pmf_counts_every_pattern():
    for g in (GaussianSpec(), GaussianSpec("table", 2, 5, 6), GaussianSpec("clt", 3, 4, 0)):
        zmin, counts = g.pmf()
        assert int(counts.sum()) == 1 << g.bits
        assert zmin == -g.max_abs and zmin + len(counts) - 1 == g.max_abs
        assert np.array_equal(counts, counts[::-1])  # symmetric: exact zero mean


def test_pmf_equals_brute_force_small():
    g = GaussianSpec("table", 2, 5, 6)
    bits = np.arange(1 << g.bits, dtype=np.uint64)
    z = g.sample(bits)
    zmin, counts = g.pmf()
    assert np.array_equal(np.bincount(z - zmin, minlength=len(counts)), counts)


def test_sample_reads_terms_lsb_first():
    g = GaussianSpec("table", 3, 4, 5)  # odd term count: no pair table
    t = g.table
    word = np.array([0x3 | (0xA << 4) | (0xF << 8)], dtype=np.uint64)
    assert int(g.sample(word)[0]) == t[0x3] + t[0xA] + t[0xF]
    g4 = GaussianSpec()  # pair-table path
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, 1000, dtype=np.uint64)
    ref = sum(g4.table[((bits >> np.uint64(8 * j)) & np.uint64(255)).astype(np.intp)] for j in range(4))
    assert np.array_equal(g4.sample(bits), ref)


def test_table_is_antisymmetric_and_monotone():
    t = GaussianSpec().table
    assert np.array_equal(t, -t[::-1])
    assert np.all(np.diff(t) >= 0)


def test_default_generator_quality():
    """The shipped 4 x 8-bit inversion sum: near-unit variance, kurtosis ~3, tails past 5 sigma."""
    s = GaussianSpec().summary()
    assert s["random_bits"] == 32
    assert abs(s["variance_real"] - 1) < 0.01
    assert abs(s["kurtosis"] - 3) < 0.03
    assert s["tail_reach_sigma"] > 5.5
    assert 0.9 < s["tail_ratio_3sigma"] < 1.05
    clt = GaussianSpec("clt", 4, 8, 0).summary()
    assert clt["tail_reach_sigma"] < math.sqrt(12) + 1e-9  # CLT of 4 uniforms: sqrt(3n) sigma at most
    assert clt["tail_ratio_4sigma"] == 0


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        (dict(kind="boxmuller"), ValueError, "Gaussian kind must be one of"),
        (dict(terms=0), ValueError, r"terms must be in \[1, 16\], got 0"),
        (dict(index_bits=17), ValueError, r"index_bits must be in \[1, 16\], got 17"),
        (dict(terms=8, index_bits=8), ValueError, "Gaussian uses terms\\*index_bits = 64 random bits; at most 48"),
        (dict(kind="clt", frac=3), ValueError, "clt generator has frac 0"),
        (dict(terms=2.0), TypeError, "terms must be an int, got 2.0"),
    ],
)
def test_bad_specs(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        GaussianSpec(**kwargs)


@pytest.mark.parametrize("g", [GaussianSpec(), GaussianSpec("table", 3, 4, 5), GaussianSpec("clt", 2, 6, 0)])
def test_cumulant_moments_equal_moments_of_the_exact_pmf(g):
    zmin, counts = g.pmf()
    total = 1 << g.bits
    zs = [(zmin + i, int(c)) for i, c in enumerate(counts) if c]
    mean = Fraction(sum(z * c for z, c in zs), total)
    m2 = sum(Fraction(c) * (z - mean) ** 2 for z, c in zs) / total
    m4 = sum(Fraction(c) * (z - mean) ** 4 for z, c in zs) / total
    assert g.moments() == {"mean": mean, "variance": m2, "kurtosis": m4 / (m2 * m2)}


def test_default_generator_exact_values():
    g = GaussianSpec()
    assert g.variance == Fraction(65169, 65536)
    assert g.std == math.sqrt(65169 / 65536)
    assert g.table[-4:].tolist() == [282, 299, 323, 369] and int(g.table[128:].sum()) == 13056


def test_fine_tables_stay_fast():
    g = GaussianSpec("table", 4, 8, 16)  # support of about 3 million values: no convolution needed for std
    assert 0.99 < g.std < 1.0
