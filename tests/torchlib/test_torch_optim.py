"""LowPrecisionSGLD: gradient quantization, the step against the numpy engine, groups, schedules, resume."""

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# most of these tests run the toy's N = 1 on purpose; tests/torchlib/test_torch_ergonomics.py checks the warning
pytestmark = pytest.mark.filterwarnings(
    "ignore:parameter group .*dataset_size not given:emulator.optim.optimizer.LowPrecisionWarning")
torch.set_num_threads(1)  # tiny tensors: OpenMP threads only add barrier waits on the shared 2-core machine

from emulator.engines.numpy_engine import NumpyEngine  # noqa: E402
from emulator.engines.torch_engine import TorchLaneRng, torch_quantize  # noqa: E402
from emulator.optim import CyclicalSampling, LowPrecisionSGLD, derive_seed, gradient_uniforms, sgld_fp  # noqa: E402
from emulator.optim.optimizer import LowPrecisionWarning  # noqa: E402
from emulator.spec.datapath import DatapathConfig, Variant  # noqa: E402
from emulator.spec.formats import FixedFormat  # noqa: E402
from emulator.spec.host import CyclicalCosineLR, HyperParams, step_registers, step_registers_flushed  # noqa: E402
from emulator.spec.presets import preset  # noqa: E402

SPECIAL = [0.0, -0.0, 0.0625, -0.0625, 0.1875, -0.1875, 1e-30, -1e-30, 15.875, 15.9375, 16.0, -16.0, -16.0625,
           1e6, -1e6, math.inf, -math.inf, 2.0**-24, 0.5 / 8, 1.5 / 8, -2.5 / 8]


def _values(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.array(SPECIAL), rng.normal(0, 8, n), rng.normal(0, 1e-3, 50)])
    return x.astype(np.float32)


@pytest.mark.parametrize("fmt", [FixedFormat(8, 3), FixedFormat(4, 1), FixedFormat(16, 10), FixedFormat(8, -2)])
def test_quantize_nearest_equals_fixedformat(fmt):
    x = _values()
    want = fmt.quantize(x.astype(np.float64), "nearest")
    got = torch_quantize(torch.from_numpy(x), fmt, "nearest")
    assert got.dtype == torch.int64 and torch.equal(got, torch.from_numpy(want))


@pytest.mark.parametrize("k", [1, 8, 32, 52])
def test_quantize_stochastic_equals_fixedformat_given_same_uniforms(k):
    fmt = FixedFormat(8, 3)
    x = _values(seed=k)
    rng = np.random.Generator(np.random.PCG64(5))
    u = np.random.Generator(np.random.PCG64(5)).integers(0, 1 << k, size=x.shape, dtype=np.int64)
    want = fmt.quantize(x.astype(np.float64), "stochastic", rng=rng, sr_bits=k)
    got = torch_quantize(torch.from_numpy(x), fmt, "stochastic", u=torch.from_numpy(u), sr_bits=k)
    assert torch.equal(got, torch.from_numpy(want))


def test_quantize_errors():
    fmt = FixedFormat(8, 3)
    x = torch.tensor([[1.0, 2.0], [float("nan"), 0.0]])
    with pytest.raises(ValueError, match=r"NaN \(first at flat index 2\)"):
        torch_quantize(x, fmt)
    with pytest.raises(TypeError, match="uniforms"):
        torch_quantize(torch.zeros(3), fmt, "stochastic")
    with pytest.raises(ValueError, match="rounding must be"):
        torch_quantize(torch.zeros(3), fmt, "up")
    with pytest.raises(TypeError, match="floating-point"):
        torch_quantize(torch.zeros(3, dtype=torch.int64), fmt)


# ---- one step against the numpy engine -------------------------------------------------------


