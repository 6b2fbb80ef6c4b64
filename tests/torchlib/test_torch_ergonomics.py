"""The torch library as a PyTorch user expects it (issue 12): configurations from hyper-parameters,
objects that copy and save, quantized layers as modules, telemetry, errors that name the difference,
sampling conveniences."""

import copy
import dataclasses
import io
import pickle

import pytest

torch = pytest.importorskip("torch")
NO_N_WARNING = pytest.mark.filterwarnings(  # the toy's N = 1 on purpose
    "ignore:parameter group .*dataset_size not given:emulator.optim.optimizer.LowPrecisionWarning")
from torch import nn  # noqa: E402

from emulator.nn.qlayers import QuantizedModel, Quantizer, QuantSpec, quantize_model, remove_quantization  # noqa: E402
from emulator.optim import CyclicalSampling, CyclicalScheduler, LowPrecisionSGLD  # noqa: E402
from emulator.optim.optimizer import LowPrecisionWarning, count_saturated  # noqa: E402
from emulator.spec.bfp import BfpConfig, BfpFormat  # noqa: E402
from emulator.spec.datapath import DatapathConfig, Variant  # noqa: E402
from emulator.spec.formats import FixedFormat  # noqa: E402
from emulator.spec.gaussian import GaussianSpec  # noqa: E402
from emulator.spec.host import HyperParams, sized_registers, step_registers  # noqa: E402
from emulator.spec.presets import preset  # noqa: E402
from emulator.spec.sizing import SizedConfig, sized_config  # noqa: E402


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _data(n: int = 64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _train(model, opt, steps, x, y, sched=None):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
    return losses


def _same(m1, m2, o1=None, o2=None):
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
        if o1 is not None:
            s1, s2 = o1.state[p1], o2.state[p2]
            assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


# ---- 1. configurations from hyper-parameters ---------------------------------------------------


def test_default_config_trains_an_ordinary_network_at_ordinary_lr():
    x, y = _data()
    model = _mlp()
    opt = LowPrecisionSGLD(model.parameters(), lr=0.1, dataset_size=len(x), temperature=1e-3)
    cfg = opt.param_groups[0]["config"]
    assert cfg == BfpConfig.paper("vc", max_lr=0.1, weight_decay=0.0, temperature=1e-3, dataset_size=64)
    losses = _train(model, opt, 60, x, y)
    ref = _mlp()
    sgd = _train(ref, torch.optim.SGD(ref.parameters(), lr=0.1), 60, x, y)
    assert losses[-1] < 0.7 * losses[0] and abs(losses[-1] - sgd[-1]) < 0.05 * sgd[-1]  # trains as SGD does


@NO_N_WARNING
def test_toy_presets_stay_available_by_name():
    opt = LowPrecisionSGLD(_mlp().parameters(), lr=2e-3, config="w8-vc")
    assert opt.param_groups[0]["config"] == preset("w8-vc", 1024)


def _old_study_config(v, w, f, lr, t, n, wd, gauss, sr_bits, lanes):
    """emulator.studies.training.fixed_training_config before DatapathConfig.paper existed."""
    regs = sized_registers(v, HyperParams(lr, t, n, wd), gaussian=gauss)
    kw = dict(weight=FixedFormat(w, f), grad=FixedFormat(w, f), acc=FixedFormat(w + 16, f + 8) if v.has_accumulator
              else None, gaussian=gauss, sr_bits=sr_bits, lanes=lanes, **regs)
    probe = DatapathConfig(v, rng_words=8, **kw)
    return DatapathConfig(v, rng_words=1 + max(fld.word for fld in probe.fields.values()), **kw)


@pytest.mark.parametrize("variant", ["vc", "naive", "lp_f", "sgd_l", "sgd_f"])
@pytest.mark.parametrize("lr", [0.5, 1e-3])
def test_datapath_config_paper_sizes_the_registers(variant, lr):
    v = Variant(variant)
    gauss = GaussianSpec("clt", 4, 8, 0)
    cfg = DatapathConfig.paper(v, max_lr=lr, temperature=1e-3, dataset_size=50000, weight_decay=5e-4,
                               gaussian=gauss, lanes=8)
    assert cfg == _old_study_config(v, 8, 8, lr, 1e-3, 50000, 5e-4, gauss, None, 8)
    assert cfg.weight == FixedFormat(8, 8) and cfg.step.max_value >= lr > cfg.step.max_value / 2
    step_registers(cfg, HyperParams(lr, 1e-3, 50000, 5e-4), underflow="flush")  # holds its max_lr
    with pytest.raises(ValueError, match="does not fit register format"):
        step_registers(cfg, HyperParams(4 * lr, 1e-3, 50000, 5e-4))
    with pytest.raises(ValueError, match="max_lr must be > 0"):
        DatapathConfig.paper(v, max_lr=0.0)


def test_optimizer_sizes_registers_from_its_groups():
    m = _mlp()
    opt = LowPrecisionSGLD([{"params": m[0].parameters()},
                            {"params": m[2].parameters(), "lr": 0.01, "config": "bfp8-lpf", "max_lr": 0.02}],
                           lr=0.2, config="fixed8-vc", weight_decay=5e-4, temperature=1e-2, dataset_size=1000,
                           lanes=16)
    g0, g1 = (g["config"] for g in opt.param_groups)
    assert g0 == DatapathConfig.paper("vc", max_lr=0.2, weight_decay=5e-4, temperature=1e-2, dataset_size=1000,
                                      lanes=16)
    assert g1 == BfpConfig.paper("lp_f", max_lr=0.02, weight_decay=5e-4, temperature=1e-2, dataset_size=1000,
                                 lanes=16)
    assert sized_config("fixed8-sgd-f") == SizedConfig("fixed", "sgd_f") and SizedConfig("bfp", "vc").name == "bfp8-vc"
    with pytest.raises(ValueError, match="lr=0 and max_lr is not set; pass max_lr="):
        LowPrecisionSGLD(m.parameters(), lr=0.0, config="fixed8-vc")
    with pytest.raises(ValueError, match="unknown config 'fixed9-vc'"):
        LowPrecisionSGLD(m.parameters(), lr=0.1, config="fixed9-vc")


@NO_N_WARNING
def test_invalid_lr_is_rejected_at_construction_naming_the_option():
    ps = _mlp().parameters
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"lr=.* is invalid; lr must be finite and >= 0"):
            LowPrecisionSGLD(ps(), lr=bad)
    with pytest.raises(ValueError, match=r"parameter group 0: lr=0.1 does not fit the registers of config preset "
                                         r"'w8-vc': lr=0.1 does not fit register format UQ\(16,24\).*config='bfp8-vc'"):
        LowPrecisionSGLD(ps(), lr=0.1, config="w8-vc")
    with pytest.raises(ValueError, match=r"parameter group 0: max_lr=0.01 does not fit the registers of config "
                                         r"preset 'w8-vc'"):
        LowPrecisionSGLD(ps(), lr=1e-3, max_lr=0.01, config="w8-vc")
    with pytest.raises(ValueError, match=r"parameter group 1: lr=-1 is invalid"):
        m = _mlp()
        LowPrecisionSGLD([{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": -1}], lr=0.1)


def test_a_scheduler_beyond_the_range_fails_at_that_step():
    x, y = _data()
    model = _mlp()
    opt = LowPrecisionSGLD(model.parameters(), lr=0.1, config="fixed8-sgd-l")
    _train(model, opt, 2, x, y)
    opt.param_groups[0]["lr"] = 5.0
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"^step 3 of parameter group 0: lr=5 does not fit the group's registers "
                                         r"\(lr=5 does not fit .*max_lr="):
        _train(model, opt, 1, x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.telemetry()[0]["steps"] == 2


def test_a_0d_tensor_lr_is_accepted_like_torch_optim():
    x, y = _data()
    runs = []
    for lr in (0.05, torch.tensor(0.05)):
        model = _mlp()
        opt = LowPrecisionSGLD(model.parameters(), lr=lr, config="fixed8-sgd-l", max_lr=0.05)
        _train(model, opt, 3, x, y)
        runs.append(model)
    _same(*runs)
    with pytest.raises(ValueError, match="a tensor lr must have one element"):
        LowPrecisionSGLD(_mlp().parameters(), lr=torch.tensor([0.1, 0.2]))


# ---- 5. SGD keywords -----------------------------------------------------------------------------


@NO_N_WARNING
def test_sgd_keywords_are_supported_or_refused_with_a_reason():
    ps = _mlp().parameters
    LowPrecisionSGLD(ps(), lr=0.1, momentum=0, dampening=0, nesterov=False, foreach=None, fused=None)
    for kw, why in (({"momentum": 0.9}, "no velocity register"), ({"nesterov": True}, "Nesterov momentum needs"),
                    ({"foreach": True}, "multi-tensor kernels"), ({"differentiable": True}, "integer arithmetic"),
                    ({"fused": True}, "fused SGD kernel")):
        name = next(iter(kw))
        with pytest.raises(ValueError, match=rf"{name}={kw[name]!r} is not supported by LowPrecisionSGLD: .*{why}"):
            LowPrecisionSGLD(ps(), lr=0.1, **kw)
    with pytest.raises(ValueError, match=r"parameter group 0: momentum=0.5 is not supported"):
        LowPrecisionSGLD([{"params": list(ps()), "momentum": 0.5}], lr=0.1)


def test_maximize_ascends_on_the_negated_gradient():
    x, y = _data()
    a, b = _mlp(), _mlp()
    oa = LowPrecisionSGLD(a.parameters(), lr=0.05, config="fixed8-vc", maximize=True, seed=3, dataset_size=64)
    ob = LowPrecisionSGLD(b.parameters(), lr=0.05, config="fixed8-vc", seed=3, dataset_size=64)
    for _ in range(3):
        for m, o, sign in ((a, oa, 1.0), (b, ob, -1.0)):
            o.zero_grad()
            (sign * nn.functional.cross_entropy(m(x), y)).backward()
            o.step()
    _same(a, b, oa, ob)


# ---- 2. copy, pickle, save -----------------------------------------------------------------------


@pytest.mark.parametrize("config", ["bfp8-vc", "fixed8-lpf", "fp"])
def test_optimizer_deepcopy_and_pickle_continue_bit_identically(config):
    x, y = _data()
    model = _mlp()
    opt = LowPrecisionSGLD(model.parameters(), lr=0.05, config=config, seed=5, dataset_size=64, temperature=1e-2)
    _train(model, opt, 3, x, y)
    both = copy.deepcopy((model, opt))
    pickled = pickle.loads(pickle.dumps((model, opt)))
    _train(model, opt, 3, x, y)
    for m2, o2 in (both, pickled):
        _train(m2, o2, 3, x, y)
        _same(model, m2, opt, o2)
        assert o2.telemetry() == opt.telemetry()


def test_optimizer_scheduler_and_sampling_state_load_with_weights_only():
    x, y = _data()
    sampling = CyclicalSampling(0.05, total=12, cycles=2, samples_per_cycle=2, burnin=6)

    def make():
        m = _mlp()
        o = LowPrecisionSGLD(m.parameters(), lr=0.05, seed=2, dataset_size=64, temperature=1e-2)
        return m, o, sampling.scheduler(o)

    m1, o1, s1 = make()
    _train(m1, o1, 4, x, y, s1)
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict(), "sched": s1.state_dict(),
                "sampling": sampling.state_dict()}, buf)
    _train(m1, o1, 4, x, y, s1)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    assert CyclicalSampling.from_state_dict(ck["sampling"]) == sampling
    m2, o2, s2 = make()
    m2.load_state_dict(ck["model"])
    o2.load_state_dict(ck["opt"])
    s2.load_state_dict(ck["sched"])
    _train(m2, o2, 4, x, y, s2)
    _same(m1, m2, o1, o2)
    assert s1.last_epoch == s2.last_epoch == 8 and s1.get_last_lr() == s2.get_last_lr()
    other = CyclicalSampling(0.05, total=12, cycles=3, samples_per_cycle=2).scheduler(make()[1])
    with pytest.raises(ValueError, match=r"different CyclicalSampling; cycles: 2 \(saved\) vs 3 \(scheduler\), "
                                         r"burnin: 6 \(saved\) vs 0"):
        other.load_state_dict(ck["sched"])


BFP8 = QuantSpec(BfpFormat(8, 8), "stochastic", 20)


def _qmlp(seed=0, **kw):
    m = _mlp(seed)
    quantize_model(m, act=BFP8, err=BFP8, seed=7, **kw)
    return m


def test_quantized_model_deepcopy_has_independent_counters_and_pickles():
    x, _ = _data()
    m = _qmlp()
    m(x).sum().backward()
    c = copy.deepcopy(m)
    c(x).sum().backward()
    c(x).sum().backward()
    assert int(m[0].lpsgld_quantizer.calls) == 1 and int(c[0].lpsgld_quantizer.calls) == 3
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), m(x)) and int(loaded[2].lpsgld_quantizer.calls) == 2
    assert list(QuantizedModel(loaded).quantizers) == ["0", "2"]
    remove_quantization(loaded)
    assert not QuantizedModel(loaded).quantizers and torch.equal(loaded(x), loaded[2](loaded[1](loaded[0](x))))


