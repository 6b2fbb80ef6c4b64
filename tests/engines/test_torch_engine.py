"""The torch engine: 64-bit word semantics, streams, jump-ahead, and bit-exactness against NumpyEngine."""

import dataclasses
import io
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emulator.engines.numpy_engine import NumpyEngine, stream_words  # noqa: E402
from emulator.engines.torch_engine import (  # noqa: E402
    TorchEngine,
    TorchLaneRng,
    _jump,
    _rotl,
    _shr,
    tensor_to_u64,
    torch_stream_words,
    torch_update,
    u64_to_tensor,
)
from emulator.spec.datapath import DatapathConfig, StepRegisters, Variant  # noqa: E402
from emulator.spec.formats import FixedFormat  # noqa: E402
from emulator.spec.gaussian import GaussianSpec  # noqa: E402
from emulator.spec.host import HyperParams, step_registers  # noqa: E402
from emulator.spec.presets import PRESETS, preset  # noqa: E402
from emulator.spec.rng import LaneRng, XoroshiroSpec, vec  # noqa: E402

U64 = np.uint64
EDGE = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0xDEADBEEFCAFEF00D, 0x8000000000000001], dtype=U64)


def _words(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([EDGE, rng.integers(0, 2**64, n, dtype=U64)])


# ---- 64-bit word semantics in int64 ------------------------------------------------------


def test_left_shift_wraps_modulo_2_64():
    a = _words(200)
    t = u64_to_tensor(a)
    for r in (1, 14, 36, 55, 63):
        assert np.array_equal(tensor_to_u64(t << r), a << U64(r)), r


def test_right_shift_is_arithmetic_and_shr_is_logical():
    a = _words(200)
    t = u64_to_tensor(a)
    for r in (1, 9, 28, 50, 63):
        assert np.array_equal(tensor_to_u64(_shr(t, r)), a >> U64(r)), r
        assert np.array_equal((t >> r).numpy(), a.view(np.int64) >> r)  # floor division by 2^r
    assert int(torch.tensor([-1], dtype=torch.int64)[0] >> 63) == -1


def test_rotate_matches_numpy_generator_model():
    a = _words(200)
    t = u64_to_tensor(a)
    v = vec(XoroshiroSpec())
    for r in (1, 2, 36, 55, 63):
        assert np.array_equal(tensor_to_u64(_rotl(t, r)), v.rotl(a, r)), r


def test_int64_multiplication_wraps_and_datapath_products_fit():
    big = torch.tensor([2**62, -(2**62), 3 * 2**61], dtype=torch.int64)
    assert torch.equal(big * 4, torch.tensor([0, 0, -(2**63)], dtype=torch.int64))  # wraps, no error
    for name in PRESETS:  # the datapath never needs the wrap: every intermediate fits 62 bits
        assert preset(name).sum_width <= 62


def test_u64_round_trip():
    a = _words(50)
    assert np.array_equal(tensor_to_u64(u64_to_tensor(a)), a)
    with pytest.raises(TypeError, match="int64"):
        tensor_to_u64(torch.zeros(3, dtype=torch.int32))


# ---- streams and jump-ahead ----------------------------------------------------------------


@pytest.mark.parametrize("scrambler", ["aox", "linear"])
def test_jump_equals_numpy_jump(scrambler):
    spec = XoroshiroSpec(scrambler=scrambler)
    rng = LaneRng.seeded(spec, 3, 5, 2)
    t = TorchLaneRng.from_lane_rng(rng)
    for n in (0, 1, 2, 7, 1000, 2**40 + 3, 2**64):
        a0, a1 = vec(spec).jump(rng.s0, rng.s1, n)
        b0, b1 = _jump(spec, t.s0, t.s1, n)
        assert np.array_equal(tensor_to_u64(b0), a0) and np.array_equal(tensor_to_u64(b1), a1), n


@pytest.mark.parametrize("lanes", [1, 3, 4, 8, 1024])
@pytest.mark.parametrize("words", [1, 2])
def test_stream_words_equal_numpy(lanes, words):
    spec = XoroshiroSpec()
    a = LaneRng.seeded(spec, 11, lanes, words)
    b = TorchLaneRng.from_lane_rng(a)
    # partial last cycles, empty calls, M < L, and sizes that take several chunk phases
    for n in (5, 0, 1, 1025, 70001, 3, 2 * lanes + 1):
        wa = stream_words(a, n)
        wb = torch_stream_words(b, n)
        assert wb.dtype == torch.int64 and wb.shape == (n, words)
        assert torch.equal(wb, u64_to_tensor(wa)), n
        assert b.to_lane_rng() == a, n


def test_stream_words_known_answer():
    b = TorchLaneRng.seeded(XoroshiroSpec(), 0, 2, 1)  # docs/spec.md section 3
    w = tensor_to_u64(torch_stream_words(b, 6)).ravel()
    assert [hex(int(x)) for x in w[0::2]] == ["0x409b06a31cd33782", "0xf04456e5b1835b7e", "0x8c61f9ad050fd4dd"]
    assert [hex(int(x)) for x in w[1::2]] == ["0x57f0f7d82f648d0b", "0x91d0b328f700826e", "0x6d2fe17c8d9b3590"]


def test_stream_words_rejects_bad_counts():
    b = TorchLaneRng.seeded(XoroshiroSpec(), 0, 2, 1)
    with pytest.raises(ValueError, match="element count must be >= 0, got -1"):
        torch_stream_words(b, -1)
    with pytest.raises(TypeError, match="element count must be an int"):
        torch_stream_words(b, 2.0)


def test_lane_rng_validation():
    s = torch.ones((2, 1), dtype=torch.int64)
    with pytest.raises(TypeError, match="int64"):
        TorchLaneRng(XoroshiroSpec(), s.int(), s)
    with pytest.raises(ValueError, match="lane 1 word 0 is all-zero"):
        TorchLaneRng(XoroshiroSpec(), torch.tensor([[1], [0]]), torch.tensor([[1], [0]]))
    with pytest.raises(ValueError, match="64-bit generators only"):
        TorchLaneRng(XoroshiroSpec(word_bits=32, a=26, b=9, c=13), s, s)


def test_lane_rng_state_dict_round_trip_through_torch_save():
    b = TorchLaneRng.seeded(XoroshiroSpec(), 5, 4, 2)
    torch_stream_words(b, 7)
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    c = TorchLaneRng.from_state_dict(torch.load(buf, weights_only=True))
    assert c == b
    # a numpy LaneRng state dict loads too
    assert TorchLaneRng.from_state_dict(b.to_lane_rng().state_dict()) == b


# ---- the engine against NumpyEngine ---------------------------------------------------------

_LRS = {"w4": (0.5, 0.25, 0.0625), "w8": (2e-3, 1e-3, 1e-4), "w16": (1e-3, 5e-4, 1e-5)}
_SIZES = (37, 1, 1030, 5, 0, 2051)  # M not a multiple of L, M < L, partial last cycles


def _register_cases(cfg, family):
    cases = []
    for lr in _LRS[family]:
        for wd in (0.0, 0.05):
            try:
                cases.append(step_registers(cfg, HyperParams(lr, weight_decay=wd)))
            except ValueError:  # decay underflows at the smallest lr: covered by the other cases
                continue
    return cases


def _run_both(cfg, regs_list, sizes, seed=7, path="fused", corners=True):
    rng = np.random.default_rng(seed)
    ne = NumpyEngine(cfg, seed, path="reference")  # the readable numpy code, not the numba kernel
    te = TorchEngine(cfg, seed, path=path)
    st, gf = cfg.state, cfg.grad
    for i, n in enumerate(sizes):
        regs = regs_list[i % len(regs_list)]
        theta = rng.integers(st.min_word, st.max_word + 1, n)
        grad = rng.integers(gf.min_word, gf.max_word + 1, n)
        if corners and n >= 4:  # saturation corners: extreme state and gradient words
            theta[:4] = st.min_word, st.max_word, st.min_word, st.max_word
            grad[:4] = gf.max_word, gf.min_word, gf.min_word, gf.max_word
        a = ne.step(theta, grad, regs)
        b = te.step(torch.from_numpy(theta), torch.from_numpy(grad), regs)
        assert torch.equal(b.state, torch.from_numpy(a.state)), (cfg.variant, n, regs)
        assert torch.equal(b.weight, torch.from_numpy(a.weight)), (cfg.variant, n, regs)
    assert te.rng.to_lane_rng() == ne.rng


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("lanes", [1, 4, 8, 1024])
@pytest.mark.parametrize("path", ["kernel", "fused", "reference"])
def test_engine_equals_numpy_presets(name, lanes, path):
    cfg = preset(name, lanes)
    regs = _register_cases(cfg, name.split("-")[0])
    _run_both(cfg, regs, _SIZES, path=path)


def test_both_vc_branches_are_exercised():
    cfg = preset("w8-vc")
    assert step_registers(cfg, HyperParams(2e-3)).vc_noise
    assert not step_registers(cfg, HyperParams(1e-3)).vc_noise


@pytest.mark.parametrize("path", ["kernel", "fused", "reference"])
@pytest.mark.parametrize("sr_bits", [None, 1, 3])
@pytest.mark.parametrize("name", ["w8-vc", "w8-naive", "w8-lpf", "w8-sgd-f"])
def test_engine_equals_numpy_small_sr_bits(name, sr_bits, path):
    cfg = dataclasses.replace(preset(name, 8), sr_bits=sr_bits)
    _run_both(cfg, _register_cases(cfg, "w8"), (300, 17), path=path)


@pytest.mark.parametrize("path", ["kernel", "fused", "reference"])
@pytest.mark.parametrize("variant", ["naive", "vc", "lp_f"])
def test_engine_equals_numpy_two_words(variant, path):
    # 6 x 8 Gaussian bits + 24 SR bits do not fit one word: gauss moves to word 1
    base = preset({"naive": "w8-naive", "vc": "w8-vc", "lp_f": "w8-lpf"}[variant], 4)
    cfg = dataclasses.replace(base, gaussian=GaussianSpec("table", 6, 8, 8), rng_words=2)
    assert cfg.fields["gauss"].word == 1
    _run_both(cfg, _register_cases(cfg, "w8"), (41, 1, 6), path=path)


def test_engine_vc_branch_b_without_dropped_bits():
    # s = 0: branch B has q = mu and no SR variance
    cfg = DatapathConfig(Variant.VC, step=FixedFormat(8, 0, signed=False), noise=FixedFormat(8, 0, signed=False),
                         gaussian=GaussianSpec("table", 2, 3, 0), vc_frac_bits=3, lanes=3)
    assert cfg.drop_bits == 0
    _run_both(cfg, [StepRegisters(1, vc_var=5), StepRegisters(3, vc_var=16)], (10, 7))


def test_reference_update_equals_numpy_update():
    from emulator.spec.datapath import update

    cfg = preset("w8-vc", 4)
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**64, (500, 1), dtype=U64)
    theta = rng.integers(-128, 128, 500)
    grad = rng.integers(-128, 128, 500)
    for lr in (2e-3, 1e-3):
        regs = step_registers(cfg, HyperParams(lr))
        a = update(cfg, theta, grad, regs, words)
        b = torch_update(cfg, torch.from_numpy(theta), torch.from_numpy(grad), regs, u64_to_tensor(words))
        assert torch.equal(b.state, torch.from_numpy(a.state))
    with pytest.raises(TypeError, match="int64 grad"):
        torch_update(cfg, torch.from_numpy(theta), torch.from_numpy(grad).int(), regs, u64_to_tensor(words))


