"""The datapath: configuration checks, random-bit layout, and exactness by enumeration."""

import math
from fractions import Fraction

import numpy as np
import pytest

from emulator.analysis.exact import enumerate_update, exact_sum, moments, sr_distribution, update_distribution
from emulator.spec.datapath import DatapathConfig, Field, StepRegisters, Variant, update
from emulator.spec.formats import FixedFormat, sr_bias
from emulator.spec.gaussian import GaussianSpec
from emulator.spec.host import HyperParams, step_registers
from emulator.spec.presets import PRESETS, preset

W4_REGS = {
    "vc": [StepRegisters(5, 2, 3, True, 0), StepRegisters(5, 0, 0, False, 9), StepRegisters(3, 1, 0, False, 16)],
    "naive": [StepRegisters(5, 2, 3), StepRegisters(7, 0, 0)],
    "lp_f": [StepRegisters(5, 2, 3), StepRegisters(9, 0, 1)],
    "sgd_l": [StepRegisters(5, 2), StepRegisters(15, 0)],
    "sgd_f": [StepRegisters(5, 2), StepRegisters(1, 0)],
}


# ---- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        (dict(variant="adam"), ValueError, r"unknown variant 'adam'"),
        (dict(variant="fp"), ValueError, r"variant 'fp' is the float64 reference"),
        (dict(variant="lp_f"), ValueError, r"variant 'lp_f' needs a signed accumulator format, got acc=None"),
        (
            dict(variant="vc", acc=FixedFormat(24, 16)),
            ValueError,
            r"variant 'vc' has no accumulator; got acc=Q\(24,16\)",
        ),
        (dict(variant="lp_f", acc=FixedFormat(24, 2)), ValueError, r"accumulator frac 2 must be >= weight frac 3"),
        (dict(variant="lp_f", acc=FixedFormat(10, 8)), ValueError, r"accumulator Q\(10,8\) has fewer integer bits"),
        (dict(variant="vc", step=FixedFormat(16, 24)), ValueError, r"step register format must be unsigned"),
        (dict(variant="vc", grad=FixedFormat(8, 3, signed=False)), ValueError, r"grad format must be signed"),
        (dict(variant="vc", sr_bits=0), ValueError, r"sr_bits must be >= 1 or None"),
        (dict(variant="vc", sr_bits=2.0), TypeError, r"sr_bits must be an int or None, got 2.0"),
        (dict(variant="vc", lanes=0), ValueError, r"lanes must be in \[1, 16777216\], got 0"),
        (dict(variant="vc", vc_frac_bits=16), ValueError, r"vc_frac_bits must be in \[1, 15\], got 16"),
        (dict(variant="vc", weight=(8, 3)), TypeError, r"weight must be a FixedFormat, got \(8, 3\)"),
        (
            dict(variant="naive", weight=FixedFormat(40, 30), grad=FixedFormat(40, 30)),
            ValueError,
            r"exact sum needs \d+ bits \(frac 54\); at most 62",
        ),
        (
            dict(variant="naive", sr_bits=40, noise=FixedFormat(16, 30, signed=False)),
            ValueError,
            r"random fields \(sr=35, gauss=32 bits\) need 2 generator words per update; rng_words=1",
        ),
    ],
)
def test_bad_configs(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        DatapathConfig(**kwargs)


def test_two_words_when_the_budget_needs_them():
    cfg = DatapathConfig("naive", sr_bits=40, noise=FixedFormat(16, 30, signed=False), rng_words=2)
    assert cfg.fields == {"sr": Field(0, 0, 35), "gauss": Field(1, 0, 32)}
    assert cfg.random_bits == 128


def test_w8_layouts():
    vc = preset("w8-vc")
    assert (vc.sum_frac, vc.drop_bits, vc.sr_k) == (27, 24, 24)
    assert vc.fields == {"vc": Field(0, 0, 17), "sr": Field(0, 17, 24), "gauss": Field(0, 17, 32)}
    assert preset("w8-naive").fields == {"sr": Field(0, 0, 24), "gauss": Field(0, 24, 32)}
    assert preset("w8-lpf").sum_frac == 40  # decay (24 frac) times the 16-frac accumulator
    assert preset("w8-lpf").fields == {"sr": Field(0, 0, 24), "gauss": Field(0, 24, 32)}
    assert preset("w8-sgd-l").fields == {"sr": Field(0, 0, 24)}


def test_every_preset_builds():
    for name in PRESETS:
        cfg = preset(name, lanes=8)
        assert cfg.lanes == 8 and cfg.sum_width <= 62
    with pytest.raises(ValueError, match="unknown configuration 'w8-adam'"):
        preset("w8-adam")


@pytest.mark.parametrize(
    ("regs", "msg"),
    [
        (StepRegisters(70000), r"register step=70000 exceeds UQ\(16,24\) max 65535"),
        (StepRegisters(1, 0, 0, False, 1 << 15), r"register vc_var=32768 exceeds v0 = 16384"),
        (StepRegisters(1, 5000), r"register decay=5000 exceeds UQ\(12,24\) max 4095"),
    ],
)
def test_bad_registers(regs, msg):
    with pytest.raises(ValueError, match=msg):
        preset("w8-vc").check_registers(regs)


def test_register_types():
    with pytest.raises(ValueError, match="register step must be >= 0, got -1"):
        StepRegisters(-1)
    with pytest.raises(TypeError, match=r"register noise must be an int, got 1\.5"):
        StepRegisters(1, 0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"register decay=1 but the configuration has no decay register"):
        DatapathConfig("vc").check_registers(StepRegisters(1, 1))


# ---- kernel == exact counting, exhaustively for W=4 ----------------------------------------


@pytest.mark.parametrize("variant", ["vc", "naive", "lp_f", "sgd_l", "sgd_f"])
def test_w4_kernel_equals_counting_exhaustively(variant):
    """Every theta, every gradient, every random input: brute force == analytic counting."""
    name = {"lp_f": "w4-lpf", "sgd_l": "w4-sgd-l", "sgd_f": "w4-sgd-f"}.get(variant, f"w4-{variant}")
    cfg = preset(name)
    checked = 0
    for regs in W4_REGS[variant]:
        for theta in range(cfg.state.min_word, cfg.state.max_word + 1):
            for grad in range(cfg.grad.min_word, cfg.grad.max_word + 1):
                assert enumerate_update(cfg, theta, grad, regs) == update_distribution(cfg, theta, grad, regs), (
                    regs, theta, grad)
                checked += 1
    assert checked >= 2 * 16 * 16


# ---- properties proved by enumeration -------------------------------------------------------


def _inputs(cfg, n=12, seed=0):
    rng = np.random.default_rng(seed)
    st, g = cfg.state, cfg.grad
    th = rng.integers(st.min_word // 2, st.max_word // 2, n)
    gr = rng.integers(g.min_word // 2, g.max_word // 2, n)
    return list(zip(th.tolist(), gr.tolist(), strict=True))


@pytest.mark.parametrize("sr_bits", [None, 24, 4, 1])
def test_sr_unbiased_or_exact_bias(sr_bits):
    cfg = DatapathConfig("sgd_l", decay=FixedFormat(12, 24, signed=False), sr_bits=sr_bits)
    regs = step_registers(cfg, HyperParams(1e-3, weight_decay=0.1))
    for theta, grad in _inputs(cfg):
        mu = exact_sum(cfg, theta, grad, regs)
        mean, _ = moments(update_distribution(cfg, theta, grad, regs))
        bias = mean - Fraction(mu, 1 << cfg.drop_bits)
        assert bias == sr_bias(mu, cfg.drop_bits, cfg.sr_k)
        if sr_bits is None or sr_bits >= cfg.drop_bits:
            assert bias == 0
        else:
            assert -Fraction(1, 1 << cfg.sr_k) < bias <= 0


def _noise_terms(cfg, regs):
    zmin, counts = cfg.gaussian.pmf()
    sh = cfg.sum_frac - cfg.noise.frac - cfg.gaussian.frac
    total = 1 << cfg.gaussian.bits
    return [((regs.noise * (zmin + i)) << sh, Fraction(int(c), total)) for i, c in enumerate(counts) if c]


@pytest.mark.parametrize("lr", [2e-3, 3e-3])
def test_vc_branch_a_mean_and_variance(lr):
    """Branch A: E[out] = E[x'], Var[out] = Var[x'] + 1/4 LSB^2 exactly; x' within 2^-(pm+1) of x."""
    cfg = preset("w8-vc")
    regs = step_registers(cfg, HyperParams(lr))
    assert regs.vc_noise
    s, pm = cfg.drop_bits, cfg.vc_frac_bits
    noise = _noise_terms(cfg, regs)
    for theta, grad in _inputs(cfg):
        mu = exact_sum(cfg, theta, grad, regs)
        xs = [(((mu + n) + (1 << (s - pm - 1))) >> (s - pm), p) for n, p in noise]  # x' at pm bits
        ex = sum(Fraction(x, 1 << pm) * p for x, p in xs)
        vx = sum(Fraction(x, 1 << pm) ** 2 * p for x, p in xs) - ex * ex
        mean, var = moments(update_distribution(cfg, theta, grad, regs))
        assert mean == ex
        assert var == vx + Fraction(1, 4)
        assert abs(mean - Fraction(mu, 1 << s)) <= Fraction(1, 1 << (pm + 1))
        scale = Fraction(1 << 2 * cfg.weight.frac, 1 << 2 * cfg.noise.frac)
        target = regs.noise**2 * cfg.gaussian.variance * scale
        assert abs(var - (target + Fraction(1, 4))) < Fraction(1, 1 << pm)
        v_real = float(var) * cfg.weight.lsb**2
        assert abs(v_real / (2 * lr) - 1) < 2e-3  # the injected variance is 2*lr to register precision


@pytest.mark.parametrize(
    ("name", "lr", "temperature"),
    [("w8-vc", 1e-3, 1.0), ("w8-vc", 1e-4, 1.0), ("w8-vc", 1e-5, 1.0), ("w16-vc", 5e-4, 1e-4)],
)
def test_vc_branch_b_mean_and_variance(name, lr, temperature):
    """Branch B: mean = E[SR_k(mu)] exactly; variance = max(v, f(1-f)) to 1.5 * 2^-(2 pm) LSB^2.

    w16-vc uses 12 SR bits of 24 dropped (k < s), so its mean carries the exact SR bias.
    """
    cfg = preset(name)
    regs = step_registers(cfg, HyperParams(lr, temperature))
    assert not regs.vc_noise
    pm, s, k = cfg.vc_frac_bits, cfg.drop_bits, cfg.sr_k
    v = Fraction(regs.vc_var, 1 << 2 * pm)
    for theta, grad in _inputs(cfg, 30):
        mu = exact_sum(cfg, theta, grad, regs)
        mean, var = moments(update_distribution(cfg, theta, grad, regs))
        assert mean == Fraction(mu, 1 << s) + sr_bias(mu, s, k)
        f = Fraction((mu >> (s - k)) % (1 << k), 1 << k)  # the fraction SR actually sees
        assert abs(var - max(v, f * (1 - f))) <= Fraction(3, 2 << 2 * pm)
        assert abs(float(v) * cfg.weight.lsb**2 / (2 * lr * temperature) - 1) < 2e-3


def test_vc_branch_b_small_fraction_keeps_target_variance():
    """The top-up stays exact when f is tiny (the regime of small steps)."""
    cfg = preset("w8-vc")
    regs = step_registers(cfg, HyperParams(1e-4))
    v = Fraction(regs.vc_var, 1 << 2 * cfg.vc_frac_bits)
    for theta in (8, 16, 24, -8, -24):
        _, var = moments(update_distribution(cfg, theta, theta, regs))
        assert abs(var / v - 1) < Fraction(1, 100)


def test_naive_variance_excess_is_sr_variance():
    """naive: Var[out] - Var[x] == E[f(x)(1 - f(x))] exactly (x = mu + noise, f its fraction)."""
    cfg = preset("w8-naive")
    regs = step_registers(cfg, HyperParams(1e-4))
    s = cfg.drop_bits
    noise = _noise_terms(cfg, regs)
    for theta, grad in _inputs(cfg, 6):
        mu = exact_sum(cfg, theta, grad, regs)
        ex = sum(Fraction(mu + n, 1 << s) * p for n, p in noise)
        vx = sum(Fraction(mu + n, 1 << s) ** 2 * p for n, p in noise) - ex * ex
        excess = sum(Fraction((mu + n) % (1 << s), 1 << s) * (1 - Fraction((mu + n) % (1 << s), 1 << s)) * p
                     for n, p in noise)
        mean, var = moments(update_distribution(cfg, theta, grad, regs))
        assert mean == ex
        assert var - vx == excess
        assert 0 < excess <= Fraction(1, 4)  # the inflation VC removes


def test_lpf_emits_nearest_weight():
    cfg = preset("w8-lpf")
    regs = step_registers(cfg, HyperParams(1e-4))
    rng = np.random.default_rng(3)
    acc = rng.integers(cfg.acc.min_word, cfg.acc.max_word + 1, 20000)
    acc[:2] = cfg.acc.min_word, cfg.acc.max_word
    grad = rng.integers(-128, 128, 20000)
    words = rng.integers(0, 1 << 63, (20000, 1), dtype=np.uint64)
    out = update(cfg, acc, grad, regs, words)
    assert np.array_equal(out.weight, np.clip((out.state + (1 << 12)) >> 13, -128, 127))
    assert (out.state & ((1 << 13) - 1)).any()  # the accumulator keeps bits below the weight LSB


def test_saturation_is_the_only_inexactness():
    cfg = preset("w8-vc")
    regs = step_registers(cfg, HyperParams(3e-3))
    top = cfg.weight.max_word
    dist = update_distribution(cfg, top, cfg.grad.min_word, regs)  # pushes up past the range
    assert max(dist) == top and dist[top] > Fraction(1, 2)
    dist = update_distribution(cfg, cfg.weight.min_word, cfg.grad.max_word, regs)
    assert min(dist) == cfg.weight.min_word


def test_prior_term_shrinks_in_expectation():
    cfg = preset("w8-sgd-l")
    regs = step_registers(cfg, HyperParams(1e-3, weight_decay=0.1))  # decay register = 1e-4
    for theta in (-100, -7, 5, 99):
        mean, _ = moments(update_distribution(cfg, theta, 0, regs))
        expected = theta - Fraction(regs.decay * theta, 1 << cfg.decay.frac)
        assert mean == expected


def test_sr_distribution_zero_drop():
    assert sr_distribution(5, 0, 3) == {5: 1}


def test_gaussian_driven_variants_use_fresh_generator_bits():
    """Changing only the Gaussian field changes the naive output; changing unused bits does not."""
    cfg = preset("w8-naive")
    regs = step_registers(cfg, HyperParams(2e-3))
    rng = np.random.default_rng(1)
    words = rng.integers(0, 1 << 63, (5000, 1), dtype=np.uint64)
    th = np.zeros(5000, dtype=np.int64)
    base = update(cfg, th, th, regs, words).state
    top = words | np.uint64(0xFF << 56)  # bits above sr (24) + gauss (32) are unused
    assert np.array_equal(update(cfg, th, th, regs, top).state, base)
    flipped = words ^ np.uint64(0xFFFF << 24)
    assert not np.array_equal(update(cfg, th, th, regs, flipped).state, base)


def test_variant_properties():
    assert Variant.LP_F.has_accumulator and not Variant.VC.has_accumulator
    assert Variant.SGD_L.is_langevin is False and Variant.FP.is_langevin
    assert GaussianSpec().std == math.sqrt(65169 / 65536)


def test_vc_left_shift_is_counted_in_the_width_check():
    with pytest.raises(ValueError, match="exact sum needs"):
        DatapathConfig("vc", weight=FixedFormat(48, 0), grad=FixedFormat(48, 0), vc_frac_bits=15, rng_words=2,
                       step=FixedFormat(4, 0, signed=False), noise=FixedFormat(4, 0, signed=False))
