"""LowPrecisionSGLD with block-floating-point groups: equal to the numpy BfpEngine, training, resume, mixing."""

import dataclasses
import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# most of these tests run the toy's N = 1 on purpose; tests/torchlib/test_torch_ergonomics.py checks the warning
pytestmark = pytest.mark.filterwarnings(
    "ignore:parameter group .*dataset_size not given:emulator.optim.optimizer.LowPrecisionWarning")
torch.set_num_threads(1)  # tiny tensors: OpenMP threads only add barrier waits on the shared 2-core machine

from emulator.engines.bfp_engine import BfpEngine  # noqa: E402
from emulator.engines.torch_bfp_engine import TorchBfpEngine, exact_in, quantize_torch, to_float_torch  # noqa: E402
from emulator.engines.torch_engine import TorchLaneRng  # noqa: E402
from emulator.optim import LowPrecisionSGLD, derive_seed, gradient_uniforms  # noqa: E402
from emulator.spec.bfp import BfpConfig, BfpFormat, BfpTensor, bfp_registers, bfp_registers_flushed  # noqa: E402
from emulator.spec.datapath import DatapathConfig, Variant  # noqa: E402
from emulator.spec.formats import FixedFormat  # noqa: E402
from emulator.spec.host import CyclicalCosineLR, HyperParams  # noqa: E402

VARIANTS = ["vc", "naive", "lp_f", "sgd_l", "sgd_f"]


class _GivenUniforms(np.random.Generator):
    """A Generator whose ``integers`` returns given values: pins the host quantizer's SR uniforms."""

    def __init__(self, u):
        super().__init__(np.random.PCG64(0))
        self.u = np.asarray(u, dtype=np.int64)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        assert self.u.size == np.prod(size)
        return self.u.reshape(size)


def _rows(shape, rng, lo=-14, hi=3):
    """Values with a different magnitude per row of dim 0 (so rows take different exponents)."""
    x = rng.normal(size=shape)
    if len(shape) >= 1:
        scale = np.exp2(rng.integers(lo, hi, size=shape[0])).reshape((shape[0],) + (1,) * (len(shape) - 1))
        x = x * scale
    return x


# ---- float -> BFP on torch == the host quantizer ---------------------------------------------


@pytest.mark.parametrize("fmt", [BfpFormat(8, 8), BfpFormat(6, 4), BfpFormat(16, 8)], ids=str)
@pytest.mark.parametrize("k", [None, 1, 20, 32])
@pytest.mark.parametrize("headroom", [0, 1, 2])
def test_quantize_torch_equals_host_given_the_same_uniforms(fmt, k, headroom):
    rng = np.random.default_rng([fmt.width, k or 0, headroom])
    for shape in [(7, 3, 2), (11,), (), (4, 0), (3, 5)]:
        x = _rows(shape, rng, -150, 140)
        if x.ndim == 2 and x.size:
            x[1] = 0
            x[2, 0] = np.inf
            x[0, -1] = -np.inf
            x[-1] = (fmt.max_mant - headroom + rng.choice([-0.5, 0.25, 0.75], size=x.shape[1])) * 2.0**-20
        if k is None:
            want = fmt.quantize(x, "nearest", headroom=headroom)
            got = quantize_torch(torch.from_numpy(x), fmt, "nearest", headroom=headroom)
        else:
            u = rng.integers(0, 1 << k, size=x.shape, dtype=np.int64)
            want = fmt.quantize(x, "stochastic", _GivenUniforms(u), sr_bits=k, headroom=headroom)
            got = quantize_torch(torch.from_numpy(x), fmt, "stochastic", u=torch.from_numpy(u), sr_bits=k,
                                 headroom=headroom)
        assert got.mant.dtype == torch.int64 and tuple(got.mant.shape) == shape
        assert torch.equal(got.mant, torch.from_numpy(want.mant)), shape
        assert torch.equal(got.exp, torch.from_numpy(want.exp)), shape


