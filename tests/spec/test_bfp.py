"""The BFP format and the host quantizer: exact exponents, ties, saturation, stochastic rounding."""

import math
from fractions import Fraction

import numpy as np
import pytest

from emulator.spec.bfp import TORCH_OPS, BfpFormat, BfpTensor, block_shape, quantize_core
from emulator.spec.formats import FixedFormat


def ref_quantize(x: np.ndarray, fmt: BfpFormat, k=None, u=None, headroom=0):
    """Scalar model on Fractions: E from the exact block maximum, then nearest / SR as defined."""
    rows, cols = block_shape(x.shape)
    xs = x.reshape(rows, cols)
    mant, exps = np.zeros((rows, cols), np.int64), np.zeros(rows, np.int64)
    for r in range(rows):
        vals = [Fraction(float(v)) if math.isfinite(v) else None for v in xs[r]]
        if any(v is None for v in vals):
            e = fmt.max_exp
        else:
            amax = max((abs(v) for v in vals), default=Fraction(0))
            e = fmt.min_exp
            if amax:
                e = math.floor(math.log2(amax))  # fine as a first guess; fixed exactly below
                while Fraction(2) ** e > amax:
                    e -= 1
                while Fraction(2) ** (e + 1) <= amax:
                    e += 1
            e = min(max(e, fmt.min_exp), fmt.max_exp)
            if headroom and e < fmt.max_exp and amax > (fmt.max_mant - headroom) * Fraction(2) ** (e + 2 - fmt.width):
                e += 1
        exps[r] = e
        grid = Fraction(2) ** (e + 2 - fmt.width)
        for j, xv in enumerate(xs[r]):
            if not math.isfinite(xv):
                q = fmt.max_mant if xv > 0 else -fmt.max_mant
            else:
                t = Fraction(float(xv)) / grid
                fl = math.floor(t)
                if u is None:
                    q = fl + (t - fl >= Fraction(1, 2))
                else:
                    fk = math.floor((t - fl) * 2**k)
                    q = fl + (int(u.reshape(rows, cols)[r, j]) < fk)
            mant[r, j] = min(max(q, -fmt.max_mant), fmt.max_mant)
    return mant.reshape(x.shape), exps


def test_format_properties_and_checks():
    f = BfpFormat(8, 8)
    assert (f.max_mant, f.min_exp, f.max_exp, str(f)) == (127, -128, 127, "BFP(8,e8)")
    assert f.grid_exp(0) == -6
    for kw, exc, msg in [
        (dict(width=1), ValueError, r"BFP mantissa width must be in \[2, 24\], got 1"),
        (dict(width=25), ValueError, r"BFP mantissa width must be in \[2, 24\], got 25"),
        (dict(exp_bits=9), ValueError, r"BFP exp_bits must be in \[2, 8\], got 9"),
        (dict(width=8.0), TypeError, r"width must be an int, got float 8.0"),
    ]:
        with pytest.raises(exc, match=msg):
            BfpFormat(**kw)


def test_known_values_ties_and_exponents():
    f = BfpFormat(8, 8)
    x = np.array([[1.0, -0.5, 0.3, 2.0 ** -7 * 1.5], [0.0, 0.0, 0.0, 0.0], [-1.0, 0.25, 1.0 / 3, 0.0]])
    t = f.quantize(x)
    assert np.array_equal(t.exp, [0, -128, 0])
    # grid 2^-6: 0.3 * 64 = 19.2 -> 19; 1.5/128 * 64 = 0.75 -> 1; -1 -> -64
    assert np.array_equal(t.mant, [[64, -32, 19, 1], [0, 0, 0, 0], [-64, 16, 21, 0]])
    ties = np.array([[1.0, 2.5 / 64, -2.5 / 64, -0.5 / 64]])  # exact ties go toward +inf
    assert np.array_equal(f.quantize(ties).mant, [[64, 3, -2, 0]])
    # exponent exactly from the float bits at powers of two
    below = np.nextafter(2.0, 0.0)
    assert f.quantize(np.array([[below]])).exp[0] == 0 and f.quantize(np.array([[2.0]])).exp[0] == 1
    # rounding the maximum up to 2^(W-1) saturates symmetrically
    assert f.quantize(np.array([[1.999, -1.999]])).mant.tolist() == [[127, -127]]


def test_exponent_limits_inf_nan_underflow():
    f = BfpFormat(6, 4)  # E in [-8, 7], grid 2^(E-4)
    x = np.array([[300.0, -1.0], [np.inf, 3.0], [-np.inf, 0.0], [2.0 ** -12, 2.0 ** -11], [1e-300, -1e-300]])
    t = f.quantize(x)
    assert t.exp.tolist() == [7, 7, 7, -8, -8]
    assert t.mant.tolist() == [[31, 0], [31, 0], [-31, 0], [1, 2], [0, 0]]  # grid 8 on top, 2^-12 at the bottom
    np.testing.assert_array_equal(f.to_float(t)[3], [2.0**-12, 2.0**-11])
    with pytest.raises(ValueError, match=r"cannot quantize NaN \(first at flat index 3\) to BFP\(6,e4\)"):
        f.quantize(np.array([[1.0, 2.0], [3.0, np.nan]]))


def test_rows_vectors_scalars():
    f = BfpFormat(8, 8)
    v = f.quantize(np.array([3.0, -0.001, 0.0]))
    assert v.exp.tolist() == [1, -10, -128] and v.mant.tolist() == [96, -66, 0]  # each element its own block
    s = f.quantize(np.float64(-5.0))
    assert s.mant.shape == () and s.exp.tolist() == [2] and int(s.mant) == -80
    e = f.quantize(np.zeros((2, 0)))
    assert e.mant.shape == (2, 0) and e.exp.tolist() == [-128, -128]
    c = f.quantize(np.ones((2, 3, 4)) * np.array([1.0, 4.0])[:, None, None])
    assert c.exp.tolist() == [0, 2] and c.mant.shape == (2, 3, 4)


