"""The Triton lane kernels (emulator.engines.gpu_kernels) == NumpyEngine / BfpEngine / torch reference, word for word.

Without a GPU the kernels run under Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported): small tensors, a small chunk target so that the in-kernel
jump-ahead, partial chunks and partial last cycles all occur. The larger matrix runs with LPSGLD_SOAK=1.
On a CUDA machine the `cuda` tests compare the device with the CPU reference path.
"""

import dataclasses
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")  # CI installs it (the `triton` extra)

from emulator.engines import gpu_kernels as gk  # noqa: E402
from emulator.engines.bfp_engine import BfpEngine  # noqa: E402
from emulator.engines.numpy_engine import NumpyEngine  # noqa: E402
from emulator.engines.torch_bfp_engine import TorchBfpEngine, quantize_torch  # noqa: E402
from emulator.engines.torch_engine import TorchEngine, TorchLaneRng, torch_quantize, torch_stream_words  # noqa: E402
from emulator.optim import LowPrecisionSGLD  # noqa: E402
from emulator.optim.optimizer import sgld_bfp, sgld_lp  # noqa: E402
from emulator.spec.bfp import BfpConfig, BfpFormat, BfpTensor, bfp_registers  # noqa: E402
from emulator.spec.datapath import DatapathConfig, StepRegisters, Variant  # noqa: E402
from emulator.spec.formats import FixedFormat  # noqa: E402
from emulator.spec.gaussian import GaussianSpec  # noqa: E402
from emulator.spec.host import HyperParams, step_registers  # noqa: E402
from emulator.spec.presets import PRESETS, preset  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SOAK = os.environ.get("LPSGLD_SOAK") == "1"
CUDA = torch.cuda.is_available()
interpreted = pytest.mark.skipif(not INTERPRET, reason="CUDA machine: the interpreter tests run without a GPU "
                                                       "(TRITON_INTERPRET=1); the cuda tests run here")
soak = pytest.mark.skipif(not SOAK, reason="LPSGLD_SOAK=1 runs the larger kernel matrix")
TARGET = 16  # virtual lanes aimed for: forces chunks (jumps) on these small tensors

# (lr, temperature): VC branch A, then B
_LRS = {"w4": ((0.5, 1.0), (0.5, 0.01)), "w8": ((2e-3, 1.0), (1e-4, 1.0)), "w16": ((1e-3, 1.0), (1e-3, 1e-6))}


def _regs(cfg, family, lrs=None):
    out = []
    for lr, temp in lrs or _LRS[family]:
        for wd in (0.05, 0.0):
            try:
                out.append(step_registers(cfg, HyperParams(lr, temp, weight_decay=wd)))
            except ValueError:  # decay underflows at the smallest lr: covered by the other cases
                continue
    return out


def _words(rng, fmt, n, corners=True):
    w = rng.integers(fmt.min_word, fmt.max_word + 1, n)
    if corners and n >= 4:  # saturation corners
        w[:4] = fmt.min_word, fmt.max_word, fmt.max_word, fmt.min_word
    return w


def _states(rng_np):
    t = TorchLaneRng.from_lane_rng(rng_np)
    return t.s0.clone(), t.s1.clone()


def _same_lanes(s0, s1, lane_rng):
    return torch.equal(s0.cpu(), torch.from_numpy(lane_rng.s0.view(np.int64))) and \
        torch.equal(s1.cpu(), torch.from_numpy(lane_rng.s1.view(np.int64)))