# ---- validation, state ---------------------------------------------------------------------------


def test_engine_rejects_bad_input_and_leaves_state():
    cfg = preset("w8-vc", 4)
    eng = TorchEngine(cfg, 1)
    regs = step_registers(cfg, HyperParams(2e-3))
    before = eng.rng.copy()
    ok = torch.zeros(5, dtype=torch.int64)
    with pytest.raises(TypeError, match="theta must be an int64 tensor"):
        eng.step(ok.float(), ok, regs)
    with pytest.raises(ValueError, match=r"grad word 128 outside Q\(8,3\)"):
        eng.step(ok, ok + 128, regs)
    with pytest.raises(ValueError, match="theta shape"):
        eng.step(ok[:3], ok, regs)
    with pytest.raises(ValueError, match="exceeds"):
        eng.step(ok, ok, StepRegisters(1 << 20))
    with pytest.raises(TypeError, match="torch tensors"):
        eng.step(np.zeros(5, dtype=np.int64), ok, regs)
    assert eng.rng == before
    with pytest.raises(ValueError, match="path must be one of"):
        TorchEngine(cfg, 1, path="fast")
    with pytest.raises(ValueError, match="compile=True needs path='fused', got path='reference'"):
        TorchEngine(cfg, 1, path="reference", compile=True)
    with pytest.raises(TypeError, match="DatapathConfig"):
        TorchEngine("w8-vc", 1)