def test_model_and_optimizer_state_alone_resume_a_quantized_run():
    x, y = _data()

    def make():
        m = _qmlp()
        return m, LowPrecisionSGLD(m.parameters(), lr=0.05, seed=4, dataset_size=64, temperature=1e-2)

    m1, o1 = make()
    _train(m1, o1, 3, x, y)
    sd = {"model": copy.deepcopy(m1.state_dict()), "opt": copy.deepcopy(o1.state_dict())}
    assert int(sd["model"]["0.lpsgld_quantizer.calls"]) == 3
    assert int(sd["model"]["0.lpsgld_quantizer.seed_bits"]) == 7
    _train(m1, o1, 3, x, y)
    m2, o2 = make()
    m2.load_state_dict(sd["model"])
    o2.load_state_dict(sd["opt"])
    _train(m2, o2, 3, x, y)
    _same(m1, m2, o1, o2)


# ---- 3. quantized layers as modules: eval, logits, compile ---------------------------------------


def test_evaluation_rounds_to_nearest_and_never_touches_the_training_streams():
    x, y = _data()
    trained, evaluated = _qmlp(), _qmlp()
    oa = LowPrecisionSGLD(trained.parameters(), lr=0.05, seed=1, dataset_size=64, temperature=1e-2)
    ob = LowPrecisionSGLD(evaluated.parameters(), lr=0.05, seed=1, dataset_size=64, temperature=1e-2)
    for _ in range(3):
        _train(trained, oa, 1, x, y)
        _train(evaluated, ob, 1, x, y)
        evaluated.eval()
        with torch.no_grad():
            e1, e2 = evaluated(x), evaluated(x)
        evaluated.train()
        with torch.no_grad():  # gradients off counts as evaluation too
            e3 = evaluated(x)
        assert torch.equal(e1, e2) and torch.equal(e1, e3)
    _same(trained, evaluated, oa, ob)
    q = evaluated[0].lpsgld_quantizer
    assert int(q.calls) == 3 and int(q.eval_calls) == 0