@pytest.mark.parametrize("name", ["w8-vc", "w8-naive", "w8-lpf", "w8-sgd-l", "w8-sgd-f", "w16-vc"])
@pytest.mark.parametrize("lr", [2e-3, 1e-3])
def test_optimizer_step_equals_numpy_engine(name, lr):
    """Two params, two steps: words equal NumpyEngine fed with the documented gradient stream."""
    seed, lanes = 3, 8
    cfg = preset(name, lanes)
    rng = np.random.default_rng(1)
    shapes = [(5, 7), (13,)]
    params = [torch.nn.Parameter(torch.from_numpy(rng.normal(0, 2, s).astype(np.float32))) for s in shapes]
    opt = LowPrecisionSGLD(params, lr=lr, config=name, lanes=lanes, weight_decay=0.05, seed=seed,
                           dataset_size=1, temperature=1.0)
    ne = NumpyEngine(cfg, derive_seed(seed, 0))
    grad_rng = TorchLaneRng.seeded(cfg.rng, derive_seed(seed, 1), lanes, 1)
    words = [cfg.state.quantize(p.detach().double().numpy(), "nearest") for p in params]
    regs = step_registers(cfg, HyperParams(lr, weight_decay=0.05))
    for _ in range(2):
        for p in params:
            p.grad = torch.from_numpy(rng.normal(0, 3, p.shape).astype(np.float32))
        expect = []
        for i, p in enumerate(params):
            u = gradient_uniforms(grad_rng, p.numel(), 32).numpy()
            g = p.grad.double().numpy()
            gw = cfg.grad.quantize(g, "stochastic", rng=_FixedUniforms(u), sr_bits=32)
            r = ne.step(words[i], gw, regs)
            words[i] = r.state
            expect.append(r.weight)
        opt.step()
        for i, p in enumerate(params):
            assert torch.equal(opt.state[p]["words"], torch.from_numpy(words[i]))
            assert torch.equal(p.detach().double(), torch.from_numpy(expect[i] * cfg.weight.lsb))


class _FixedUniforms(np.random.Generator):
    """A numpy Generator stand-in that returns given uniforms (quantize draws once per call)."""

    def __init__(self, u):
        super().__init__(np.random.PCG64(0))
        self._u = u

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        assert self._u.shape == tuple(np.atleast_1d(size)) or self._u.size == np.prod(size)
        return self._u.reshape(size)


def test_nan_gradient_raises_and_inf_saturates():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = LowPrecisionSGLD([p], lr=2e-3, config="w8-sgd-l", seed=0)
    p.grad = torch.tensor([0.0, float("inf"), -float("inf"), 1e9])
    opt.step()  # saturates: grad words are +-127/-128: one step moves at most lr * 16
    p.grad = torch.tensor([0.0, float("nan"), 0.0, 0.0])
    with pytest.raises(ValueError, match=r"NaN \(first at flat index 1\)"):
        opt.step()


# ---- drop-in training, groups, schedulers -------------------------------------------------------


def _toy_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    return x, x @ w + 0.1 * torch.randn(256, 1, generator=g)


def _train_cfg(variant, lanes=8):
    """An 8-bit training configuration: Q(8,4) weights and gradients, lr registers up to 1."""
    if variant == "fp":
        return "fp"
    u = dict(signed=False)
    return DatapathConfig(Variant(variant), weight=FixedFormat(8, 4), grad=FixedFormat(8, 4),
                          acc=FixedFormat(24, 16) if variant in ("lp_f", "sgd_f") else None,
                          step=FixedFormat(16, 16, **u), noise=FixedFormat(16, 16, **u),
                          decay=FixedFormat(12, 20, **u), lanes=lanes)


@pytest.mark.parametrize("variant", ["fp", "lp_f", "naive", "vc", "sgd_l", "sgd_f"])
def test_drop_in_training_loop_reduces_loss(variant):
    config = _train_cfg(variant)
    torch.manual_seed(0)  # the model's float init only; the optimizer's randomness is its own seed
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = LowPrecisionSGLD(model.parameters(), lr=0.1, config=config, seed=1, dataset_size=256,
                           temperature=1e-3)
    x, y = _toy_data()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses[::10]
    if config != "fp":
        cfg = opt.param_groups[0]["config"]
        for p in model.parameters():  # p holds exactly the emitted weight word's value
            q = p.detach().double() / cfg.weight.lsb
            assert torch.equal(q, q.round())