def run_fixed(cfg, regs_list, sizes, *, seed=7, dtype=torch.int64, in_place=False, target=TARGET, device="cpu"):
    """gk.fixed_update == NumpyEngine.step over successive calls (streams continue), lane states included."""
    rng = np.random.default_rng(seed)
    ne = NumpyEngine(cfg, seed, path="reference")
    s0, s1 = (t.to(device) for t in _states(ne.rng))
    for i, n in enumerate(sizes):
        regs = regs_list[i % len(regs_list)]
        theta, grad = _words(rng, cfg.state, n), _words(rng, cfg.grad, n)
        want = ne.step(theta, grad, regs)
        th = torch.from_numpy(theta).to(device=device, dtype=dtype)
        g = torch.from_numpy(grad).to(device=device, dtype=dtype)
        state = th if in_place else torch.empty_like(th)
        weight = torch.empty_like(th) if cfg.variant.has_accumulator else state
        gk.fixed_update(cfg, regs, s0, s1, th, g, state, weight, target=target)
        assert torch.equal(state.cpu().to(torch.int64), torch.from_numpy(want.state)), (cfg.variant, i, n, regs)
        assert torch.equal(weight.cpu().to(torch.int64), torch.from_numpy(want.weight)), (cfg.variant, i, n, regs)
        assert _same_lanes(s0, s1, ne.rng), (cfg.variant, i, n)


# ---- the fixed-point datapath ------------------------------------------------------------------


@interpreted
@pytest.mark.parametrize("index", range(len(PRESETS)))
def test_fixed_presets_equal_numpy_engine(index):
    """Every preset, lanes 1 / 4 / 8 in turn, both VC branches, decay on and off, saturation corners,
    two calls (the second continues the streams) with partial last cycles and chunked lanes."""
    name = PRESETS[index]
    cfg = preset(name, (1, 4, 8)[index % 3])
    run_fixed(cfg, _regs(cfg, name.split("-")[0]), (37, 70))


def test_vc_register_cases_cover_both_branches():
    for fam in ("w4", "w8", "w16"):
        regs = _regs(preset(f"{fam}-vc"), fam)
        assert any(r.vc_noise for r in regs) and not all(r.vc_noise for r in regs), fam


@interpreted
def test_fixed_options_equal_numpy_engine():
    """sr_bits 1 and 3, two generator words, a CLT Gaussian, VC branch B without dropped bits, narrow word
    dtypes written in place, M < L at 1024 lanes, a large lane count (65536) and the unchunked schedule."""
    w8 = _regs(preset("w8-vc"), "w8")
    run_fixed(dataclasses.replace(preset("w8-vc", 8), sr_bits=1), w8, (50,))
    run_fixed(dataclasses.replace(preset("w8-lpf", 4), sr_bits=3), _regs(preset("w8-lpf"), "w8"), (40,))
    two = dataclasses.replace(preset("w8-vc", 4), gaussian=GaussianSpec("table", 6, 8, 8), rng_words=2)
    assert two.fields["gauss"].word == 1
    run_fixed(two, _regs(two, "w8"), (41, 6))
    clt = dataclasses.replace(preset("w8-naive", 4), gaussian=GaussianSpec("clt", 3, 5, 0))
    run_fixed(clt, _regs(clt, "w8"), (30,))
    s0cfg = DatapathConfig(Variant.VC, step=FixedFormat(8, 0, signed=False), noise=FixedFormat(8, 0, signed=False),
                           gaussian=GaussianSpec("table", 2, 3, 0), vc_frac_bits=3, lanes=3)
    assert s0cfg.drop_bits == 0
    run_fixed(s0cfg, [StepRegisters(1, vc_var=5), StepRegisters(3, vc_var=16)], (10, 7))
    run_fixed(preset("w8-sgd-f", 4), _regs(preset("w8-sgd-f"), "w8"), (33,), dtype=torch.int32, in_place=True)
    run_fixed(preset("w8-vc", 4), w8, (29,), dtype=torch.int8, in_place=True)
    run_fixed(preset("w8-vc", 1024), w8, (5, 3, 1030))
    run_fixed(preset("w8-naive", 65536), _regs(preset("w8-naive"), "w8"), (300, 7))
    run_fixed(preset("w16-vc", 8), _regs(preset("w16-vc"), "w16"), (64, 33), target=None)


@interpreted
def test_stream_uniforms_equal_torch_stream_words():
    for lanes in (1, 5):
        a = TorchLaneRng.seeded(preset("w8-vc").rng, 3, lanes, 1)
        g0, g1 = a.s0.clone(), a.s1.clone()
        for n in (37, 0, 4):
            want = torch_stream_words(a, n)[:, 0] & ((1 << 20) - 1)
            assert torch.equal(gk.stream_uniforms(a.spec, g0, g1, n, 20, target=TARGET), want)
        assert torch.equal(g0, a.s0) and torch.equal(g1, a.s1)