def test_quantize_torch_float32_input_and_errors():
    fmt = BfpFormat(8, 8)
    x = _rows((9, 4), np.random.default_rng(0)).astype(np.float32)
    got = quantize_torch(torch.from_numpy(x), fmt)
    want = fmt.quantize(x.astype(np.float64))
    assert torch.equal(got.mant, torch.from_numpy(want.mant)) and torch.equal(got.exp, torch.from_numpy(want.exp))
    with pytest.raises(ValueError, match=r"NaN \(first at flat index 5\) to BFP\(8,e8\)"):
        quantize_torch(torch.tensor([[0.0, 1, 2], [3, 4, math.nan]]), fmt)
    with pytest.raises(TypeError, match="uniforms"):
        quantize_torch(torch.zeros(3), fmt, "stochastic")
    with pytest.raises(ValueError, match="rounding must be"):
        quantize_torch(torch.zeros(3), fmt, "up")
    with pytest.raises(ValueError, match=r"sr_bits must be in \[1, 52\]"):
        quantize_torch(torch.zeros(3), fmt, "stochastic", u=torch.zeros(3, dtype=torch.int64), sr_bits=53)
    with pytest.raises(TypeError, match="floating-point"):
        quantize_torch(torch.zeros(3, dtype=torch.int64), fmt)


def test_float_values_are_exact_in_float32():
    fmt = BfpFormat(8, 8)
    assert exact_in(fmt, torch.float32) and exact_in(BfpFormat(23, 8), torch.float32)
    assert not exact_in(BfpFormat(24, 8), torch.float32)
    assert exact_in(BfpFormat(8, 5), torch.float16) and not exact_in(BfpFormat(8, 6), torch.float16)
    assert exact_in(BfpFormat(9, 7), torch.bfloat16) and not exact_in(BfpFormat(10, 7), torch.bfloat16)
    mant = torch.arange(-127, 128, dtype=torch.int64).repeat(4, 1)
    exp = torch.tensor([fmt.min_exp, fmt.min_exp + 1, 0, fmt.max_exp])
    t = BfpTensor(mant, exp)
    exact = fmt.to_float(BfpTensor(mant.numpy(), exp.numpy()))
    f32 = to_float_torch(t, fmt)
    assert f32.dtype == torch.float32 and np.array_equal(f32.double().numpy(), exact)  # every value, both limits
    assert torch.equal(to_float_torch(t, fmt, torch.float64), torch.from_numpy(exact))
    wide = BfpFormat(24, 8)  # E_min rows need 2^-150: the cast rounds (documented)
    odd = BfpTensor(torch.tensor([[1, 3]]), torch.tensor([wide.min_exp]))
    assert to_float_torch(odd, wide).double().tolist() != wide.to_float(BfpTensor(odd.mant.numpy(),
                                                                                   odd.exp.numpy())).tolist()


# ---- registers --------------------------------------------------------------------------------