def test_param_groups_schedulers_and_registers():
    a = torch.nn.Parameter(torch.ones(10))
    b = torch.nn.Parameter(torch.ones(6))
    opt = LowPrecisionSGLD([{"params": [a]}, {"params": [b], "lr": 1e-3, "config": "w8-sgd-l", "weight_decay": 0.1}],
                           lr=2e-3, config="w8-vc")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        a.grad = torch.ones(10)
        b.grad = torch.ones(6)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 2e-3 / 8 and opt.param_groups[1]["lr"] == 1e-3 / 8
    assert opt.param_groups[1]["config"] == preset("w8-sgd-l", 1024)
    assert [c["steps"] for c in opt.flush_counts()] == [3, 3]


def test_cyclical_sampling_and_underflow_flush_counts():
    cs = CyclicalSampling(base_lr=2e-3, total=245, cycles=7, samples_per_cycle=5)
    units = cs.sample_units()
    assert len(units) == 35 and units[:5] == [30, 31, 32, 33, 34] and units[-1] == 244
    assert cs.lr(0) == 2e-3 and cs.lr(35) == 2e-3 and cs.lr(17) == CyclicalCosineLR(2e-3, 245, 7).lr(17)
    p = torch.nn.Parameter(torch.zeros(20))
    opt = LowPrecisionSGLD([p], lr=2e-4, config="w8-vc", lanes=4, seed=0)
    total = 400
    sched = CyclicalSampling(2e-4, total=total, cycles=1, samples_per_cycle=5).scheduler(opt)
    with pytest.warns(LowPrecisionWarning, match=r"register\(s\) vc_var flushed to 0 at step 397"):  # once
        for t in range(total):
            assert opt.param_groups[0]["lr"] == CyclicalCosineLR(2e-4, total, 1).lr(t)
            p.grad = torch.zeros(20)
            opt.step()
            sched.step()
    counts = opt.flush_counts()[0]
    # the last steps of the cycle have lr below half a step-register LSB (2^-25): flushed, not raised
    tiny = [t for t in range(total) if CyclicalCosineLR(2e-4, total, 1).lr(t) < 2.0**-25]
    assert tiny == [397, 398, 399] and counts["flushed"]["lr"] == len(tiny)
    assert counts["flushed_steps"] >= len(tiny) and counts["steps"] == total
    with pytest.raises(ValueError, match="samples_per_cycle"):
        CyclicalSampling(1.0, 10, 2, 6)


def test_host_underflow_policy():
    cfg = preset("w8-vc")
    hp = HyperParams(1e-9)
    with pytest.raises(ValueError, match="underflows"):
        step_registers(cfg, hp)
    regs, flushed = step_registers_flushed(cfg, hp)
    assert regs.step == 0 and regs.vc_var == 0 and flushed == ("lr", "vc_var")
    assert step_registers(cfg, hp, underflow="flush") == regs
    with pytest.raises(ValueError, match="underflow must be one of"):
        step_registers(cfg, hp, underflow="zero")


def test_fp_variant_is_plain_seeded_sgld():
    p = torch.nn.Parameter(torch.arange(6, dtype=torch.float32))
    q = p.detach().clone()
    opt = LowPrecisionSGLD([p], lr=0.1, config="fp", seed=4, temperature=0.5, dataset_size=10, weight_decay=0.2)
    p.grad = torch.ones(6)
    opt.step()
    gen = torch.Generator().manual_seed(derive_seed(4, 0))
    sgld_fp([q], [torch.ones(6)], lr=0.1, weight_decay=0.2, noise_std=math.sqrt(2 * 0.1 * 0.5 / 10), generator=gen)
    assert torch.equal(p.detach(), q)


def test_constructor_errors():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="unknown config 'w9-vc'"):
        LowPrecisionSGLD([p], lr=1e-3, config="w9-vc")
    with pytest.raises(ValueError, match="grad_sr_bits"):
        LowPrecisionSGLD([p], lr=1e-3, grad_sr_bits=60)
    with pytest.raises(ValueError, match="seed"):
        LowPrecisionSGLD([p], lr=1e-3, seed=-1)
    with pytest.raises(TypeError, match="DatapathConfig"):
        LowPrecisionSGLD([p], lr=1e-3, config=8)


def test_step_rejects_parameters_moved_after_construction():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = LowPrecisionSGLD([p], lr=1e-3, config="w8-vc")
    p.grad = torch.zeros(3)
    # without a second device here: pretend the engines were built elsewhere (model.cuda() after construction)
    opt._runtime[0].device = torch.device("meta")
    with pytest.raises(ValueError, match="group 0: parameters on cpu, but the optimizer's engines were built on meta"):
        opt.step()
    assert "words" not in opt.state[p]  # nothing of the step happened