def test_engine_state_dict_resume_and_numpy_interop():
    cfg = preset("w8-lpf", 8)
    regs = step_registers(cfg, HyperParams(2e-3))
    rng = np.random.default_rng(0)
    theta = torch.from_numpy(rng.integers(-(2**20), 2**20, 100))
    grad = torch.from_numpy(rng.integers(-100, 100, 100))
    a = TorchEngine(cfg, 4)
    a.step(theta, grad, regs)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = TorchEngine(cfg, 999)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a.step(theta, grad, regs).state, b.step(theta, grad, regs).state)
    n = NumpyEngine(cfg, 0)
    n.load_state_dict({**a.state_dict(), "rng": a.rng.to_lane_rng().state_dict()})
    assert np.array_equal(n.step(theta.numpy(), grad.numpy(), regs).state, a.step(theta, grad, regs).state.numpy())
    with pytest.raises(ValueError, match=r"state_dict was saved for configuration .*lanes=8"):
        TorchEngine(preset("w8-lpf", 4), 0).load_state_dict(a.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("name", ["w8-vc", "w8-lpf", "w16-naive", "w4-sgd-f"])
def test_cuda_engine_equals_numpy(name):
    cfg = preset(name, 1024)
    regs = _register_cases(cfg, name.split("-")[0])
    rng = np.random.default_rng(1)
    ne = NumpyEngine(cfg, 3)
    te = TorchEngine(cfg, 3, device="cuda")
    for i, n in enumerate((5000, 1, 3000)):
        theta = rng.integers(cfg.state.min_word, cfg.state.max_word + 1, n)
        grad = rng.integers(cfg.grad.min_word, cfg.grad.max_word + 1, n)
        a = ne.step(theta, grad, regs[i % len(regs)])
        b = te.step(torch.from_numpy(theta).cuda(), torch.from_numpy(grad).cuda(), regs[i % len(regs)])
        assert torch.equal(b.state.cpu(), torch.from_numpy(a.state))
        assert torch.equal(b.weight.cpu(), torch.from_numpy(a.weight))


@pytest.mark.parametrize("virtual", [16, 1 << 22])  # the CUDA chunk target runs here too
def test_stream_words_any_chunk_target(virtual):
    a = LaneRng.seeded(XoroshiroSpec(), 2, 8, 1)
    b = TorchLaneRng.from_lane_rng(a)
    from emulator.engines.torch_engine import drive_cycles

    for n in (1001, 8, 3):
        buf = torch.empty((n, 1), dtype=torch.int64)

        def body(cur, sel, k, buf=buf):
            (s0, s1), = cur
            view = sel(buf)
            for c in range(k):
                view[:, c].copy_(b.gen.output_step(s0, s1)[0])
                s0, s1 = b.gen.step(s0, s1)
            return [(s0, s1)]

        drive_cycles([b], n, body, virtual=virtual)
        assert torch.equal(buf, u64_to_tensor(stream_words(a, n))), n
        assert b.to_lane_rng() == a


@pytest.mark.parametrize("name", ["w8-vc", "w16-lpf", "w4-naive"])
def test_fused_path_equals_reference_path(name):
    cfg = preset(name, 1024)
    rng = np.random.default_rng(5)
    fused, ref = TorchEngine(cfg, 1, path="fused"), TorchEngine(cfg, 1, path="reference")
    for i, regs in enumerate(_register_cases(cfg, name.split("-")[0])):
        n = 20_000 + 333 * i
        theta = torch.from_numpy(rng.integers(cfg.state.min_word, cfg.state.max_word + 1, n))
        grad = torch.from_numpy(rng.integers(cfg.grad.min_word, cfg.grad.max_word + 1, n))
        a, b = fused.step(theta, grad, regs), ref.step(theta, grad, regs)
        assert torch.equal(a.state, b.state) and torch.equal(a.weight, b.weight)
    assert fused.rng == ref.rng


_COMPILED_CASES = [  # (preset, lanes, lr): both VC branches, lanes 8 and 1024, an accumulator variant
    ("w8-vc", 1024, 2e-3),  # branch A (noise inside the rounding)
    ("w8-vc", 8, 1e-3),  # branch B (SR plus the variance correction)
    ("w16-lpf", 8, 1e-3),
]


# torch's own compile stack touches torch.jit.script_method (deprecated in 2.13): third-party
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("name", "lanes", "lr"), _COMPILED_CASES)
def test_compiled_path_equals_reference_and_numpy(name, lanes, lr):
    # torch.compile (inductor C++ on CPU): 1 << 14 chunk states and more per body call run the
    # compiled kernel; sizes give several shapes (the recompile with symbolic sizes), partial
    # cycles and an eager remainder.
    cfg = preset(name, lanes)
    regs = step_registers(cfg, HyperParams(lr, weight_decay=0.05))
    assert regs.vc_noise == (lr == 2e-3 and cfg.variant is Variant.VC)
    rng = np.random.default_rng(3)
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    compiled = TorchEngine(cfg, 1, compile=True)
    ref, ne = TorchEngine(cfg, 1, path="reference"), NumpyEngine(cfg, 1)
    for n in (70_001, 3 * 65_536 + 5, 100_000):
        theta = rng.integers(cfg.state.min_word, cfg.state.max_word + 1, n)
        grad = rng.integers(cfg.grad.min_word, cfg.grad.max_word + 1, n)
        theta[:4] = cfg.state.min_word, cfg.state.max_word, cfg.state.min_word, cfg.state.max_word
        grad[:4] = cfg.grad.max_word, cfg.grad.min_word, cfg.grad.min_word, cfg.grad.max_word
        a = compiled.step(torch.from_numpy(theta), torch.from_numpy(grad), regs)
        b = ref.step(torch.from_numpy(theta), torch.from_numpy(grad), regs)
        c = ne.step(theta, grad, regs)
        assert torch.equal(a.state, b.state) and torch.equal(a.weight, b.weight), n
        assert torch.equal(a.state, torch.from_numpy(c.state)) and torch.equal(a.weight, torch.from_numpy(c.weight))
    assert compiled.rng == ref.rng
    assert compiled.rng.to_lane_rng() == ne.rng
    # step_quantize: the gradient stream, float -> word conversion and update in one kernel;
    # gradients include fractions below 2^-53 of a negative value (the exact f_k) and saturation
    grad_rngs = [TorchLaneRng.seeded(cfg.rng, 9, lanes, 1) for _ in range(2)]
    lsb = cfg.grad.lsb
    cases = ((70_001, "stochastic", 32), (3 * 65_536 + 5, "stochastic", 52), (70_001, "nearest", 32))
    for n, rounding, sr_bits in cases:
        theta = torch.from_numpy(rng.integers(cfg.state.min_word, cfg.state.max_word + 1, n))
        gf = torch.from_numpy(rng.standard_normal(n) * 30 * lsb).to(torch.float32)
        gf[:6] = torch.tensor([1e30, -1e30, -(2**-40 + 2**-60) * lsb, -0.5 * lsb, 0.5 * lsb, float("inf")])
        gd = gf.to(torch.float64)
        gd[6:10] = torch.tensor([-(1 + 12345 * 2**-52) * 2.0**e for e in (-45, -50, -58, -3)], dtype=torch.float64)
        for g in (gf, gd):
            a = compiled.step_quantize(theta, g, regs, grad_rng=grad_rngs[0], rounding=rounding, sr_bits=sr_bits)
            b = ref.step_quantize(theta, g, regs, grad_rng=grad_rngs[1], rounding=rounding, sr_bits=sr_bits)
            assert torch.equal(a.state, b.state) and torch.equal(a.weight, b.weight), (n, rounding, g.dtype)
    assert compiled.rng == ref.rng and grad_rngs[0] == grad_rngs[1]
    assert counters["stats"]["unique_graphs"] > graphs  # the compiled kernels did run