@pytest.mark.parametrize("width", [4, 8, 12])
def test_nearest_and_stochastic_equal_the_fraction_model(width):
    f = BfpFormat(width, 6)
    rng = np.random.default_rng(width)
    x = rng.normal(size=(7, 9)) * np.exp2(rng.integers(-40, 40, size=(7, 1)))
    x[2] = 0.0
    x[3, ::2] = -1e-12 * rng.random(5)  # tiny negatives with fraction bits far below 2^-53 of the grid
    x[4, 0] = np.inf
    m, e = ref_quantize(x, f)
    t = f.quantize(x)
    assert np.array_equal(t.mant, m) and np.array_equal(t.exp, e)
    for k in (1, 5, 32):
        u = np.random.default_rng(3).integers(0, 1 << k, size=x.shape, dtype=np.int64)
        ts = f.quantize(x, "stochastic", np.random.default_rng(3), sr_bits=k)
        m, e = ref_quantize(x, f, k, u)
        assert np.array_equal(ts.mant, m) and np.array_equal(ts.exp, e)


def test_rows_with_a_common_exponent_equal_fixed_point_quantize():
    """With every row's maximum in [1, 2) and |t| >= 1, BFP(W) rows are FixedFormat(W, W-2) words (same draws)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(1 / 16, 1.99, size=(5, 8)) * rng.choice([-1.0, 1.0], size=(5, 8))
    x[:, 0] = 1.5
    f = BfpFormat(8, 8)
    fx = FixedFormat(8, 6)
    assert np.array_equal(f.quantize(x).mant, np.clip(fx.quantize(x), -127, 127))
    a = f.quantize(x, "stochastic", np.random.default_rng(1), sr_bits=20)
    b = fx.quantize(x, "stochastic", np.random.default_rng(1), sr_bits=20)
    assert np.array_equal(a.mant, np.clip(b, -127, 127)) and (a.exp == 0).all()


def test_stochastic_rounding_frequencies():
    """Over many draws the round-up frequency of 0.3 LSB is f_k / 2^k exactly in expectation (binomial check)."""
    f = BfpFormat(8, 8)
    x = np.full((1, 20001), 0.3 / 64)
    x[0, 0] = 1.0  # row exponent 0, grid 2^-6
    t = f.quantize(x, "stochastic", np.random.default_rng(5), sr_bits=16)
    ups = int(t.mant[0, 1:].sum())
    p = math.floor(0.3 * 2**16) / 2**16
    n = 20000
    assert abs(ups - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_bad_quantize_arguments():
    f = BfpFormat(8, 8)
    with pytest.raises(TypeError, match=r"needs an explicit numpy.random.Generator, got None"):
        f.quantize(np.ones(2), "stochastic")
    with pytest.raises(ValueError, match=r"sr_bits must be in \[1, 52\] for BFP\(8,e8\), got 53"):
        f.quantize(np.ones(2), "stochastic", np.random.default_rng(0), sr_bits=53)
    with pytest.raises(ValueError, match=r"rounding must be 'nearest' or 'stochastic', got 'up'"):
        f.quantize(np.ones(2), "up")
    with pytest.raises(ValueError, match=r"exponents must have shape \(2,\)"):
        f.check(BfpTensor(np.zeros((2, 2), np.int64), np.zeros(1, np.int64)))


def test_torch_quantize_core_equals_numpy():
    torch = pytest.importorskip("torch")
    f = BfpFormat(8, 8)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 10)) * np.exp2(rng.integers(-130, 130, size=(6, 1)))
    x[1] = 0
    x[2, 3] = -np.inf
    u = rng.integers(0, 1 << 20, size=x.shape, dtype=np.int64)
    for uu in (None, u):
        mt, et = quantize_core(TORCH_OPS, f, torch.from_numpy(x), 20 if uu is not None else 1,
                               None if uu is None else torch.from_numpy(uu))
        m, e = ref_quantize(x, f, 20, uu) if uu is not None else ref_quantize(x, f)
        assert torch.equal(mt, torch.from_numpy(m)) and torch.equal(et, torch.from_numpy(e))


@pytest.mark.parametrize("headroom", [1, 2, 31])
def test_headroom_exponent_rule(headroom):
    f = BfpFormat(8, 4)
    rng = np.random.default_rng(headroom)
    x = rng.normal(size=(40, 3)) * np.exp2(rng.integers(-9, 9, size=(40, 1)))
    x[:, 0] = (127 - headroom + rng.choice([-0.5, 0.0, 0.25, 1.0], size=40)) * np.exp2(rng.integers(-6, 4, 40) - 6)
    m, e = ref_quantize(x, f, headroom=headroom)
    t = f.quantize(x, headroom=headroom)
    assert np.array_equal(t.mant, m) and np.array_equal(t.exp, e)
    plain = f.quantize(x)
    bumped = t.exp > plain.exp
    assert bumped.any() and (~bumped).any() and np.abs(t.mant[t.exp < f.max_exp]).max() <= 127 - headroom
    u = np.random.default_rng(0).integers(0, 1 << 20, size=x.shape, dtype=np.int64)
    ts = f.quantize(x, "stochastic", np.random.default_rng(0), sr_bits=20, headroom=headroom)
    m, e = ref_quantize(x, f, 20, u, headroom)
    assert np.array_equal(ts.mant, m) and np.array_equal(ts.exp, e)
    with pytest.raises(ValueError, match=r"headroom must be in \[0, 63\] for BFP\(8,e4\), got 64"):
        f.quantize(x, headroom=64)
