"""The BFP update datapath: numpy kernel == scalar Python-int model == torch kernel, and exactness by enumeration."""

import math
from fractions import Fraction

import numpy as np
import pytest
from bfp_reference import align, exponent, field, gauss_z, ref_update, row_mu, sr_frac, sr_var, value, window

from emulator.engines.bfp_engine import BfpEngine
from emulator.engines.numpy_engine import stream_words
from emulator.spec.bfp import BfpConfig, BfpFormat, BfpRegisters, BfpTensor, bfp_registers, check_registers, update
from emulator.spec.datapath import Variant
from emulator.spec.formats import FixedFormat
from emulator.spec.gaussian import GaussianSpec
from emulator.spec.host import HyperParams
from emulator.spec.rng import LaneRng

VARIANTS = ["vc", "naive", "lp_f", "sgd_l", "sgd_f"]






def regs_for(cfg, lr, wd=0.0, temperature=1.0, n=1):
    return bfp_registers(cfg, HyperParams(lr, temperature, n, wd))


def run_all(cfg, theta, grad, regs, seed):
    words = stream_words(LaneRng.seeded(cfg.rng, seed, cfg.lanes, cfg.rng_words), theta.mant.size)
    r = BfpEngine(cfg, seed).step(theta, grad, regs)
    ref = ref_update(cfg, theta, grad, regs, words)
    return r, ref, words


def assert_equal_ref(r, ref):
    assert np.array_equal(r.state.mant, ref[0]) and np.array_equal(r.state.exp, ref[1])
    assert np.array_equal(r.weight.mant, ref[2]) and np.array_equal(r.weight.exp, ref[3])


# ---- numpy kernel == scalar model == torch kernel over a matrix ---------------------------------

MATRIX = [
    (v, w, eb, lanes, lr, wd)
    for v in VARIANTS
    for w in (6, 8, 10)
    for eb, lanes in ((8, 1), (4, 4))
    for lr, wd in ((1e-3, 0.0), (3e-3, 5e-2))
]


@pytest.mark.parametrize(("variant", "width", "exp_bits", "lanes", "lr", "wd"), MATRIX)
def test_kernel_equals_scalar_model_and_torch(variant, width, exp_bits, lanes, lr, wd, bfp_builders):
    cfg = bfp_builders.make_cfg(variant, width, exp_bits, lanes, headroom=0 if lanes == 1 else 2)
    rng = np.random.default_rng([width, exp_bits, lanes, int(lr * 1e5)])
    theta = bfp_builders.mixed_rows(cfg.state, rng)
    grad = bfp_builders.mixed_rows(cfg.grad, rng, exps=list(rng.integers(cfg.grad.min_exp, cfg.grad.max_exp + 1, 9)))
    theta.mant[0] = cfg.state.max_mant  # full scale at the top exponent, pushed outward: saturates
    grad.mant[0], grad.exp[0] = -cfg.grad.max_mant, cfg.grad.max_exp
    regs = regs_for(cfg, lr, wd, temperature=0.5 if variant == "vc" else 1.0)
    r, ref, words = run_all(cfg, theta, grad, regs, seed=width + lanes)
    assert_equal_ref(r, ref)
    if variant == "vc":  # both branches occur in this tensor
        branch_a = [regs.vc_noise[e - cfg.weight.min_exp] > 0 for e in r.state.exp]
        assert any(branch_a) and not all(branch_a)
    assert r.state.exp[0] == cfg.state.max_exp
    assert np.abs(r.state.mant).max() == cfg.state.max_mant  # the overflow row saturates at the top exponent
    torch = pytest.importorskip("torch")

    def tt(b):
        return BfpTensor(torch.from_numpy(b.mant), torch.from_numpy(b.exp))

    rt = update(cfg, tt(theta), tt(grad), regs, torch.from_numpy(words.view(np.int64)))
    assert torch.equal(rt.state.mant, torch.from_numpy(r.state.mant))
    assert torch.equal(rt.state.exp, torch.from_numpy(r.state.exp))
    assert torch.equal(rt.weight.mant, torch.from_numpy(r.weight.mant))
    assert torch.equal(rt.weight.exp, torch.from_numpy(r.weight.exp))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("window_bits", [None, 40])