@pytest.mark.skipif(os.environ.get("LPSGLD_SOAK") != "1", reason="soak test: set LPSGLD_SOAK=1")
@pytest.mark.parametrize("name", PRESETS)
def test_soak_random_sizes_and_lanes(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    for lanes in (1, 2, 3, 5, 8, 1000, 1024, 4096):
        cfg = preset(name, lanes)
        sizes = [int(x) for x in rng.integers(0, 300_000, 4)] + [int(x) for x in rng.integers(0, 3 * lanes, 3)]
        for path in ("kernel", "fused", "reference"):
            _run_both(cfg, _register_cases(cfg, name.split("-")[0]), sizes, seed=int(rng.integers(1 << 62)), path=path)


def test_torch_quantize_stochastic_fraction_exact_for_negative_values():
    # f_k = floor(t 2^k) mod 2^k exactly (the regression of FixedFormat.quantize): for
    # x = -(2^-40 + 2^-60) in Q(8,0) with k = 52, f_k = 2^52 - 2^12 - 1; floor((t - floor t) 2^k)
    # was one more.
    from emulator.engines.torch_engine import torch_quantize

    fmt = FixedFormat(8, 0)
    fk = (1 << 52) - (1 << 12) - 1
    x = torch.tensor([-(2**-40 + 2**-60)] * 2, dtype=torch.float64)
    got = torch_quantize(x, fmt, "stochastic", u=torch.tensor([fk - 1, fk]), sr_bits=52)
    assert got.tolist() == [0, -1]
    # and equal to FixedFormat.quantize given the same uniforms, on values whose fraction has
    # bits below 2^-53 (negative, small), for several k
    gen = np.random.default_rng(11)
    xs = -np.ldexp(1.0 + gen.random(4000), gen.integers(-60, 3, 4000))
    for k in (1, 17, 32, 52):
        u = gen.integers(0, 1 << k, xs.size, dtype=np.int64)
        want = fmt.quantize(xs, "stochastic", _SeqUniforms(u), sr_bits=k)
        got = torch_quantize(torch.from_numpy(xs), fmt, "stochastic", u=torch.from_numpy(u), sr_bits=k)
        assert np.array_equal(got.numpy(), want)


class _SeqUniforms(np.random.Generator):
    """A Generator whose ``integers`` returns the given uniforms (the SR draws of quantize)."""

    def __init__(self, u):
        super().__init__(np.random.PCG64(0))
        self.u = u

    def integers(self, low, high, size=None, dtype=np.int64):
        return self.u.reshape(size).astype(dtype)