def test_bfp_registers_underflow_policy():
    cfg = BfpConfig.paper("naive", lanes=1)
    hp = HyperParams(1e-9, 1e-3, 50000, 5e-4)
    with pytest.raises(ValueError, match="lr=1e-09 underflows register format UQ"):
        bfp_registers(cfg, hp)
    regs, flushed = bfp_registers_flushed(cfg, hp)
    assert regs.step == 0 and regs.decay == 0 and flushed == ("lr", "lr*weight_decay")
    assert regs.noise > 0  # sqrt(v) shrinks slower than lr: still representable
    assert bfp_registers(cfg, hp, underflow="flush") == regs
    assert bfp_registers_flushed(cfg, HyperParams(0.1, 1e-3, 50000), underflow="raise")[1] == ()
    with pytest.raises(ValueError, match="underflow must be one of"):
        bfp_registers(cfg, hp, underflow="zero")
    with pytest.raises(ValueError, match="does not fit register format"):  # overflow always raises
        bfp_registers_flushed(cfg, HyperParams(1.5))
    vc = BfpConfig.paper("vc", lanes=1)
    regs, flushed = bfp_registers_flushed(vc, HyperParams(1e-12, 1e-3, 50000))
    assert flushed == ("lr",) and not any(regs.vc_noise)  # VC table entries may be 0: never flushed


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_configs_hold_the_cifar_schedules(variant):
    """lr 0.5 cyclical cosine (7 cycles) and the 0.5 -> 0.005 decay: registers never overflow; they
    underflow (flush) only where the value is below half a register LSB."""
    cfg = BfpConfig.paper(variant, lanes=1024)
    assert cfg.weight == BfpFormat(8, 8) and cfg.grad == BfpFormat(8, 8)
    assert cfg.acc == (BfpFormat(16, 8) if variant in ("lp_f", "sgd_f") else None)
    assert cfg.headroom == (2 if variant == "vc" else 1)
    assert cfg.step == FixedFormat(16, 16, signed=False)  # 0.5 fills the register: 32768
    epochs = CyclicalCosineLR(0.5, 245, 7)
    steps = CyclicalCosineLR(0.5, 245 * 391, 7)  # per iteration, batch 128 on 50000 images
    c = steps.cycle_len
    lrs = [epochs.lr(t) for t in range(245)] + [0.5 * (0.005 / 0.5) ** (t / 244) for t in range(245)]
    fine = [steps.lr(t) for t in [*range(0, c, 997), *range(c - 300, c)]]
    for lr in lrs + fine:
        hp = HyperParams(lr, 1e-3, 50000, 5e-4)
        regs, flushed = bfp_registers_flushed(cfg, hp)
        expect = [name for name, val, fmt in (("lr", lr, cfg.step), ("lr*weight_decay", lr * 5e-4, cfg.decay),
                                              ("noise scale", math.sqrt(hp.noise_variance) / cfg.gaussian.std,
                                               cfg.noise))
                  if val * 2.0**fmt.frac < 0.5 and (name != "noise scale" or variant in ("naive", "lp_f"))]
        assert list(flushed) == expect, lr
        if lr in lrs:
            assert flushed == () and regs.step >= 60  # per-epoch and decay schedules: lr >= 9e-4, no flush
    assert bfp_registers(cfg, HyperParams(0.5, 1e-3, 50000, 5e-4)).step == 32768
    with pytest.raises(ValueError, match="does not fit register format"):
        bfp_registers(cfg, HyperParams(1.0, 1e-3, 50000, 5e-4))
    big = BfpConfig.paper(variant, max_lr=2.0, temperature=1.0)
    bfp_registers(big, HyperParams(2.0, 1.0, 50000, 5e-4))  # sized for the larger values: fits


def test_paper_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_lr must be > 0"):
        BfpConfig.paper("vc", max_lr=0.0)
    with pytest.raises(ValueError, match="register_width must be in"):
        BfpConfig.paper("vc", register_width=40)
    with pytest.raises(ValueError, match="variant"):
        BfpConfig.paper("sgd")


# ---- one optimizer step == BfpEngine (numpy) ----------------------------------------------------

SHAPES = [(6, 2, 3, 3), (5,), (4, 7), ()]


def _test_cfg(variant, lanes):
    # v = 2 lr T / N puts the VC branch threshold (D = 2 sqrt(v)) inside the rows' exponent range
    return BfpConfig.paper(variant, lanes=lanes, max_lr=0.02, weight_decay=0.05, temperature=1.0,
                           dataset_size=300000)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("lanes", "grad_headroom", "rounding"), [(8, 0, "stochastic"), (3, 1, "stochastic"),
                                                                   (8, 0, "nearest")])