def test_stochastic_and_train_eval_roundings():
    x, _ = _data()
    near, sto, legacy = _qmlp(), _qmlp(eval_rounding="stochastic"), _qmlp(eval_rounding="train")
    for m in (near, sto, legacy):
        m.eval()
    with torch.no_grad():
        a, b1, b2, c = near(x), sto(x), sto(x), legacy(x)
    assert not torch.equal(b1, b2) and not torch.equal(a, b1)
    assert int(sto[0].lpsgld_quantizer.calls) == 0 and int(sto[0].lpsgld_quantizer.eval_calls) == 2
    assert int(legacy[0].lpsgld_quantizer.calls) == 1  # as in training: the training stream moves
    fresh = _qmlp()
    assert torch.equal(c, fresh(x).detach())  # 'train' evaluation = the training forward of that call
    with pytest.raises(ValueError, match="eval_rounding must be one of"):
        _qmlp(eval_rounding="random")


def test_logits_can_stay_unquantized():
    x, _ = _data()
    for quantize_output in (False, True):
        m = _qmlp(quantize_output=quantize_output)
        assert list(QuantizedModel(m).quantizers) == (["0", "2"] if quantize_output else ["0"])
        seen: dict = {}
        m[1].register_forward_hook(lambda _m, _i, out, seen=seen: seen.setdefault("hidden", out.detach()))
        logits = m(x)
        raw = nn.functional.linear(seen["hidden"], m[2].weight, m[2].bias)
        assert torch.equal(logits, raw) != quantize_output


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
# Dynamo (torch 2.13) itself reads .grad of the hook's non-leaf output when it breaks the graph there
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
def test_torch_compile_of_a_quantized_model_equals_eager():
    x, y = _data(16)
    eager, compiled_src = _qmlp(), _qmlp()
    compiled = torch.compile(compiled_src)
    for _ in range(2):
        outs, grads = [], []
        for m in (eager, compiled):
            m.zero_grad()
            out = m(x)
            nn.functional.cross_entropy(out, y).backward()
            outs.append(out.detach())
            grads.append([p.grad.clone() for p in m.parameters()])
        assert torch.equal(outs[0], outs[1])
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert int(compiled_src[0].lpsgld_quantizer.calls) == int(eager[0].lpsgld_quantizer.calls) == 2
    unquantized = _mlp()
    assert not torch.equal(compiled(x), unquantized(x))