def _fixed_group_case(variant, lanes, rounding, device="cpu", steps=2, dtype=torch.int64, target=TARGET,
                      mixed=False):
    """gk.fixed_group_step == sgld_lp with the reference engine: words, float weights, both streams.
    ``mixed``: a float64 parameter among float32 ones (one launch per tensor instead of one per group)."""
    from emulator.studies.torch_bench import bench_config

    cfg = bench_config(variant, lanes)
    gen = torch.Generator().manual_seed(1)
    shapes = [(6, 3, 3), (7,), (13, 11), ()]
    init = [0.05 * torch.randn(s, generator=gen) for s in shapes]
    grads = [[0.05 * torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    grads[0][2][0, :3] = torch.tensor([float("inf"), -1e30, 2.0**-60])  # saturating and sub-LSB gradients
    if mixed:
        init[1] = init[1].double()
        for g in grads:
            g[1] = g[1].double()
    regs = step_registers(cfg, HyperParams(0.5, 1.0, 50000, 5e-4))
    eng = TorchEngine(cfg, 3, path="reference")
    grng = TorchLaneRng.seeded(cfg.rng, 4, cfg.lanes, 1)
    ps = [x.clone() for x in init]
    words = [torch_quantize(p, cfg.state) for p in ps]
    qs = [x.clone().to(device) for x in init]
    qwords = [w.clone().to(device=device, dtype=dtype) for w in words]
    s0, s1, g0, g1 = (t.clone().to(device) for t in (eng.rng.s0, eng.rng.s1, grng.s0, grng.s1))
    for st in range(steps):
        sgld_lp(ps, grads[st], words, engine=eng, grad_rng=grng, regs=regs, grad_rounding=rounding, grad_sr_bits=20)
        gk.fixed_group_step(cfg, regs, s0, s1, g0, g1, qs, [g.to(device) for g in grads[st]], qwords,
                            rounding=rounding, sr_bits=20, target=target)
        for i in range(len(shapes)):
            assert torch.equal(qs[i].cpu(), ps[i]), (variant, rounding, st, i)
            assert torch.equal(qwords[i].cpu().to(torch.int64), words[i]), (variant, rounding, st, i)
        assert torch.equal(s0.cpu(), eng.rng.s0) and torch.equal(s1.cpu(), eng.rng.s1)
        assert torch.equal(g0.cpu(), grng.s0) and torch.equal(g1.cpu(), grng.s1)


@interpreted
@pytest.mark.parametrize(("variant", "rounding", "dtype", "mixed"), [("vc", "stochastic", torch.int8, False),
                                                                      ("lp_f", "nearest", torch.int64, False),
                                                                      ("naive", "stochastic", torch.int16, True)])
def test_fixed_group_step_equals_sgld_lp(variant, rounding, dtype, mixed):
    _fixed_group_case(variant, 4, rounding, dtype=dtype, mixed=mixed)


# ---- the BFP datapath --------------------------------------------------------------------------


def _bfp_cfg(variant, width=8, exp_bits=8, lanes=1, **kw):
    acc = BfpFormat(width + 8, exp_bits) if variant in ("lp_f", "sgd_f") else None
    kw.setdefault("decay", FixedFormat(12, 24, signed=False))
    return BfpConfig(variant, weight=BfpFormat(width, exp_bits), grad=BfpFormat(width, exp_bits), acc=acc,
                     lanes=lanes, **kw)


def _mixed_rows(fmt, rng, rows, cols, exps=None):
    """Rows of mixed magnitudes: both exponent limits, full-scale rows, an all-zero row, tiny mantissas."""
    if exps is None:
        extra = rng.integers(fmt.min_exp, fmt.max_exp + 1, max(0, rows - 9))
        exps = [fmt.max_exp, fmt.min_exp, 0, -3, 2, -1, 1, fmt.max_exp - 1, -5, *extra][:rows]
    m = fmt.max_mant
    mant = rng.integers(-m, m + 1, size=(rows, cols))
    mant[0] = m  # full scale at the top exponent: saturates
    if rows > 3:
        mant[3] = 0
    if rows > 5:
        mant[5] = rng.integers(-2, 3, size=cols)
    return BfpTensor(mant.astype(np.int64), np.array(exps, dtype=np.int64))


def _tt(b, device="cpu", dtype=torch.int64):
    return BfpTensor(torch.from_numpy(np.ascontiguousarray(b.mant)).to(device=device, dtype=dtype),
                     torch.from_numpy(np.asarray(b.exp)).to(device=device, dtype=dtype))


def run_bfp(cfg, regs, shapes, *, seed=5, device="cpu", dtype=torch.int64, in_place=False, target=TARGET):
    """gk.bfp_update == BfpEngine.step over successive calls, lane states included; returns the last result."""
    rng = np.random.default_rng(seed)
    eng = BfpEngine(cfg, seed, path="reference")
    s0, s1 = (t.to(device) for t in _states(eng.rng))
    want = None
    for i, (rows, cols) in enumerate(shapes):
        theta = _mixed_rows(cfg.state, rng, rows, cols)
        grad = _mixed_rows(cfg.grad, rng, rows, cols, exps=rng.integers(cfg.grad.min_exp, cfg.grad.max_exp + 1, rows))
        grad.mant[0], grad.exp[0] = -cfg.grad.max_mant, cfg.grad.max_exp
        want = eng.step(theta, grad, regs)
        th, g = _tt(theta, device, dtype), _tt(grad, device, dtype)
        out = th if in_place else BfpTensor(torch.empty_like(th.mant), torch.empty_like(th.exp))
        w = BfpTensor(torch.empty_like(th.mant), torch.empty_like(th.exp)) if cfg.variant.has_accumulator else None
        gk.bfp_update(cfg, regs, s0, s1, th, g, out, w, target=target)
        for got, ref in ((out, want.state), (w, want.weight) if w is not None else (out, want.weight)):
            assert torch.equal(got.mant.cpu().to(torch.int64), torch.from_numpy(ref.mant)), (cfg.variant, i)
            assert torch.equal(got.exp.cpu().to(torch.int64), torch.from_numpy(ref.exp)), (cfg.variant, i)
        assert _same_lanes(s0, s1, eng.rng), (cfg.variant, i)
    return want


BFP_CASES = [("vc", 8, 8, 1, 0), ("naive", 6, 4, 4, 2), ("lp_f", 10, 8, 8, 1), ("sgd_l", 8, 8, 4, 1),
             ("sgd_f", 6, 4, 1, 0)]


@interpreted
@pytest.mark.parametrize(("variant", "width", "exp_bits", "lanes", "headroom"), BFP_CASES)
def test_bfp_equals_bfp_engine(variant, width, exp_bits, lanes, headroom):
    """Every variant, both VC branches in one tensor, headroom 0/1/2, exponent limits, saturating rows,
    two calls continuing the streams, chunked lanes."""
    cfg = _bfp_cfg(variant, width, exp_bits, lanes, headroom=headroom)
    regs = bfp_registers(cfg, HyperParams(3e-3, 0.5 if variant == "vc" else 1.0, 1, 5e-2))
    r = run_bfp(cfg, regs, [(9, 5), (9, 8)])
    if variant == "vc":
        branch_a = [regs.vc_noise[e - cfg.weight.min_exp] > 0 for e in r.state.exp]
        assert any(branch_a) and not all(branch_a)


@interpreted
def test_bfp_options_equal_bfp_engine():
    """A window that truncates terms with few SR bits, narrow dtypes in place, vectors, a scalar, empty rows,
    M < L, a large lane count."""
    for variant, wb in (("vc", 13), ("lp_f", 21)):
        cfg = _bfp_cfg(variant, 8, 6, 4, window_bits=wb, sr_bits=5, vc_frac_bits=4)
        run_bfp(cfg, bfp_registers(cfg, HyperParams(2e-3, 1.0, 1, 1e-1)), [(6, 7)])
    cfg = _bfp_cfg("vc", 8, 8, 4, headroom=2)
    regs = bfp_registers(cfg, HyperParams(1e-3, 0.5, 1))
    run_bfp(cfg, regs, [(9, 5)], dtype=torch.int16, in_place=True)
    eng = BfpEngine(cfg, 1, path="reference")
    s0, s1 = _states(eng.rng)
    rng = np.random.default_rng(9)
    for shape in ((11,), (), (3, 0)):
        n = int(np.prod(shape))
        rows = shape[0] if shape else 1
        th = BfpTensor(rng.integers(-127, 128, n).reshape(shape), rng.integers(-6, 6, rows))
        g = BfpTensor(rng.integers(-127, 128, n).reshape(shape), rng.integers(-6, 6, rows))
        want = eng.step(th, g, regs)
        out = BfpTensor(torch.empty(shape, dtype=torch.int64), torch.empty(rows, dtype=torch.int64))
        gk.bfp_update(cfg, regs, s0, s1, _tt(th), _tt(g), out, None, target=TARGET)
        assert torch.equal(out.mant, torch.from_numpy(want.state.mant)), shape
        assert torch.equal(out.exp, torch.from_numpy(want.state.exp)), shape
        assert _same_lanes(s0, s1, eng.rng)
    big = _bfp_cfg("naive", 8, 8, 65536, headroom=1)
    run_bfp(big, bfp_registers(big, HyperParams(3e-3, 1.0, 1)), [(20, 9)])


def _bfp_group_case(variant, rounding, device="cpu", steps=2, target=TARGET, dtype=torch.int64):
    """gk.bfp_group_step == sgld_bfp with the reference engine: mantissas, exponents, weights, streams."""
    cfg = BfpConfig.paper(variant, lanes=4, temperature=1.0, dataset_size=500)
    gen = torch.Generator().manual_seed(1)
    shapes = [(6, 3, 3), (7,), (13, 11), ()]
    init = [0.05 * torch.randn(s, generator=gen) for s in shapes]
    grads = [[0.05 * torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    grads[0][2][1, :2] = torch.tensor([float("-inf"), 3e30])
    regs = bfp_registers(cfg, HyperParams(0.5, 1.0, 500, 5e-4), underflow="flush")
    eng = TorchBfpEngine(cfg, 3, path="reference")
    grng = TorchLaneRng.seeded(cfg.rng, 4, cfg.lanes, 1)

    def initial(dev, dt):
        out = []
        for p in init:
            t = quantize_torch(p, cfg.state, "nearest", headroom=cfg.headroom)
            out.append({"mant": t.mant.to(device=dev, dtype=dt), "exp": t.exp.to(device=dev, dtype=dt)})
        return out

    ref_states, states = initial("cpu", torch.int64), initial(device, dtype)
    ps = [x.clone() for x in init]
    qs = [x.clone().to(device) for x in init]
    s0, s1, g0, g1 = (t.clone().to(device) for t in (eng.rng.s0, eng.rng.s1, grng.s0, grng.s1))
    for st in range(steps):
        sgld_bfp(ps, grads[st], ref_states, engine=eng, grad_rng=grng, regs=regs, grad_rounding=rounding,
                 grad_sr_bits=20, grad_headroom=1)
        gk.bfp_group_step(cfg, regs, s0, s1, g0, g1, qs, [g.to(device) for g in grads[st]], states,
                          rounding=rounding, sr_bits=20, headroom=1, target=target)
        for i in range(len(shapes)):
            assert torch.equal(qs[i].cpu(), ps[i]), (variant, st, i)
            for k, v in ref_states[i].items():
                assert torch.equal(states[i][k].cpu().to(torch.int64), v), (variant, st, i, k)
        assert torch.equal(s0.cpu(), eng.rng.s0) and torch.equal(g0.cpu(), grng.s0)
        assert torch.equal(s1.cpu(), eng.rng.s1) and torch.equal(g1.cpu(), grng.s1)


@interpreted
@pytest.mark.parametrize(("variant", "rounding"), [("vc", "stochastic"), ("lp_f", "nearest")])
def test_bfp_group_step_equals_sgld_bfp(variant, rounding):
    _bfp_group_case(variant, rounding, dtype=torch.int16 if variant == "vc" else torch.int64)


@interpreted
def test_gradient_quantization_keeps_the_sign_of_underflowing_values():
    """docs/spec.md: |x 2^F| < 2^-64 rounds as +-2^-64; with F = -3, -5e-324 * 2^-3 underflows to -0 in
    float64, and SR with one bit must still give -1 with probability 1/2 (as FixedFormat.quantize)."""
    cfg = dataclasses.replace(preset("w8-lpf", 4), grad=FixedFormat(8, -3))
    regs = step_registers(cfg, HyperParams(1e-3, 1.0, 1))
    grad = torch.tensor([-5e-324, 5e-324, -1e-300] * 20, dtype=torch.float64)
    out = []
    for path in ("reference", "triton"):
        g = TorchLaneRng.seeded(cfg.rng, 9, 4, 1)
        r = TorchEngine(cfg, 2, path=path).step_quantize(torch.zeros(60, dtype=torch.int64), grad, regs,
                                                         grad_rng=g, rounding="stochastic", sr_bits=1)
        out.append(r.state)
    assert torch.equal(out[0], out[1])


# ---- wiring: engines and the optimizer on the triton path ---------------------------------------


@interpreted
def test_engines_on_the_triton_path_equal_the_reference_path():
    cfg = preset("w8-lpf", 4)
    regs = _regs(cfg, "w8")[0]
    a, b = TorchEngine(cfg, 2, path="reference"), TorchEngine(cfg, 2, path="triton")
    assert b.uses_triton and not TorchEngine(cfg, 2).uses_triton  # "kernel" is Triton on CUDA only
    rng = np.random.default_rng(0)
    th = torch.from_numpy(_words(rng, cfg.state, 45)).reshape(5, 9)
    g = torch.from_numpy(_words(rng, cfg.grad, 45)).reshape(5, 9)
    ra, rb = a.step(th, g, regs), b.step(th, g, regs)
    assert torch.equal(ra.state, rb.state) and torch.equal(ra.weight, rb.weight) and ra.state.shape == (5, 9)
    ga, gb = TorchLaneRng.seeded(cfg.rng, 9, 4, 1), TorchLaneRng.seeded(cfg.rng, 9, 4, 1)
    gf = 0.3 * torch.randn(5, 9, generator=torch.Generator().manual_seed(3))
    for rounding in ("stochastic", "nearest"):
        ra = a.step_quantize(th, gf, regs, grad_rng=ga, rounding=rounding, sr_bits=12)
        rb = b.step_quantize(th, gf, regs, grad_rng=gb, rounding=rounding, sr_bits=12)
        assert torch.equal(ra.state, rb.state) and torch.equal(ra.weight, rb.weight)
    assert a.rng == b.rng and ga == gb
    bcfg = _bfp_cfg("vc", 8, 8, 4, headroom=2)
    bregs = bfp_registers(bcfg, HyperParams(3e-3, 0.5, 1))
    ea, eb = TorchBfpEngine(bcfg, 2, path="reference"), TorchBfpEngine(bcfg, 2, path="triton")
    assert eb.uses_triton and not TorchBfpEngine(bcfg, 2).uses_triton
    bt = _tt(_mixed_rows(bcfg.state, rng, 9, 5))
    bg = _tt(_mixed_rows(bcfg.grad, rng, 9, 5))
    ra2, rb2 = ea.step(bt, bg, bregs), eb.step(bt, bg, bregs)
    assert torch.equal(ra2.state.mant, rb2.state.mant) and torch.equal(ra2.state.exp, rb2.state.exp)
    assert ea.rng == eb.rng
    with pytest.raises(ValueError, match="path must be one of"):
        TorchBfpEngine(bcfg, 2, path="fused")


@interpreted
def test_optimizer_on_the_triton_path_equals_the_reference_path():
    """LowPrecisionSGLD(path='triton') takes the group step of gpu_kernels; same words, weights, streams."""
    from emulator.studies.torch_bench import bench_config

    shapes = [(8, 3), (5,)]
    for config in (bench_config("vc", 4), BfpConfig.paper("lp_f", lanes=4, temperature=1.0, dataset_size=50000)):
        runs = []
        for path in ("reference", "triton"):
            gen = torch.Generator().manual_seed(1)
            ps = [torch.nn.Parameter(0.05 * torch.randn(s, generator=gen)) for s in shapes]
            opt = LowPrecisionSGLD(ps, lr=0.5, config=config, temperature=1.0, dataset_size=50000, seed=5,
                                   weight_decay=5e-4, path=path)
            for _ in range(2):
                for p in ps:
                    p.grad = 0.05 * torch.randn(p.shape, generator=gen)
                opt.step()
            runs.append((ps, opt))
        (pa, oa), (pb, ob) = runs
        for x, y in zip(pa, pb, strict=True):
            assert torch.equal(x, y)
            for k, v in oa.state[x].items():
                assert torch.equal(v, ob.state[y][k]), k
        assert oa._runtime[0].engine.rng == ob._runtime[0].engine.rng
        assert oa._runtime[0].grad_rng == ob._runtime[0].grad_rng


# ---- the device ---------------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_kernels_equal_cpu():
    """On the device (compiled kernels, default chunk target): every preset family, BFP, the group steps."""
    for name in ("w4-vc", "w8-vc", "w8-lpf", "w16-naive", "w8-sgd-l"):
        for lanes in (1, 8, 1024):
            cfg = preset(name, lanes)
            run_fixed(cfg, _regs(cfg, name.split("-")[0]), (37, 2051, 70001), device="cuda", target=None)
    for variant, width, exp_bits, lanes, headroom in BFP_CASES:
        cfg = _bfp_cfg(variant, width, exp_bits, lanes, headroom=headroom)
        regs = bfp_registers(cfg, HyperParams(3e-3, 0.5 if variant == "vc" else 1.0, 1, 5e-2))
        run_bfp(cfg, regs, [(9, 5), (64, 700)], device="cuda", target=None)
    for variant in ("vc", "lp_f", "sgd_l"):
        _fixed_group_case(variant, 1024, "stochastic", device="cuda", target=None)
        _bfp_group_case(variant, "stochastic", device="cuda", target=None)


# ---- the soak matrix ----------------------------------------------------------------------------


@interpreted
@soak
@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("lanes", [1, 4, 8, 1024])
def test_soak_fixed_presets(name, lanes):
    cfg = preset(name, lanes)
    fam = name.split("-")[0]
    lrs = {"w4": (0.5, 0.25, 0.0625), "w8": (2e-3, 1e-3, 1e-4), "w16": (1e-3, 5e-4, 1e-5)}[fam]
    run_fixed(cfg, _regs(cfg, fam, [(lr, 1.0) for lr in lrs] + list(_LRS[fam])), (37, 1, 1030, 5, 0, 401))


@interpreted
@soak
@pytest.mark.parametrize("variant", ["vc", "naive", "lp_f", "sgd_l", "sgd_f"])
@pytest.mark.parametrize("width", [6, 8, 10])
@pytest.mark.parametrize(("exp_bits", "lanes", "headroom"), [(8, 1, 0), (4, 4, 2), (8, 1024, 1)])
def test_soak_bfp(variant, width, exp_bits, lanes, headroom):
    cfg = _bfp_cfg(variant, width, exp_bits, lanes, headroom=headroom)
    for lr, wd in ((1e-3, 0.0), (3e-3, 5e-2)):
        regs = bfp_registers(cfg, HyperParams(lr, 0.5 if variant == "vc" else 1.0, 1, wd))
        run_bfp(cfg, regs, [(9, 5), (9, 13), (9, 1)], seed=width + lanes)


@interpreted
@soak
@pytest.mark.parametrize("variant", ["vc", "naive", "lp_f", "sgd_l", "sgd_f"])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_soak_group_steps(variant, rounding):
    _fixed_group_case(variant, 8, rounding, steps=3)
    _bfp_group_case(variant, rounding, steps=3)