def test_optimizer_step_equals_numpy_bfp_engine(variant, lanes, grad_headroom, rounding):
    seed, lr, k = 5, 0.01, 32
    cfg = _test_cfg(variant, lanes)
    hp = HyperParams(lr, 1.0, 300000, 0.05)
    rng = np.random.default_rng([lanes, grad_headroom])
    params = [torch.nn.Parameter(torch.from_numpy(_rows(s, rng).astype(np.float32))) for s in SHAPES]
    opt = LowPrecisionSGLD(params, lr=lr, config=cfg, weight_decay=0.05, temperature=1.0, dataset_size=300000,
                           seed=seed, grad_headroom=grad_headroom, grad_rounding=rounding, grad_sr_bits=k)
    eng = BfpEngine(cfg, derive_seed(seed, 0))
    grad_rng = TorchLaneRng.seeded(cfg.rng, derive_seed(seed, 1), lanes, 1)
    theta = [cfg.state.quantize(p.detach().double().numpy(), "nearest", headroom=cfg.headroom) for p in params]
    regs = bfp_registers(cfg, hp)
    if variant == "vc":  # both branches occur among the rows
        branch_a = {regs.vc_noise[int(e) - cfg.weight.min_exp] > 0 for t in theta for e in t.exp}
        assert branch_a == {True, False}
    for _ in range(3):
        for p in params:
            p.grad = torch.from_numpy(_rows(p.shape, rng, -12, 2).astype(np.float32))
        weights = []
        for i, p in enumerate(params):
            g = p.grad.double().numpy()
            if rounding == "stochastic":
                u = gradient_uniforms(grad_rng, p.numel(), k).numpy()
                gq = cfg.grad.quantize(g, "stochastic", _GivenUniforms(u), sr_bits=k, headroom=grad_headroom)
            else:
                gq = cfg.grad.quantize(g, "nearest", headroom=grad_headroom)
            r = eng.step(theta[i], gq, regs)
            theta[i] = r.state
            weights.append(r.weight)
        opt.step()
        for i, p in enumerate(params):
            st = opt.state[p]
            assert torch.equal(st["mant"], torch.from_numpy(theta[i].mant))
            assert torch.equal(st["exp"], torch.from_numpy(theta[i].exp))
            if cfg.variant.has_accumulator:
                assert torch.equal(st["weight_mant"], torch.from_numpy(weights[i].mant))
                assert torch.equal(st["weight_exp"], torch.from_numpy(weights[i].exp))
            else:
                assert "weight_mant" not in st
            assert p.dtype == torch.float32
            assert np.array_equal(p.detach().double().numpy(), cfg.weight.to_float(weights[i]))
    assert grad_rng == opt._runtime[0].grad_rng and TorchLaneRng.from_lane_rng(eng.rng) == opt._runtime[0].engine.rng


def test_torch_bfp_engine_equals_numpy_engine_and_loads_its_state():
    cfg = _test_cfg("vc", 4)
    regs = bfp_registers(cfg, HyperParams(0.01, 1.0, 300000, 0.05))
    rng = np.random.default_rng(3)
    ne, te = BfpEngine(cfg, 11), TorchBfpEngine(cfg, 11)
    for shape in [(5, 3), (7,), (2, 2, 2)]:  # partial last cycles: the lanes continue from call to call
        th = cfg.weight.quantize(_rows(shape, rng), headroom=2)
        g = cfg.grad.quantize(_rows(shape, rng))
        a = ne.step(th, g, regs)
        b = te.step(BfpTensor(*map(torch.from_numpy, th)), BfpTensor(*map(torch.from_numpy, g)), regs)
        assert torch.equal(b.state.mant, torch.from_numpy(a.state.mant))
        assert torch.equal(b.state.exp, torch.from_numpy(a.state.exp))
    te2 = TorchBfpEngine(cfg, 0)
    te2.load_state_dict(ne.state_dict())  # numpy lane states load into the torch engine
    assert te2.rng == te.rng
    bad = BfpTensor(torch.full((2, 2), 200), torch.zeros(2, dtype=torch.int64))
    before = te.rng.copy()
    with pytest.raises(ValueError, match=r"theta mantissa 200 outside BFP\(8,e8\) range \[-127, 127\]"):
        te.step(bad, bad, regs)
    with pytest.raises(TypeError, match="grad mantissas must be an int64 tensor"):
        te.step(BfpTensor(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)),
                BfpTensor(torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64)), regs)
    assert te.rng == before  # rejected calls draw nothing


# ---- training, resume, mixing, errors -----------------------------------------------------------


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 4 * 4, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _net():
    torch.manual_seed(0)  # the model's float init only; the optimizer's randomness is its own seed
    return _Net()


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 6, 6, generator=g)
    w = torch.randn(36, generator=g)
    return x, (x.flatten(1) @ w).unsqueeze(1) / 6