def test_quantizer_is_a_module_with_buffers():
    q = Quantizer(BFP8, None, seed=(1 << 64) - 1, layer=3)
    assert q.seed == (1 << 64) - 1 and dict(q.named_buffers()).keys() == {"calls", "eval_calls", "seed_bits"}


# ---- 4. telemetry and warnings -------------------------------------------------------------------


def test_saturation_is_counted_and_warned_at_the_first_step():
    x, y = _data()
    model = _mlp()
    with torch.no_grad():
        model[0].weight[0, :3] = 2.0  # outside Q(8,8): saturates when first rounded
    opt = LowPrecisionSGLD(model.parameters(), lr=0.01, config="fixed8-sgd-l")
    with pytest.warns(LowPrecisionWarning, match=r"parameter group 0: \d+ state word\(s\) are at the limits of Q"):
        _train(model, opt, 1, x, y)
    t = opt.telemetry()[0]
    assert t["saturated"] >= 3 and t["saturated_total"] == t["saturated"] and t["steps"] == 1
    words = opt.state[model[0].weight]["words"]
    assert t["saturated"] == int(count_saturated(opt.param_groups[0]["config"],
                                                 [opt.state[p]["words"] for p in model.parameters()]))
    assert int(words[0, 0]) == 127
    assert opt.state_dict()["lpsgld"]["groups"][0]["saturated"] == t["saturated"]


