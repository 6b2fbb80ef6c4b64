"""The compiled CPU lane kernels (numba) == the readable reference paths, word for word, lane states included."""


import numpy as np
import pytest

from emulator.engines import cpu_kernels
from emulator.engines.bfp_engine import BfpEngine
from emulator.engines.numpy_engine import NumpyEngine, stream_words
from emulator.spec.bfp import BfpConfig, BfpFormat, BfpRegisters, BfpTensor, bfp_registers
from emulator.spec.datapath import DatapathConfig, StepRegisters
from emulator.spec.formats import FixedFormat
from emulator.spec.gaussian import GaussianSpec
from emulator.spec.host import HyperParams
from emulator.spec.presets import PRESETS, preset
from emulator.spec.rng import LaneRng


def corner_words(fmt: FixedFormat, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random words with the saturation corners (min, max, 0, +-1) mixed in."""
    w = rng.integers(fmt.min_word, fmt.max_word + 1, size=n)
    corners = np.array([fmt.min_word, fmt.max_word, 0, 1, -1], dtype=np.int64)
    pick = rng.random(n) < 0.2
    w[pick] = corners[rng.integers(0, len(corners), size=int(pick.sum()))]
    return w.astype(np.int64)


def registers(cfg: DatapathConfig, rng: np.random.Generator, branch_a: bool) -> StepRegisters:
    def word(fmt: FixedFormat) -> int:
        return int(rng.choice([0, 1, fmt.max_word, int(rng.integers(0, fmt.max_word + 1))]))

    decay = word(cfg.decay) if cfg.decay is not None else 0
    vc = cfg.variant.value == "vc"
    noise = word(cfg.noise) if cfg.uses_noise and (branch_a or not vc) else 0
    var = int(rng.integers(0, (1 << (2 * cfg.vc_frac_bits - 2)) + 1)) if vc and not branch_a else 0
    return StepRegisters(max(1, word(cfg.step)), decay=decay, noise=noise, vc_noise=vc and branch_a, vc_var=var)


def assert_fixed_equal(cfg: DatapathConfig, seed: int, sizes: list[int], rng: np.random.Generator,
                       branch_a: bool = False) -> None:
    """Successive calls (streams continue) of the kernel and the reference engine agree, lanes too."""
    k, r = NumpyEngine(cfg, seed), NumpyEngine(cfg, seed, path="reference")
    for n in sizes:
        th, g = corner_words(cfg.state, rng, n), corner_words(cfg.grad, rng, n)
        regs = registers(cfg, rng, branch_a)
        a, b = k.step(th, g, regs), r.step(th, g, regs)
        assert np.array_equal(a.state, b.state), (cfg, n, regs)
        assert np.array_equal(a.weight, b.weight), (cfg, n, regs)
        assert k.rng == r.rng, (cfg, n)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("lanes", [1, 4, 8, 1024, 65536])
def test_presets_equal_the_reference(name, lanes):
    """Every preset at every lane count: full cycles, a partial last cycle, M < L, then more calls."""
    cfg = preset(name, lanes)
    rng = np.random.default_rng(lanes * 131 + PRESETS.index(name))
    sizes = [3 * lanes + 5, max(1, lanes // 2), 1, 700] if lanes <= 1024 else [lanes + 77, 1000, 3]
    assert_fixed_equal(cfg, 7, sizes, rng)
    if cfg.variant.value == "vc":
        assert_fixed_equal(cfg, 8, sizes, rng, branch_a=True)


@pytest.mark.parametrize("sr_bits", [1, 3, 13, None])
@pytest.mark.parametrize("variant", ["vc", "naive", "lp_f", "sgd_l", "sgd_f"])
def test_sr_bits_decay_and_two_generator_words(variant, sr_bits):
    acc = FixedFormat(20, 12) if variant in ("lp_f", "sgd_f") else None
    cfg = DatapathConfig(variant, weight=FixedFormat(8, 4), acc=acc, decay=FixedFormat(12, 20, signed=False),
                         noise=FixedFormat(16, 30, signed=False), sr_bits=sr_bits, rng_words=3, lanes=5,
                         gaussian=GaussianSpec("table", 4, 8, 8))
    rng = np.random.default_rng(hash((variant, sr_bits)) % 1000)
    assert_fixed_equal(cfg, 3, [1, 4, 5, 6, 2001, 13], rng)
    if variant == "vc":
        assert_fixed_equal(cfg, 4, [7, 2001], rng, branch_a=True)


def test_branch_a_coarse_grid_and_clt_gaussian():
    """VC branch A where s < vc_frac_bits (x shifted left) and a CLT generator with an odd term count."""
    cfg = DatapathConfig("vc", weight=FixedFormat(6, 2), step=FixedFormat(8, 4, signed=False),
                         noise=FixedFormat(8, 3, signed=False), gaussian=GaussianSpec("clt", 3, 5, 0), lanes=3)
    assert cfg.drop_bits < cfg.vc_frac_bits
    rng = np.random.default_rng(5)
    assert_fixed_equal(cfg, 1, [100, 3, 2], rng, branch_a=True)
    assert_fixed_equal(cfg, 1, [100, 3, 2], rng, branch_a=False)


def test_many_chunks_per_lane_use_the_cached_jump():
    """Few lanes and many cycles: lane-block tasks start from jumped states; the jump bits are cached."""
    cfg = preset("w8-vc", lanes=2)
    assert_fixed_equal(cfg, 11, [100_003, 99_999], np.random.default_rng(0))
    block, _, bits = cpu_kernels.lane_plan(cfg.rng, 2, 100_003)
    assert bits.shape[0] > 1 and block == 2
    assert cpu_kernels.lane_plan(cfg.rng, 2, 100_003)[2] is bits  # cached per tensor size


def test_stream_words_kernel_equals_numpy():
    for lanes, words, n in ((1, 1, 1000), (3, 2, 1001), (1024, 1, 5000), (7, 3, 5)):
        ref = LaneRng.seeded(preset("w8-vc").rng, 9, lanes, words)
        mine = ref.copy()
        out = cpu_kernels.stream_words(mine.spec, mine.s0, mine.s1, n)
        assert np.array_equal(out, stream_words(ref, n))
        assert mine == ref


def test_engine_path_is_checked():
    with pytest.raises(ValueError, match="path must be one of"):
        NumpyEngine(preset("w8-vc"), 1, path="fast")
    with pytest.raises(ValueError, match="path must be one of"):
        BfpEngine(BfpConfig.paper("vc"), 1, path="fast")


def test_rejected_kernel_step_leaves_the_lanes_alone():
    cfg = preset("w8-vc", lanes=4)
    eng = NumpyEngine(cfg, 1)
    before = eng.rng.copy()
    with pytest.raises(ValueError, match="theta word 999"):
        eng.step(np.array([999]), np.array([0]), StepRegisters(1))
    assert eng.rng == before


# ---- BFP ------------------------------------------------------------------------------------


def assert_bfp_equal(cfg: BfpConfig, seed: int, calls: list[tuple[BfpTensor, BfpTensor, BfpRegisters]]) -> None:
    k, r = BfpEngine(cfg, seed), BfpEngine(cfg, seed, path="reference")
    for th, g, regs in calls:
        a, b = k.step(th, g, regs), r.step(th, g, regs)
        for x, y in ((a.state, b.state), (a.weight, b.weight)):
            assert np.array_equal(x.mant, y.mant) and np.array_equal(x.exp, y.exp), (cfg, regs)
        assert k.rng == r.rng


@pytest.mark.parametrize("variant", ["vc", "naive", "lp_f", "sgd_l", "sgd_f"])
@pytest.mark.parametrize("lanes", [1, 4, 8, 1024])
def test_bfp_mixed_rows_equal_the_reference(variant, lanes, bfp_builders):
    """Exponent limits, full-scale and zero rows, both VC branches (T = 1, N = 1: fine rows take branch A)."""
    h = bfp_builders
    cfg = h.make_cfg(variant, lanes=lanes, headroom=2 if variant == "vc" else 0)
    rng = np.random.default_rng(lanes)
    calls = []
    for lr, wd, temp, shape in ((3e-3, 5e-2, 1.0, (9, 5)), (1e-3, 0.0, 1e-3, (9, 37)), (3e-3, 5e-2, 1.0, (9, 1))):
        th = h.mixed_rows(cfg.state, rng, rows=shape[0], cols=shape[1])
        g = h.mixed_rows(cfg.grad, rng, rows=shape[0], cols=shape[1])
        calls.append((th, g, bfp_registers(cfg, HyperParams(lr, temp, 1, wd), underflow="flush")))
    if variant == "vc":
        assert any(calls[0][2].vc_noise) and not all(calls[0][2].vc_noise)  # both branches in the table
    assert_bfp_equal(cfg, 5, calls)


def test_bfp_random_configurations_equal_the_reference(bfp_builders):
    """Random formats, windows, SR / VC widths, headroom, three generator words and registers at their limits."""
    h = bfp_builders
    rng = np.random.default_rng(2027)
    built = 0
    while built < 40:
        try:
            cfg = h.random_config(rng)
        except ValueError:
            continue  # rejected configurations are tested in tests/spec
        built += 1
        calls = []
        for _ in range(2):
            rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 40))
            calls.append((h.random_bfp(cfg.state, rng, rows, cols), h.random_bfp(cfg.grad, rng, rows, cols),
                          h.random_registers(cfg, rng)))
        assert_bfp_equal(cfg.__class__(**{**cfg.__dict__, "lanes": int(rng.choice([1, 3, 64]))}), built, calls)


def test_bfp_paper_config_vectors_and_empty():
    hp = HyperParams(0.5, 1e-3, 50000, 5e-4)
    cfg = BfpConfig.paper("vc", lanes=8, max_lr=hp.lr, temperature=hp.temperature, dataset_size=hp.dataset_size,
                          weight_decay=hp.weight_decay)
    rng = np.random.default_rng(1)
    regs = bfp_registers(cfg, hp, underflow="flush")
    assert any(regs.vc_noise) and not all(regs.vc_noise)
    v = cfg.state.quantize(rng.normal(size=300) * 1e-3, "nearest")
    e = cfg.state.quantize(np.zeros((4, 0)), "nearest")
    s = cfg.state.quantize(np.array(0.25), "nearest")
    assert_bfp_equal(cfg, 2, [(v, v, regs), (e, e, regs), (s, s, regs), (v, v, regs)])
    w = cfg.state.quantize(rng.normal(size=(64, 3, 3, 3)), "nearest")
    assert_bfp_equal(cfg, 3, [(w, w, regs)])


# ---- torch engines on CPU: kernel path == reference path ------------------------------------------


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize(("name", "lanes", "sr_bits"), [("w8-vc", 8, 32), ("w8-lpf", 1024, 3), ("w4-naive", 1, 52),
                                                        ("w16-sgd-f", 4, 1)])
def test_torch_step_quantize_kernel_equals_reference(name, lanes, sr_bits, rounding):
    """Float gradients (float16 / 32 / 64, +-inf, out of range, tiny) -> words from the gradient stream, the update."""
    torch = pytest.importorskip("torch")
    from emulator.engines.torch_engine import TorchEngine, TorchLaneRng
    from emulator.spec.host import step_registers

    cfg = preset(name, lanes)
    gen = torch.Generator().manual_seed(lanes)
    engines = [TorchEngine(cfg, 1, path=p) for p in ("kernel", "reference")]
    streams = [TorchLaneRng.seeded(cfg.rng, 2, lanes, 1) for _ in engines]
    family = name.split("-")[0]
    lrs = {"w4": (0.5, 0.0625), "w8": (2e-3, 1e-3), "w16": (1e-3, 1e-5)}[family]
    for i, n in enumerate((1001, 3, lanes + 1, 20)):
        regs = step_registers(cfg, HyperParams(lrs[i % 2], weight_decay=0.05 if i % 2 else 0.0), underflow="flush")
        theta = torch.from_numpy(corner_words(cfg.state, np.random.default_rng(i), n))
        g = (10.0 ** torch.randint(-9, 3, (n,), generator=gen)) * torch.randn(n, generator=gen, dtype=torch.float64)
        g[: min(n, 2)] = torch.tensor([float("inf"), -float("inf")])[: min(n, 2)]
        g = g.to((torch.float64, torch.float32, torch.float64, torch.float16)[i])  # float16: not a numba type
        a, b = (e.step_quantize(theta, g, regs, grad_rng=s, rounding=rounding, sr_bits=sr_bits)
                for e, s in zip(engines, streams, strict=True))
        assert torch.equal(a.state, b.state) and torch.equal(a.weight, b.weight), (name, n)
    assert streams[0] == streams[1] and engines[0].rng == engines[1].rng


def test_gradient_quantization_keeps_the_sign_of_underflowing_values():
    """docs/spec.md: |x 2^F| < 2^-64 rounds as +-2^-64; with F = -3, -5e-324 * 2^-3 underflows to -0 in
    float64, and SR with one bit must still give -1 with probability 1/2 (as FixedFormat.quantize)."""
    torch = pytest.importorskip("torch")
    import dataclasses

    from emulator.engines.torch_engine import TorchEngine, TorchLaneRng
    from emulator.spec.host import step_registers

    cfg = dataclasses.replace(preset("w8-lpf", 4), grad=FixedFormat(8, -3))
    regs = step_registers(cfg, HyperParams(1e-3, 1.0, 1))
    grad = torch.tensor([-5e-324, 5e-324, -1e-300] * 20, dtype=torch.float64)
    out = []
    for path in ("reference", "kernel"):
        g = TorchLaneRng.seeded(cfg.rng, 9, 4, 1)
        r = TorchEngine(cfg, 2, path=path).step_quantize(torch.zeros(60, dtype=torch.int64), grad, regs,
                                                         grad_rng=g, rounding="stochastic", sr_bits=1)
        out.append(r.state)
    assert torch.equal(out[0], out[1])


def test_torch_engines_kernel_equal_reference(bfp_builders):
    torch = pytest.importorskip("torch")
    from emulator.engines.torch_bfp_engine import TorchBfpEngine
    from emulator.engines.torch_engine import TorchEngine

    cfg = preset("w8-vc", 4)
    rng = np.random.default_rng(0)
    k, r = TorchEngine(cfg, 1), TorchEngine(cfg, 1, path="reference")
    assert k.path == "kernel"
    for n in (9, 2, 1000):
        regs = registers(cfg, rng, branch_a=n == 2)
        th = torch.from_numpy(corner_words(cfg.state, rng, n))
        g = torch.from_numpy(corner_words(cfg.grad, rng, n))
        a, b = k.step(th, g, regs), r.step(th, g, regs)
        assert torch.equal(a.state, b.state) and torch.equal(a.weight, b.weight)
    assert k.rng == r.rng
    h = bfp_builders
    for variant in ("vc", "lp_f"):
        bcfg = h.make_cfg(variant, lanes=3)
        bk, br = TorchBfpEngine(bcfg, 1), TorchBfpEngine(bcfg, 1, path="reference")
        for lr in (3e-3, 1e-3):
            th, g = h.mixed_rows(bcfg.state, rng), h.mixed_rows(bcfg.grad, rng)
            tt = BfpTensor(torch.from_numpy(th.mant), torch.from_numpy(th.exp))
            tg = BfpTensor(torch.from_numpy(g.mant), torch.from_numpy(g.exp))
            regs_b = bfp_registers(bcfg, HyperParams(lr, 1.0, 1, 0.05), underflow="flush")
            a, b = bk.step(tt, tg, regs_b), br.step(tt, tg, regs_b)
            for x, y in ((a.state, b.state), (a.weight, b.weight)):
                assert torch.equal(x.mant, y.mant) and torch.equal(x.exp, y.exp)
        assert bk.rng == br.rng


@pytest.mark.parametrize("headroom", [0, 2])
@pytest.mark.parametrize(("width", "exp_bits", "k"), [(8, 8, 32), (4, 3, 5), (24, 8, 38)])
def test_bfp_quantize_kernel_equals_quantize_torch(width, exp_bits, k, headroom):
    """Float rows -> BFP: nearest and SR, exponent limits, +-inf, zeros, subnormals, float32 and float64."""
    torch = pytest.importorskip("torch")
    from emulator.engines.torch_bfp_engine import quantize_torch

    fmt = BfpFormat(width, exp_bits)
    rng = np.random.default_rng(width + k)
    x = rng.normal(size=(7, 33)) * 10.0 ** rng.integers(-40, 40, size=(7, 1))
    x[0, :3] = [np.inf, -np.inf, 1.0]
    x[1] = 0.0
    x[2, :2] = [5e-324, -1e-310]
    x[3] = (fmt.max_mant - headroom) * 2.0 ** (fmt.grid_exp(0)) * (1 + rng.integers(0, 2, 33) * 2.0**-20)
    for dtype in (torch.float64, torch.float32):
        t = torch.from_numpy(x).to(dtype)
        u = torch.from_numpy(rng.integers(0, 1 << k, size=x.shape, dtype=np.int64))
        for rounding, uu, kk in (("nearest", None, 1), ("stochastic", u, k)):
            ref = quantize_torch(t, fmt, rounding, u=uu, sr_bits=k, headroom=headroom)
            mant, exp = np.empty(x.shape, dtype=np.int64), np.empty(7, dtype=np.int64)
            cpu_kernels.bfp_quantize(fmt, t.numpy(), 7, kk, None if uu is None else uu.numpy(), headroom, mant, exp)
            assert np.array_equal(mant, ref.mant.numpy()) and np.array_equal(exp, ref.exp.numpy()), (dtype, rounding)