def _groups(model, variant, fixed=False):
    """conv in one BFP group; fc (weight + 1-D bias) in another BFP group, or a fixed-point one."""
    fc_cfg = (DatapathConfig(Variant.VC, weight=FixedFormat(8, 5), grad=FixedFormat(8, 5),
                             step=FixedFormat(16, 16, signed=False), noise=FixedFormat(16, 20, signed=False),
                             decay=FixedFormat(12, 24, signed=False), lanes=8)
              if fixed else BfpConfig.paper(variant, lanes=8, dataset_size=64))
    return [{"params": list(model.conv.parameters()), "config": BfpConfig.paper(variant, lanes=4, dataset_size=64)},
            {"params": list(model.fc.parameters()), "config": fc_cfg, "lr": 0.02}]


def _train(model, opt, steps, start=0):
    x, y = _data()
    losses = []
    for t in range(start, start + steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[t % 4 :: 4]), y[t % 4 :: 4])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_loop_with_bfp_groups(variant):
    model = _net()
    opt = LowPrecisionSGLD(_groups(model, variant), lr=0.05, seed=1, dataset_size=64, temperature=1e-3,
                           weight_decay=5e-4, grad_headroom=1)
    losses = _train(model, opt, 40)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses[::8]
    for group in opt.param_groups:
        cfg = group["config"]
        for p in group["params"]:
            st = opt.state[p]
            rows = 1 if p.ndim == 0 else p.shape[0]
            assert st["exp"].shape == (rows,) and st["mant"].shape == p.shape  # one exponent per row of dim 0
            w = BfpTensor(st["weight_mant"], st["weight_exp"]) if cfg.variant.has_accumulator else BfpTensor(
                st["mant"], st["exp"])
            assert int(w.mant.abs().max()) <= cfg.weight.max_mant
            assert torch.equal(p.detach(), to_float_torch(w, cfg.weight))  # p is exactly the emitted BFP weight
    assert model.fc.bias.shape == (1,) and opt.state[model.conv.bias]["exp"].shape == (4,)  # 1-D: per element
    assert [c["steps"] for c in opt.flush_counts()] == [40, 40]


@pytest.mark.parametrize("variant", ["vc", "lp_f"])
@pytest.mark.parametrize("fixed", [False, True])
def test_resume_from_checkpoint_is_bit_identical(variant, fixed):
    def make(model):
        return LowPrecisionSGLD(_groups(model, variant, fixed), lr=0.05, seed=9, dataset_size=64,
                                temperature=1e-3, weight_decay=5e-4)

    m1 = _net()
    o1 = make(m1)
    _train(m1, o1, 6)
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict()}, buf)
    _train(m1, o1, 4, 6)

    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m2 = _net()
    m2.load_state_dict(ck["model"])
    o2 = make(m2)
    o2.load_state_dict(ck["opt"])
    saved = ck["opt"]["state"]
    for i, p in enumerate(q for g in o2.param_groups for q in g["params"]):
        # integer state restored in its saved (narrow) dtype, not cast to the parameter's float dtype
        assert {k: t.dtype for k, t in o2.state[p].items()} == {k: t.dtype for k, t in saved[i].items()}
        assert not any(t.is_floating_point() for t in o2.state[p].values())
    _train(m2, o2, 4, 6)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
        s1, s2 = o1.state[p1], o2.state[p2]
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert o1.flush_counts() == o2.flush_counts()
    o3 = LowPrecisionSGLD(_groups(_net(), "naive", fixed), lr=0.05, seed=9, dataset_size=64, temperature=1e-3,
                          weight_decay=5e-4)
    with pytest.raises(ValueError, match=f"saved for a different config; variant: {variant} \\(saved\\) vs naive"):
        o3.load_state_dict(ck["opt"])