@pytest.mark.parametrize(("dataset_size", "branch"), [(10, "A"), (10**6, "B")])
def test_vc_branch_steps_are_counted(dataset_size, branch):
    """Fixed-point VC: v = 2 lr T / N above LSB^2/4 takes branch A on every step, below it branch B."""
    x, y = _data()
    model = _mlp()
    opt = LowPrecisionSGLD(model.parameters(), lr=0.01, config="fixed8-vc", dataset_size=dataset_size)
    _train(model, opt, 3, x, y)
    t = opt.telemetry()[0]
    assert t["vc_branch_steps"] == {"A": 3 if branch == "A" else 0, "B": 3 if branch == "B" else 0}
    o2 = LowPrecisionSGLD(_mlp().parameters(), lr=0.01, config="fixed8-vc", dataset_size=dataset_size)
    o2.load_state_dict(opt.state_dict())
    assert o2.telemetry()[0]["vc_branch_steps"] == t["vc_branch_steps"]
    assert "vc_branch_steps" not in LowPrecisionSGLD(_mlp().parameters(), lr=0.01, config="fixed8-lpf",
                                                     dataset_size=10).telemetry()[0]


def test_count_saturated_bfp():
    cfg = BfpConfig.paper("vc", lanes=4)
    mant = torch.tensor([[127, 5], [-127, 0], [127, 1]])
    exp = torch.tensor([127, 127, 3])
    assert int(count_saturated(cfg, [{"mant": mant, "exp": exp}])) == 2


def test_lr0_and_dtype_warnings():
    x, y = _data()
    model = _mlp()
    opt = LowPrecisionSGLD(model.parameters(), lr=0.0, config="fixed8-vc", max_lr=0.1, dataset_size=64)
    with pytest.warns(LowPrecisionWarning, match="lr=0 at the first step still moves the weights"):
        _train(model, opt, 1, x, y)
    p = nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    with pytest.warns(LowPrecisionWarning, match=r"dtype torch.bfloat16 cannot hold every value of the weight "
                                                 r"format Q\(16,10\)"):
        LowPrecisionSGLD([p], lr=1e-3, config="w16-vc", dataset_size=1)
    LowPrecisionSGLD([nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))], lr=0.1, config="fixed8-vc",
                     dataset_size=1)  # Q(8,8) is exact in bfloat16: no warning


def test_a_missing_dataset_size_is_warned_once_for_langevin_groups():
    ps = _mlp().parameters
    with pytest.warns(LowPrecisionWarning, match=r"parameter group 0: dataset_size not given, so N = 1 and the "
                                                 r"injected noise variance is 2 lr T / N = 2 lr T"):
        opt = LowPrecisionSGLD(ps(), lr=0.1)
    assert opt.param_groups[0]["dataset_size"] == 1
    LowPrecisionSGLD(ps(), lr=0.1, dataset_size=100)  # no warning (warnings are errors here)
    LowPrecisionSGLD(ps(), lr=0.1, temperature=0.0)
    LowPrecisionSGLD(ps(), lr=0.1, config="fixed8-sgd-l")