def test_narrow_window_and_few_sr_bits(variant, window_bits, bfp_builders):
    """A window that truncates terms and SR with fewer bits than dropped: still the scalar model's integers."""
    wb = (21 if variant in ("lp_f", "sgd_f") else 13) if window_bits is None else window_bits
    cfg = bfp_builders.make_cfg(variant, 8, 6, 4, window_bits=wb, sr_bits=5, vc_frac_bits=4)
    rng = np.random.default_rng(5)
    theta = bfp_builders.mixed_rows(cfg.state, rng, rows=6, cols=7, exps=[31, -32, 0, -3, 5, -20])
    grad = bfp_builders.mixed_rows(cfg.grad, rng, rows=6, cols=7, exps=[-30, 20, 3, -3, 0, -32])
    regs = regs_for(cfg, 2e-3, 1e-1)
    r, ref, _ = run_all(cfg, theta, grad, regs, seed=3)
    assert_equal_ref(r, ref)


def test_vectors_scalars_and_empty(bfp_builders):
    """A 1-D tensor's rows are single elements; a scalar is one block; empty tensors pass through."""
    cfg = bfp_builders.make_cfg("vc", 8, 8, 4)
    regs = regs_for(cfg, 1e-3)
    rng = np.random.default_rng(9)
    th = BfpTensor(rng.integers(-127, 128, 11), rng.integers(-6, 6, 11))
    g = BfpTensor(rng.integers(-127, 128, 11), rng.integers(-6, 6, 11))
    r, ref, _ = run_all(cfg, th, g, regs, 1)
    assert_equal_ref(r, ref)
    assert r.state.exp.shape == (11,)
    th0 = BfpTensor(np.array(100), np.array([2]))
    r0, ref0, _ = run_all(cfg, th0, BfpTensor(np.array(-5), np.array([0])), regs, 1)
    assert r0.state.mant.shape == () and r0.state.exp.shape == (1,)
    assert_equal_ref(r0, ref0)
    empty = BfpTensor(np.zeros((3, 0), np.int64), np.zeros(3, np.int64))
    re = BfpEngine(cfg, 1).step(empty, empty, regs)
    assert re.state.mant.shape == (3, 0) and np.array_equal(re.state.exp, [cfg.weight.min_exp] * 3)