def test_fixed_and_bfp_groups_equal_separate_optimizers():
    """Group i's streams depend only on (seed, i): a mixed optimizer equals one optimizer per group."""
    model = _net()
    mixed = LowPrecisionSGLD(_groups(model, "sgd_f", fixed=True), lr=0.05, seed=3, dataset_size=64,
                             weight_decay=5e-4)
    ref_model = _net()
    groups = _groups(ref_model, "sgd_f", fixed=True)
    alone = [LowPrecisionSGLD([groups[0]], lr=0.05, seed=3, dataset_size=64, weight_decay=5e-4),
             LowPrecisionSGLD([dict(groups[1], lr=0.02)], lr=0.05, seed=3, dataset_size=64, weight_decay=5e-4)]
    # the second optimizer's only group has index 0: give it group 1's streams
    rt = alone[1]._runtime[0]
    rt.engine = type(rt.engine)(rt.cfg, derive_seed(3, 2))
    rt.grad_rng = TorchLaneRng.seeded(rt.cfg.rng, derive_seed(3, 3), rt.cfg.lanes, 1)
    x, y = _data()
    for t in range(5):
        for m, opts in ((model, [mixed]), (ref_model, alone)):
            for o in opts:
                o.zero_grad()
            torch.nn.functional.mse_loss(m(x[t::5]), y[t::5]).backward()
            for o in opts:
                o.step()
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert isinstance(mixed.param_groups[0]["config"], BfpConfig)
    assert isinstance(mixed.param_groups[1]["config"], DatapathConfig)
    assert "words" in mixed.state[model.fc.weight] and "mant" in mixed.state[model.conv.weight]


def test_nan_gradient_raises_before_anything_changes():
    model = _net()
    opt = LowPrecisionSGLD(_groups(model, "vc"), lr=0.05, seed=2, dataset_size=64, temperature=1e-3)
    _train(model, opt, 2)
    before = io.BytesIO()
    torch.save(opt.state_dict(), before)
    params = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.fc.bias.grad[0] = math.nan  # group 1 parameter 1: group 0 must not have moved either
    with pytest.raises(ValueError, match=r"NaN \(first at flat index 0\) in the gradient of parameter 1 of group 1"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))
    now = io.BytesIO()
    torch.save(opt.state_dict(), now)
    a = torch.load(io.BytesIO(before.getvalue()), weights_only=True)
    b = torch.load(io.BytesIO(now.getvalue()), weights_only=True)
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    for ga, gb in zip(a["lpsgld"]["groups"], b["lpsgld"]["groups"], strict=True):
        assert torch.equal(ga["grad_rng"]["s0"], gb["grad_rng"]["s0"])
        assert torch.equal(ga["engine"]["rng"]["s0"], gb["engine"]["rng"]["s0"])
    model.fc.bias.grad[0] = math.inf  # +-Inf saturates
    opt.step()


def test_bfp_group_option_errors():
    p = torch.nn.Parameter(torch.zeros(3))
    cfg = BfpConfig.paper("vc", lanes=2)
    with pytest.raises(ValueError, match=r"headroom must be in \[0, 63\] for BFP\(8,e8\), got 64"):
        LowPrecisionSGLD([p], lr=1e-3, config=cfg, grad_headroom=64)
    with pytest.raises(ValueError, match="grad_headroom is a BFP option"):
        LowPrecisionSGLD([p], lr=1e-3, config="w8-vc", grad_headroom=1)
    wide = dataclasses.replace(cfg, grad=BfpFormat(24, 8))
    with pytest.raises(ValueError, match=r"sr_bits must be in \[1, 38\] for BFP\(24,e8\), got 40"):
        LowPrecisionSGLD([p], lr=1e-3, config=wide, grad_sr_bits=40)
    with pytest.raises(TypeError, match="config must be a DatapathConfig, a BfpConfig, a SizedConfig or a name"):
        LowPrecisionSGLD([p], lr=1e-3, config=BfpFormat(8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_bfp_optimizer_equals_cpu(variant):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(16, 8, generator=gen), torch.randn(16, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in init] for _ in range(4)]
    runs = []
    for dev in ("cpu", "cuda"):
        ps = [torch.nn.Parameter(t.clone().to(dev)) for t in init]
        opt = LowPrecisionSGLD(ps, lr=0.05, config=BfpConfig.paper(variant, lanes=64, dataset_size=256), seed=2,
                               dataset_size=256, weight_decay=5e-4)
        for step in grads:
            for p, g in zip(ps, step, strict=True):
                p.grad = g.to(dev)
            opt.step()
        runs.append([(opt.state[p]["mant"].cpu(), opt.state[p]["exp"].cpu(), p.detach().cpu()) for p in ps])
    for a, b in zip(*runs, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