# ---- 5. load errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["fixed8-vc", "bfp8-vc"])
def test_load_checks_parameter_shapes(config):
    x, y = _data()
    model = _mlp()
    opt = LowPrecisionSGLD(model.parameters(), lr=0.05, config=config, dataset_size=64)
    _train(model, opt, 1, x, y)
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    o2 = LowPrecisionSGLD(other.parameters(), lr=0.05, config=config, dataset_size=64)
    key = "words" if config.startswith("fixed") else "mant"
    with pytest.raises(ValueError, match=rf"group 0, parameter 2: the saved state '{key}' has shape \(3, 16\), "
                                         r"the parameter needs \(4, 16\)"):
        o2.load_state_dict(opt.state_dict())


@NO_N_WARNING
def test_load_reports_only_the_differing_config_fields():
    model = _mlp()
    a = LowPrecisionSGLD(model.parameters(), lr=0.05, config="fixed8-vc")
    b = LowPrecisionSGLD(model.parameters(), lr=0.5, config="fixed8-vc")
    with pytest.raises(ValueError) as e:
        b.load_state_dict(a.state_dict())
    msg = str(e.value)
    assert msg.startswith("group 0: the state_dict was saved for a different config; step: UQ(16,20) (saved) vs "
                          "UQ(16,16) (optimizer)") and "weight" not in msg and len(msg) < 300


# ---- 6. sampling conveniences --------------------------------------------------------------------


def test_cyclical_sampling_burnin():
    s = CyclicalSampling(0.1, total=20, cycles=4, samples_per_cycle=2, burnin=5)
    assert s.sample_units() == [8, 9, 13, 14, 18, 19]
    assert CyclicalSampling(0.1, total=20, cycles=4, samples_per_cycle=2).sample_units()[:2] == [3, 4]
    with pytest.raises(ValueError, match=r"burnin must be an int in \[0, 20\)"):
        CyclicalSampling(0.1, total=20, cycles=4, samples_per_cycle=2, burnin=20)
    assert CyclicalSampling(0.1, total=20, cycles=4, samples_per_cycle=2, burnin=19).sample_units() == [19]
    with pytest.raises(ValueError, match="leaves no unit to collect a sample in"):
        CyclicalSampling(0.1, total=18, cycles=4, samples_per_cycle=2, burnin=15)  # last collected unit: 14


@NO_N_WARNING
def test_cyclical_scheduler_keeps_group_lr_ratios():
    m = _mlp()
    opt = LowPrecisionSGLD([{"params": m[0].parameters(), "lr": 0.1}, {"params": m[2].parameters(), "lr": 0.025}],
                           lr=0.1, config="fp")
    s = CyclicalSampling(0.1, total=10, cycles=2, samples_per_cycle=1)
    sched = s.scheduler(opt)
    assert isinstance(sched, CyclicalScheduler)
    for t in range(10):
        lr0, lr1 = (g["lr"] for g in opt.param_groups)
        assert lr0 == s.lr(t) and lr1 == s.lr(t) * 0.25
        opt.step()
        sched.step()


def test_sized_config_is_a_plain_dataclass():
    c = SizedConfig("fixed", "vc", width=16, frac=12)
    assert c.name == "fixed16-vc-f12" and dataclasses.replace(c, width=8).name == "fixed8-vc-f12"
    with pytest.raises(ValueError, match="number_format must be one of"):
        SizedConfig("float", "vc")


def test_max_lr_is_checked_before_the_registers_are_sized() -> None:
    """A sized config reads max_lr: a string or NaN is refused naming max_lr, a 0-d tensor is a number."""
    p = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(TypeError, match=r"^parameter group 0 \(max_lr\): lr must be a real number or a 0-d tensor, "
                                        r"got '0\.5'$"):
        LowPrecisionSGLD(p, lr=0.1, max_lr="0.5", dataset_size=100)
    with pytest.raises(ValueError, match=r"^parameter group 0 \(max_lr\): lr=nan is invalid"):
        LowPrecisionSGLD(p, lr=0.1, max_lr=float("nan"), dataset_size=100)
    a = LowPrecisionSGLD(p, lr=0.1, max_lr=torch.tensor(0.5), dataset_size=100)
    b = LowPrecisionSGLD(p, lr=0.1, max_lr=0.5, dataset_size=100)
    assert a.param_groups[0]["config"] == b.param_groups[0]["config"]