def test_engine_continues_the_lane_streams(bfp_builders):
    """Two calls use consecutive words of each lane (element i -> lane i mod L), like NumpyEngine."""
    cfg = bfp_builders.make_cfg("naive", 8, 8, 4)
    regs = regs_for(cfg, 1e-3)
    rng = np.random.default_rng(2)
    th = bfp_builders.mixed_rows(cfg.weight, rng, rows=3, cols=3, exps=[0, 1, 2])
    g = bfp_builders.mixed_rows(cfg.grad, rng, rows=3, cols=3, exps=[0, 1, 2])
    eng = BfpEngine(cfg, 7)
    eng.step(th, g, regs)
    second = eng.step(th, g, regs)
    lanes = LaneRng.seeded(cfg.rng, 7, 4, 1)
    per_lane = [[], [], [], []]
    for _ in range(6):  # 9 elements: 3 cycles per call, lane 0 busy in all three
        out = lanes.next()
        for lane in range(4):
            per_lane[lane].append(out[lane])
    # first call: lanes 0..3 consumed 3,2,2,2 words; second call element i -> lane i mod 4 from there
    used = [3, 2, 2, 2]
    words = np.zeros((9, 1), np.uint64)
    for i in range(9):
        lane = i % 4
        words[i] = per_lane[lane][used[lane] + i // 4]
    assert_equal_ref(second, ref_update(cfg, th, g, regs, words))


# ---- registers and inputs ------------------------------------------------------------------


def test_vc_register_tables_follow_the_branch_rule(bfp_builders):
    cfg = bfp_builders.make_cfg("vc", 8, 8)
    hp = HyperParams(2.0**-15 + 2.0**-45)  # v just above D^2/4 of E = 0: that entry's noise word rounds to 0
    regs = bfp_registers(cfg, hp)
    v = Fraction(hp.noise_variance)
    p = cfg.vc_frac_bits
    seen = set()
    for i, e in enumerate(range(cfg.weight.min_exp, cfg.weight.max_exp + 1)):
        d2 = Fraction(2) ** (2 * (e + 2 - cfg.weight.width))
        if v > d2 / 4 and regs.vc_noise[i]:
            seen.add("A")
            extra = math.sqrt(float(v - d2 / 4)) / cfg.gaussian.std
            assert regs.vc_noise[i] == math.floor(extra * 2**cfg.noise.frac + 0.5) and regs.vc_var[i] == 0
        elif v > d2 / 4:
            seen.add("A->B")
            assert regs.vc_var[i] == 1 << (2 * p - 2)
        else:
            seen.add("B")
            assert regs.vc_noise[i] == 0
            assert regs.vc_var[i] == math.floor(v / d2 * 2 ** (2 * p) + Fraction(1, 2))
    assert seen == {"A", "A->B", "B"}


@pytest.mark.parametrize(
    ("variant", "regs", "msg"),
    [
        ("sgd_l", BfpRegisters(1 << 16), r"register step=65536 exceeds UQ\(16,24\) max 65535"),
        ("vc", BfpRegisters(1, noise=3, vc_noise=(0,) * 256, vc_var=(0,) * 256), r"register noise=3 is for naive/lp_f"),
        ("vc", BfpRegisters(1), r"VC needs vc_noise and vc_var tables of 256 entries"),
        ("vc", BfpRegisters(1, vc_noise=(0,) * 256, vc_var=(1 << 14,) * 256), r"vc_var entry 16384 exceeds v0 = 16384"
         if False else r"vc_var entry 16385 exceeds v0"),
        ("naive", BfpRegisters(1, vc_var=(1,)), r"registers vc_noise/vc_var are VC-only"),
    ],
)
def test_bad_registers(variant, regs, msg, bfp_builders):
    if "16385" in msg:
        regs = BfpRegisters(1, vc_noise=(0,) * 256, vc_var=(1 << 14 | 1,) * 256)
    with pytest.raises(ValueError, match=msg):
        check_registers(bfp_builders.make_cfg(variant), regs)


def test_bad_inputs(bfp_builders):
    cfg = bfp_builders.make_cfg("sgd_l")
    eng = BfpEngine(cfg, 0)
    regs = BfpRegisters(3)
    ok = BfpTensor(np.zeros((2, 3), np.int64), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"theta mantissa -128 outside BFP\(8,e8\) range \[-127, 127\]"):
        eng.step(BfpTensor(np.full((2, 3), -128), np.zeros(2, np.int64)), ok, regs)
    with pytest.raises(ValueError, match=r"grad exponent 128 outside BFP\(8,e8\) range \[-128, 127\]"):
        eng.step(ok, BfpTensor(np.zeros((2, 3), np.int64), np.array([0, 128])), regs)
    with pytest.raises(ValueError, match=r"theta exponents must have shape \(2,\)"):
        eng.step(BfpTensor(np.zeros((2, 3), np.int64), np.zeros(3, np.int64)), ok, regs)
    with pytest.raises(TypeError, match=r"theta mantissas must be an integer array"):
        eng.step(BfpTensor(np.zeros((2, 3)), np.zeros(2, np.int64)), ok, regs)
    with pytest.raises(ValueError, match=r"theta shape \(2, 3\) != grad shape \(3, 2\)"):
        eng.step(ok, BfpTensor(np.zeros((3, 2), np.int64), np.zeros(3, np.int64)), regs)
    with pytest.raises(ValueError, match=r"words must have shape \(6, 1\)"):
        update(cfg, ok, ok, regs, np.zeros((5, 1), np.uint64))


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        (dict(variant="lp_f"), ValueError, r"variant 'lp_f' needs a BfpFormat accumulator, got acc=None"),
        (dict(variant="lp_f", acc=BfpFormat(6)), ValueError, r"accumulator BFP\(6,e8\) is narrower than weight"),
        (dict(variant="vc", acc=BfpFormat(16)), ValueError, r"variant 'vc' has no accumulator"),
        (dict(variant="vc", weight=FixedFormat(8, 3)), TypeError, r"weight must be a BfpFormat, got FixedFormat"),
        (dict(variant="vc", window_bits=63), ValueError, r"window_bits must be in \[12, 62\], got 63"),
        (dict(variant="vc", sr_bits=0), ValueError, r"sr_bits must be in \[1, 48\], got 0"),
        (dict(variant="vc", sr_bits=48, rng_words=1), ValueError, r"need 2 generator words per update; rng_words=1"),
        (dict(variant="naive", step=FixedFormat(16, 24)), ValueError, r"step register format must be an unsigned"),
        (dict(variant="sgd_l", step=FixedFormat(60, 60, signed=False)), ValueError, r"term grad needs 67 magnitude"),
    ],
)
def test_bad_configs(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        BfpConfig(**kwargs)


# ---- exactness by enumeration over the random fields ----------------------------------------


def small_cfg(variant, **kw):
    return BfpConfig(
        variant, weight=BfpFormat(4, 4), grad=BfpFormat(4, 4),
        acc=BfpFormat(6, 4) if variant in ("lp_f", "sgd_f") else None,
        step=FixedFormat(4, 4, signed=False), noise=FixedFormat(4, 3, signed=False),
        gaussian=GaussianSpec("table", 2, 3, 3), vc_frac_bits=3, **kw,
    )


def enumerate_words(cfg, names, cols):
    """Every assignment of the named fields, one per row (all elements of a row share it): (n * cols, words)."""
    fs = [cfg.fields[n] for n in names]
    bits = sum(f.width for f in fs)
    idx = np.arange(1 << bits, dtype=np.uint64)
    words = np.zeros((1 << bits, cfg.rng_words), np.uint64)
    sh = 0
    for f in fs:
        words[:, f.word] |= ((idx >> np.uint64(sh)) & np.uint64((1 << f.width) - 1)) << np.uint64(f.offset)
        sh += f.width
    return np.repeat(words, cols, axis=0), 1 << bits


def run_enumerated(cfg, tm, te, gm, ge, regs, names):
    """Run one row under every random assignment; returns state mantissas (assignments, cols) and exponents."""
    cols = len(tm)
    words, n = enumerate_words(cfg, names, cols)
    th = BfpTensor(np.tile(np.array(tm, np.int64), (n, 1)), np.full(n, te, np.int64))
    g = BfpTensor(np.tile(np.array(gm, np.int64), (n, 1)), np.full(n, ge, np.int64))
    r = update(cfg, th, g, regs, words)
    return r.state.mant, r.state.exp


def moments(vals):
    """Exact mean and variance of equally likely values (counted, then summed as Fractions)."""
    counts: dict = {}
    for v in vals:
        counts[v] = counts.get(v, 0) + 1
    n = len(vals)
    mean = sum((v * c for v, c in counts.items()), Fraction(0)) / n
    return mean, sum(((v - mean) ** 2 * c for v, c in counts.items()), Fraction(0)) / n


@pytest.mark.parametrize(("window_bits", "sr_bits"), [(8, 6), (20, 6)])
def test_sr_unbiased_on_the_row_grid_or_exact_bias(window_bits, sr_bits):
    """sgd_l: E[out] equals the window sum on the row grid when k >= s, else the SR_k bias formula, exactly."""
    cfg = small_cfg("sgd_l", window_bits=window_bits, sr_bits=sr_bits)
    regs = BfpRegisters(11)
    tm, te, gm, ge = [7, -3, 0, 5, -6], 1, [-3, -7, 1, 0, 6], -2
    out, exp = run_enumerated(cfg, tm, te, gm, ge, regs, ["sr"])
    mu, a = row_mu(cfg, tm, te, gm, ge, regs)
    e = int(exp[0])
    assert (exp == e).all()
    s = e + 2 - cfg.weight.width - a["L"]
    k = cfg.sr_bits
    top = cfg.weight.max_mant
    saturating = 0
    for j, m in enumerate(mu):
        mean, var = moments([int(x) for x in out[:, j]])
        f = Fraction(sr_frac(m, s, k), 2**k)
        if (m >> s) >= top:  # the row maximum's top LSB interval: rounding up to 2^(W-1) saturates
            saturating += 1
            assert mean == top and var == 0
            continue
        if k >= s:
            assert mean == Fraction(m, 2**s)
        else:
            assert mean - Fraction(m, 2**s) == -Fraction(m % 2 ** (s - k), 2**s)
        assert var == f * (1 - f)
    assert saturating == 1  # element 0 sits in (7, 8) LSB: the one biased element
    assert s > k if window_bits == 20 else s <= k


def test_naive_mean_is_the_noisy_sum():
    """naive on 1-element rows (the exponent follows the noise): for every Gaussian draw the mean value is
    x = mu + noise exactly, except where x lies in the row maximum's top LSB interval and saturates."""
    cfg = small_cfg("naive", window_bits=8, sr_bits=8)
    regs = BfpRegisters(5, noise=3)
    nsr = 1 << cfg.fields["sr"].width
    checked = 0
    for tm, te, gm, ge in [([3], 0, [-5], 1), ([-6], 2, [7], -1), ([0], -3, [2], -8)]:
        out, exp = run_enumerated(cfg, tm, te, gm, ge, regs, ["sr", "gauss"])
        mu, a = row_mu(cfg, tm, te, gm, ge, regs)
        for gi in range(1 << cfg.fields["gauss"].width):
            sl = slice(gi * nsr, (gi + 1) * nsr)  # the sr field varies fastest
            n = 3 * gauss_z(cfg, gi)
            x = mu[0] + (n << (a["noise"] - a["L"]) if a["noise"] >= a["L"] else n >> (a["L"] - a["noise"]))
            mean, _ = moments([value(int(m), int(e), cfg.weight) for m, e in zip(out[sl, 0], exp[sl], strict=True)])
            e = int(exp[sl][0])
            grid = Fraction(2) ** (e + 2 - cfg.weight.width)
            xv = Fraction(x) * Fraction(2) ** a["L"]
            if abs(xv) < cfg.weight.max_mant * grid:
                assert mean == xv
                checked += 1
            else:
                assert abs(mean) == cfg.weight.max_mant * grid  # saturates (|x| / D in (7, 8))
    assert checked > 100


def test_vc_branch_a_conditional_mean_and_variance():
    """Branch A: for every Gaussian draw, out has mean (y - 2^(p-1)) / 2^p and variance exactly 1/4 LSB^2."""
    cfg = small_cfg("vc", window_bits=12)
    p = cfg.vc_frac_bits
    tm, te, gm, ge = [5, -7, 2, 0], 6, [3, -1, 7, -7], 4
    mu, a = row_mu(cfg, tm, te, gm, ge, BfpRegisters(9))
    e = exponent(mu, a["L"], cfg.weight)
    tab = [0] * 16
    tab[e - cfg.weight.min_exp] = 3  # the row's exponent takes branch A with noise word 3
    regs = BfpRegisters(9, vc_noise=tuple(tab), vc_var=(0,) * 16)
    out, exp = run_enumerated(cfg, tm, te, gm, ge, regs, ["vc", "gauss"])
    assert (exp == e).all()
    s = e + 2 - cfg.weight.width - a["L"]
    checked = 0
    nvc = 1 << cfg.fields["vc"].width
    gf = cfg.fields["gauss"]
    for gi in range(1 << gf.width):
        block = out[gi * nvc:(gi + 1) * nvc]  # the vc field varies fastest
        z = gauss_z(cfg, gi)
        for j, m in enumerate(mu):
            x = m + (3 * z << (a["noise"] - a["L"]) if a["noise"] >= a["L"] else 3 * z >> (a["L"] - a["noise"]))
            xp = (x + (1 << (s - p - 1))) >> (s - p) if s > p else x << (p - s)
            mean, var = moments([int(v) for v in block[:, j]])
            if abs(xp) < (cfg.weight.max_mant - 1) << p:  # exact away from saturation
                assert mean == Fraction(xp, 2**p) and var == Fraction(1, 4)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize("var_reg", [0, 5, 16])
def test_vc_branch_b_hits_the_target_variance(var_reg):
    """Branch B: variance = f(1-f) + max(vc_var - vs, 0) / 2^2p exactly,
    i.e. max(v, f(1-f)) up to the 2^-2p rounding."""
    cfg = small_cfg("vc", window_bits=12, sr_bits=8)
    p, k = cfg.vc_frac_bits, cfg.sr_bits
    regs = BfpRegisters(9, vc_noise=(0,) * 16, vc_var=(var_reg,) * 16)
    tm, te, gm, ge = [5, -7, 2, 0, 6], 3, [3, -1, 7, -7, 5], 1
    mu, a = row_mu(cfg, tm, te, gm, ge, regs)
    out, exp = run_enumerated(cfg, tm, te, gm, ge, regs, ["vc", "sr"])
    s = int(exp[0]) + 2 - cfg.weight.width - a["L"]
    checked = 0
    for j, m in enumerate(mu):
        if abs(m >> s) >= cfg.weight.max_mant - 1:  # q + c may saturate
            continue
        checked += 1
        mean, var = moments([int(v) for v in out[:, j]])
        fk = sr_frac(m, s, k)
        f = Fraction(fk, 2**k)
        assert mean == Fraction(m >> s) + f  # SR's mean (k >= s here)
        assert var == f * (1 - f) + Fraction(max(var_reg - sr_var(fk, k, p), 0), 2 ** (2 * p))
        target = max(Fraction(var_reg, 2 ** (2 * p)), f * (1 - f))
        assert abs(var - target) < Fraction(3, 2 ** (2 * p + 1))
    assert s <= k and checked >= 3


def test_window_truncation_bias_bound(bfp_builders):
    """Each term is floored at the window LSB: the window sum is within (-terms * 2^L, 0] of the exact sum."""
    cfg = bfp_builders.make_cfg("sgd_l", 8, 8, window_bits=14)
    regs = BfpRegisters(40000, decay=1000)
    rng = np.random.default_rng(0)
    for _ in range(50):
        tm = [int(x) for x in rng.integers(-127, 128, 4)]
        gm = [int(x) for x in rng.integers(-127, 128, 4)]
        te, ge = (int(x) for x in rng.integers(-20, 20, 2))
        mu, a = row_mu(cfg, tm, te, gm, ge, regs)
        for m, t, g in zip(mu, tm, gm, strict=True):
            exact = (Fraction(t) * 2 ** Fraction(a["theta"]) - Fraction(regs.step * g) * Fraction(2) ** a["grad"]
                     - Fraction(regs.decay * t) * Fraction(2) ** a["decay"])
            err = Fraction(m) * Fraction(2) ** a["L"] - exact
            assert -3 * Fraction(2) ** a["L"] < err <= 0


def test_field_helper_matches_kernel_layout(bfp_builders):
    cfg = bfp_builders.make_cfg("vc")
    assert cfg.fields["vc"].width == 2 * cfg.vc_frac_bits + 1
    assert field([0xABCDEF], cfg.fields["vc"]) == 0xABCDEF & ((1 << 17) - 1)
    assert window(cfg, 0, 0)["L"] == max(1, 2 - 8 - 24 + 16 + 8 - 1, -(27) + (65535 * 1476).bit_length(),
                                         -6 - 24 + 12 + 7) + 2 - 48
    assert Variant(cfg.variant) is Variant.VC


def test_engine_checkpoint_resumes_bit_identically(bfp_builders):
    cfg = bfp_builders.make_cfg("vc", 8, 8, 4)
    regs = regs_for(cfg, 1e-3)
    rng = np.random.default_rng(4)
    th, g = bfp_builders.mixed_rows(cfg.weight, rng), bfp_builders.mixed_rows(cfg.grad, rng)
    eng = BfpEngine(cfg, 3)
    eng.step(th, g, regs)
    saved = eng.state_dict()
    a = eng.step(th, g, regs)
    other = BfpEngine(cfg, 99)
    other.load_state_dict(saved)
    b = other.step(th, g, regs)
    assert np.array_equal(a.state.mant, b.state.mant) and np.array_equal(a.state.exp, b.state.exp)


def test_paper_scale_hyperparameters_fit_a_bfp8_configuration():
    """lr 0.5, weight decay 5e-4, T 1e-3, N 50000 (the paper's CIFAR run) with BFP(8) and sized registers."""
    cfg = BfpConfig("vc", step=FixedFormat(16, 16, signed=False), noise=FixedFormat(16, 24, signed=False),
                    decay=FixedFormat(12, 22, signed=False))
    regs = bfp_registers(cfg, HyperParams(0.5, 1e-3, 50000, 5e-4))
    assert regs.step == 1 << 15 and regs.decay == round(2.5e-4 * 2**22)
    e_a = [e for e in range(-128, 128) if regs.vc_noise[e + 128]]
    assert max(e_a) == -6  # D = 2^-12 < 2 sqrt(v) = 2.8e-4 < 2^-11: rows with max |mu| < 2^-5 take branch A
    th = cfg.weight.quantize(np.random.default_rng(0).normal(size=(16, 27)) * 0.05)
    g = cfg.grad.quantize(np.random.default_rng(1).normal(size=(16, 27)) * 1e-2)
    r = BfpEngine(cfg, 0).step(th, g, regs)
    assert np.abs(cfg.weight.to_float(r.weight) - cfg.weight.to_float(th)).max() < 0.05


def test_cuda_equals_cpu(bfp_builders):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    for variant in VARIANTS:
        cfg = bfp_builders.make_cfg(variant, 8, 8, 4)
        rng = np.random.default_rng(1)
        th, g = bfp_builders.mixed_rows(cfg.state, rng), bfp_builders.mixed_rows(cfg.grad, rng)
        regs = regs_for(cfg, 1e-3)
        words = torch.from_numpy(stream_words(LaneRng.seeded(cfg.rng, 1, 4, 1), th.mant.size).view(np.int64))

        def on(b, dev):
            return BfpTensor(torch.from_numpy(b.mant).to(dev), torch.from_numpy(b.exp).to(dev))

        rc = update(cfg, on(th, "cpu"), on(g, "cpu"), regs, words)
        rg = update(cfg, on(th, "cuda"), on(g, "cuda"), regs, words.cuda())
        for x, y in zip(rc.state + rc.weight, rg.state + rg.weight, strict=True):
            assert torch.equal(x, y.cpu())


def test_torch_kernel_rejects_wrong_dtypes(bfp_builders):
    torch = pytest.importorskip("torch")
    cfg = bfp_builders.make_cfg("sgd_l")
    ok = BfpTensor(torch.zeros((2, 3), dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"update\(\) needs int64 words, got torch.uint64"):
        update(cfg, ok, ok, BfpRegisters(1), torch.zeros((6, 1), dtype=torch.uint64))
    with pytest.raises(TypeError, match=r"words must be a torch tensor like theta.mant"):
        update(cfg, ok, ok, BfpRegisters(1), np.zeros((6, 1), np.uint64))
    with pytest.raises(TypeError, match=r"update\(\) needs int64 theta.mant, got torch.int32"):
        update(cfg, BfpTensor(ok.mant.int(), ok.exp), ok, BfpRegisters(1), torch.zeros((6, 1), dtype=torch.int64))








def test_random_configurations_equal_the_scalar_model(bfp_builders):
    """Random formats, windows, SR / VC widths and registers at their limits: kernel == scalar model == torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2026)
    built = 0
    while built < 60:
        try:
            cfg = bfp_builders.random_config(rng)
        except ValueError:
            continue  # e.g. a term wider than 60 bits: rejected configurations are tested elsewhere
        built += 1
        regs = bfp_builders.random_registers(cfg, rng)
        rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        th, g = bfp_builders.random_bfp(cfg.state, rng, rows, cols), bfp_builders.random_bfp(cfg.grad, rng, rows, cols)
        words = rng.integers(0, 1 << 64, size=(rows * cols, 3), dtype=np.uint64)
        r = update(cfg, th, g, regs, words)
        assert_equal_ref(r, ref_update(cfg, th, g, regs, words))
        rt = update(cfg, BfpTensor(torch.from_numpy(th.mant), torch.from_numpy(th.exp)),
                    BfpTensor(torch.from_numpy(g.mant), torch.from_numpy(g.exp)), regs,
                    torch.from_numpy(words.view(np.int64)))
        assert np.array_equal(rt.weight.mant.numpy(), r.weight.mant)
        assert np.array_equal(rt.weight.exp.numpy(), r.weight.exp)


def test_vc_branch_a_noise_overflowing_the_mu_grid_takes_the_coarser_exponent():
    """A small row with large noise: D0 from mu picks branch A, the noisy row's exponent sets the grid
    (never finer than D0); per Gaussian draw the mean is RN(x) at p bits and the variance 1/4 LSB^2."""
    cfg = small_cfg("vc", window_bits=14)
    p = cfg.vc_frac_bits
    tm, te, gm, ge = [1, -1], -6, [1, 2], -8
    mu, a = row_mu(cfg, tm, te, gm, ge, BfpRegisters(9))
    e0 = exponent(mu, a["L"], cfg.weight)
    regs = BfpRegisters(9, vc_noise=tuple(15 if e == e0 else 0 for e in range(-8, 8)), vc_var=(0,) * 16)
    out, exp = run_enumerated(cfg, tm, te, gm, ge, regs, ["vc", "gauss"])
    nvc = 1 << cfg.fields["vc"].width
    coarser = 0
    for gi in range(1 << cfg.fields["gauss"].width):
        z = gauss_z(cfg, gi)
        xs = [m + align(15 * z, a["noise"], a["L"]) for m in mu]
        e = max(e0, exponent(xs, a["L"], cfg.weight))
        block = out[gi * nvc:(gi + 1) * nvc]
        assert (exp[gi * nvc:(gi + 1) * nvc] == e).all()
        coarser += e > e0
        s = e + 2 - cfg.weight.width - a["L"]
        for j, x in enumerate(xs):
            xp = (x + (1 << (s - p - 1))) >> (s - p) if s > p else x << (p - s)
            mean, var = moments([int(v) for v in block[:, j]])
            if abs(xp) < (cfg.weight.max_mant - 1) << p:
                assert mean == Fraction(xp, 2**p) and var == Fraction(1, 4)
    assert coarser > 10


@pytest.mark.parametrize(("variant", "headroom"), [("sgd_l", 1), ("vc", 2)])
def test_headroom_removes_the_row_maximum_saturation_bias(variant, headroom):
    """With headroom, the row maximum never saturates: SR is exactly unbiased and VC's variance exact for every
    element (k >= s), where headroom 0 (QPyTorch's exponent rule) biases the top element toward zero."""
    regs = BfpRegisters(11) if variant == "sgd_l" else BfpRegisters(11, vc_noise=(0,) * 16, vc_var=(7,) * 16)
    tm, te, gm, ge = [7, -3, 0, 5, -6], 1, [-3, -7, 1, 0, 6], -2
    names = ["sr"] if variant == "sgd_l" else ["sr", "vc"]
    for h in (0, headroom):
        cfg = small_cfg(variant, window_bits=8, sr_bits=6, headroom=h)
        out, exp = run_enumerated(cfg, tm, te, gm, ge, regs, names)
        mu, a = row_mu(cfg, tm, te, gm, ge, regs)
        e = int(exp[0])
        assert e == exponent(mu, a["L"], cfg.weight, h)
        s = e + 2 - cfg.weight.width - a["L"]
        assert s <= cfg.sr_bits
        means = [moments([int(v) for v in out[:, j]])[0] for j in range(len(mu))]
        exact = [Fraction(m, 2**s) for m in mu]
        if h == 0:
            assert means[0] < exact[0] and means[1:] == exact[1:]  # element 0 sits in the top interval
        else:
            assert means == exact and e == exponent(mu, a["L"], cfg.weight) + 1
