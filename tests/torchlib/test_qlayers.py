"""Quantized layers: host-equal quantization, seeded counter-based SR, autograd errors, model helper."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from emulator.nn.qlayers import (  # noqa: E402
    GOLDEN,
    Quantizer,
    QuantSpec,
    host_uniforms,
    quantize_model,
    quantize_tensor,
    remove_quantization,
    stream_key,
    uniform_bits,
)
from emulator.spec.bfp import BfpFormat  # noqa: E402
from emulator.spec.formats import FixedFormat  # noqa: E402
from emulator.spec.rng import splitmix64  # noqa: E402

FMTS = [FixedFormat(8, 4), FixedFormat(6, 2), BfpFormat(8, 8), BfpFormat(6, 5)]


def test_uniform_bits_are_the_splitmix64_stream():
    key = stream_key(12345, 3, 7, 1)
    z, expect = key, []
    for _ in range(50):
        z, out = splitmix64(z)
        expect.append(out >> (64 - 20))
    got = uniform_bits(key, 50, 20)
    assert got.tolist() == expect
    assert np.array_equal(host_uniforms(key, (5, 10), 20), got.reshape(5, 10).numpy())
    keys = {stream_key(1, layer, call, d) for layer in range(3) for call in range(3) for d in (0, 1)}
    assert len(keys) == 18 and GOLDEN == 0x9E3779B97F4A7C15
    assert int(uniform_bits(key, 1000, 63).min()) >= 0  # logical shifts: never negative


@pytest.mark.parametrize("fmt", FMTS, ids=str)
@pytest.mark.parametrize("k", [None, 3, 32])
def test_quantize_tensor_equals_the_host_quantizer(fmt, k):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(6, 3, 4)) * np.exp2(rng.integers(-6, 4, size=(6, 1, 1)))).astype(np.float32)
    x[1] = 0
    x[2, 0, 0] = np.inf
    x[3, 1, 2] = -np.inf
    xt = torch.from_numpy(x)
    if k is None:
        words = fmt.quantize(x.astype(np.float64))
        got = quantize_tensor(xt, QuantSpec(fmt))
    else:
        words = fmt.quantize(x.astype(np.float64), "stochastic", np.random.default_rng(9), sr_bits=k)
        u = np.random.default_rng(9).integers(0, 1 << k, size=x.shape, dtype=np.int64)  # the host's draws
        got = quantize_tensor(xt, QuantSpec(fmt, "stochastic", k), torch.from_numpy(u))
    expect = fmt.to_float(words).astype(np.float32)
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy(), expect)


def test_quantizer_forward_and_backward_use_the_seeded_streams():
    act = QuantSpec(BfpFormat(8, 8), "stochastic", 16)
    err = QuantSpec(FixedFormat(8, 10), "stochastic", 12)
    q = Quantizer(act, err, seed=77, layer=2)
    rng = np.random.default_rng(0)
    for call in range(2):
        x = torch.tensor(rng.normal(size=(4, 5)), dtype=torch.float32, requires_grad=True)
        g = torch.tensor(rng.normal(size=(4, 5)) * 0.01, dtype=torch.float32)
        y = q(x)
        u_f = uniform_bits(stream_key(77, 2, call, 0), 20, 16).reshape(4, 5)
        assert torch.equal(y, quantize_tensor(x.detach(), act, u_f))
        y.backward(g)
        u_b = uniform_bits(stream_key(77, 2, call, 1), 20, 12).reshape(4, 5)
        assert torch.equal(x.grad, quantize_tensor(g, err, u_b))
        assert not torch.equal(x.grad, g)  # the error really was quantized
    assert int(q.calls) == 2


def test_global_rng_untouched():
    torch.manual_seed(0)
    before = torch.get_rng_state().clone()
    q = Quantizer(QuantSpec(FixedFormat(8, 4), "stochastic"), None, seed=1)
    q(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(before, torch.get_rng_state())


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def run(model, x, target):
    model.zero_grad()
    out = model(x)
    nn.functional.cross_entropy(out, target).backward()
    return out.detach().clone(), [p.grad.clone() for p in model.parameters()]


def test_quantize_model_on_a_small_cnn():
    torch.manual_seed(0)
    model = SmallCNN()
    keys = list(model.state_dict())
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 3, 1])
    out_fp, grads_fp = run(model, x, target)
    act = QuantSpec(BfpFormat(8, 8), "stochastic", 20)
    err = QuantSpec(BfpFormat(8, 8), "stochastic", 20)
    seen = {}
    h = quantize_model(model, act=act, err=err, seed=5)
    assert list(h.quantizers) == ["conv1", "conv2", "fc"]
    # parameters keep their keys; the quantizers' counters and seeds are buffers next to them
    extra = [f"{n}.lpsgld_quantizer.{b}" for n in ("conv1", "conv2", "fc")
             for b in ("calls", "eval_calls", "seed_bits")]
    assert sorted(model.state_dict()) == sorted(keys + extra)
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach())) for n, m in
             (("conv1", model.conv1), ("fc", model.fc))]
    out_q, grads_q = run(model, x, target)
    for hk in hooks:
        hk.remove()
    assert torch.equal(out_q, seen["fc"]) and not torch.equal(out_q, out_fp)
    for name in ("conv1", "fc"):  # every layer output lies on its per-example BFP grid
        assert torch.equal(seen[name], quantize_tensor(seen[name], QuantSpec(BfpFormat(8, 8))))
    assert all(not torch.equal(a, b) for a, b in zip(grads_q, grads_fp, strict=True))
    # determinism: a second model with the same weights and seed gives the same bits; another seed does not
    h.remove()
    out_again, _ = run(model, x, target)
    assert torch.equal(out_again, out_fp)
    h2 = quantize_model(model, act=act, err=err, seed=5)
    out_q2, grads_q2 = run(model, x, target)
    assert torch.equal(out_q2, out_q) and all(torch.equal(a, b) for a, b in zip(grads_q2, grads_q, strict=True))
    assert h2.state_dict() == {"conv1": 1, "conv2": 1, "fc": 1}
    remove_quantization(model)
    quantize_model(model, act=act, err=err, seed=6)
    out_q3, _ = run(model, x, target)
    assert not torch.equal(out_q3, out_q)
    remove_quantization(model)


def test_resume_continues_the_streams():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    spec = QuantSpec(FixedFormat(8, 5), "stochastic", 24)
    h = quantize_model(model, act=spec, seed=11)
    model(x)
    state = h.state_dict()
    second = model(x).detach()
    h.remove()
    h2 = quantize_model(model, act=spec, seed=11)
    h2.load_state_dict(state)
    assert torch.equal(model(x).detach(), second)
    h2.remove()


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"fmt must be a FixedFormat or BfpFormat, got 8"):
        QuantSpec(8)
    with pytest.raises(ValueError, match=r"rounding must be 'nearest' or 'stochastic', got 'floor'"):
        QuantSpec(FixedFormat(8, 4), "floor")
    with pytest.raises(ValueError, match=r"sr_bits must be in \[1, 52\] for BFP\(8,e8\), got 60"):
        QuantSpec(BfpFormat(8, 8), "stochastic", 60)
    with pytest.raises(ValueError, match=r"cannot quantize NaN \(first at flat index 4\) to Q\(8,4\)"):
        quantize_tensor(torch.tensor([[0.0, 1, 2], [3, float("nan"), 5]]), QuantSpec(FixedFormat(8, 4)))
    with pytest.raises(ValueError, match=r"headroom is a BFP option; got headroom=1 for Q\(8,4\)"):
        QuantSpec(FixedFormat(8, 4), headroom=1)
    x = torch.tensor([[1.99, 0.5], [-1.0, 0.25]])
    hq = quantize_tensor(x, QuantSpec(BfpFormat(8, 8), headroom=1))
    assert np.array_equal(hq.numpy(), BfpFormat(8, 8).to_float(BfpFormat(8, 8).quantize(x.double().numpy(),
                                                                                         headroom=1)))
    assert hq[0, 0].item() == 2.0  # 1.99 is within one step of saturation: E goes up, 1.99 rounds to 2
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        quantize_tensor(torch.tensor([1, 2]), QuantSpec(FixedFormat(8, 4)))
    with pytest.raises(ValueError, match=r"stochastic rounding needs uniforms u"):
        quantize_tensor(torch.ones(2), QuantSpec(FixedFormat(8, 4), "stochastic"))
    with pytest.raises(ValueError, match=r"a Quantizer needs act or err \(both are None\)"):
        Quantizer(None, None)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\), got -1"):
        Quantizer(QuantSpec(FixedFormat(8, 4)), None, seed=-1)
    model = nn.Sequential(nn.Linear(2, 2))
    quantize_model(model, act=QuantSpec(FixedFormat(8, 4)))
    with pytest.raises(ValueError, match=r"model is already quantized"):
        quantize_model(model, act=QuantSpec(FixedFormat(8, 4)))
    remove_quantization(model)
    with pytest.raises(ValueError, match=r"model has no Linear, Conv2d layer to quantize"):
        quantize_model(nn.Sequential(nn.ReLU()), act=QuantSpec(FixedFormat(8, 4)))
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got str"):
        quantize_model("net", act=QuantSpec(FixedFormat(8, 4)))
    q = Quantizer(None, QuantSpec(FixedFormat(8, 4)))
    x = torch.tensor([1.0, float("nan")], requires_grad=True)
    y = q(x * 1.0)
    with pytest.raises(ValueError, match=r"cannot quantize NaN \(first at flat index 0\)"):
        y.backward(torch.tensor([float("nan"), 1.0]))


def test_cuda_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3
    for fmt in FMTS:
        spec = QuantSpec(fmt, "stochastic", 20)
        qc, qg = Quantizer(spec, spec, seed=4), Quantizer(spec, spec, seed=4).cuda()
        assert torch.equal(qc(x), qg(x.cuda()).cpu())
    assert torch.equal(uniform_bits(5, 1000, 63), uniform_bits(5, 1000, 63, "cuda").cpu())


class _GivenUniforms(np.random.Generator):
    """A Generator whose ``integers`` returns given values: pins the host's SR uniforms."""

    def __init__(self, u):
        super().__init__(np.random.PCG64(0))
        self.u = np.asarray(u, dtype=np.int64)

    def integers(self, low, high, size=None, dtype=np.int64):
        return np.broadcast_to(self.u, size).astype(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_stochastic_fraction_is_exact_for_small_negative_values(dtype):
    # t in (-1/2, 0) with fraction bits below 2^-53: f_k = floor(t 2^k) mod 2^k exactly (the old
    # floor((t - floor t) 2^k) gave 2^52 - 2^12, one too many, and rounded up at u = f_k)
    from fractions import Fraction

    fmt, k = FixedFormat(8, 0), 52
    if dtype == torch.float32:  # float32 values (24 significant bits) whose fraction has bits below 2^-53
        xs = [-(2**-40 + 2**-60), -(2**-31 + 2**-54), -(2**-35 + 2**-50 + 2**-58)]
        assert all(float(np.float32(x)) == x for x in xs)
    else:
        xs = [-(2**-40 + 2**-60), -(2**-3 + 2**-40 + 2**-62), -(1 + 2**-30 + 2**-50)]
    spec = QuantSpec(fmt, "stochastic", k)
    for x in xs:
        fk = int(np.floor(Fraction(x) * 2**k)) % (1 << k)
        assert 0 < fk < 1 << k
        fl = int(np.floor(x))
        for u, want in ((fk - 1, fl + 1), (fk, fl)):
            got = quantize_tensor(torch.tensor([x], dtype=dtype), spec, torch.tensor([u]))
            host = fmt.quantize(np.array([x]), "stochastic", _GivenUniforms([u]), sr_bits=k)
            assert (float(got[0]), int(host[0])) == (want, want), (x, u)
    assert int(np.floor(Fraction(xs[0]) * 2**k)) % (1 << k) == (1 << 52) - (1 << 12) - 1