# ---- checkpoint / resume ----------------------------------------------------------------------


def _train(model, opt, steps, start):
    x, y = _toy_data()
    for t in range(start, start + steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[t % 4 :: 4]), y[t % 4 :: 4]).backward()
        opt.step()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


@pytest.mark.parametrize("config", ["vc", "lp_f", "fp"])
def test_resume_from_checkpoint_is_bit_identical(config):
    def make(model):
        return LowPrecisionSGLD([{"params": list(model[0].parameters())},
                                 {"params": list(model[2].parameters()), "lr": 0.02}],
                                lr=0.05, config=_train_cfg(config), seed=9, dataset_size=256, weight_decay=1e-3)

    m1 = _model()
    o1 = make(m1)
    _train(m1, o1, 7, 0)
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict()}, buf)
    _train(m1, o1, 5, 7)

    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m2 = _model()
    m2.load_state_dict(ck["model"])
    o2 = make(m2)
    o2.load_state_dict(ck["opt"])
    _train(m2, o2, 5, 7)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
        if config != "fp":
            w1, w2 = o1.state[p1]["words"], o2.state[p2]["words"]
            assert w2.dtype == torch.int64 and torch.equal(w1, w2)
    assert o1.flush_counts() == o2.flush_counts()


def test_load_state_dict_rejects_other_config():
    m = _model()
    o = LowPrecisionSGLD(m.parameters(), lr=0.001, config="w8-vc")
    sd = o.state_dict()
    o2 = LowPrecisionSGLD(m.parameters(), lr=0.001, config="w8-naive")
    # only the differing field is named, not two full reprs
    with pytest.raises(ValueError, match=r"^group 0: the state_dict was saved for a different config; "
                                         r"variant: vc \(saved\) vs naive \(optimizer\)$"):
        o2.load_state_dict(sd)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("variant", ["vc", "lp_f", "naive", "sgd_f"])
def test_cuda_optimizer_equals_cpu(variant):
    # the same float gradients on both devices (a CUDA forward/backward may round differently)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(16, 8, generator=gen), torch.randn(16, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in init] for _ in range(5)]
    runs = []
    for dev in ("cpu", "cuda"):
        ps = [torch.nn.Parameter(t.clone().to(dev)) for t in init]
        opt = LowPrecisionSGLD(ps, lr=0.05, config=_train_cfg(variant), seed=2, dataset_size=256, weight_decay=1e-3)
        for step in grads:
            for p, g in zip(ps, step, strict=True):
                p.grad = g.to(dev)
            opt.step()
        runs.append([(opt.state[p]["words"].cpu(), p.detach().cpu()) for p in ps])
    for (wa, pa), (wb, pb) in zip(*runs, strict=True):
        assert torch.equal(wa, wb) and torch.equal(pa, pb)


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("name", ["w8-vc", "w8-lpf"])
def test_step_quantize_fused_equals_reference(name, rounding):
    from emulator.engines.torch_engine import TorchEngine

    cfg = preset(name, 8)
    regs = step_registers(cfg, HyperParams(2e-3))
    gen = torch.Generator().manual_seed(0)
    engines = [TorchEngine(cfg, 1, path=p) for p in ("fused", "reference")]
    streams = [TorchLaneRng.seeded(cfg.rng, 2, 8, 1) for _ in engines]
    for n in (1001, 3, 20):
        theta = torch.randint(cfg.state.min_word, cfg.state.max_word + 1, (n,), generator=gen)
        g = 20 * torch.randn(n, generator=gen)
        a, b = (e.step_quantize(theta, g, regs, grad_rng=s, rounding=rounding) for e, s in zip(engines, streams,
                                                                                                strict=True))
        assert torch.equal(a.state, b.state) and torch.equal(a.weight, b.weight)
    assert streams[0] == streams[1] and engines[0].rng == engines[1].rng
    if rounding == "nearest":  # the gradient stream is not drawn
        assert streams[0] == TorchLaneRng.seeded(cfg.rng, 2, 8, 1)
