"""UpdateTop in amaranth.sim against the golden NumpyEngine: exact equality, stalls, seeds, reset."""

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")

from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from emulator.engines.numpy_engine import NumpyEngine
from emulator.spec.datapath import DatapathConfig, StepRegisters, Variant
from emulator.spec.formats import FixedFormat
from emulator.spec.gaussian import GaussianSpec
from emulator.spec.host import HyperParams, step_registers
from emulator.spec.presets import preset
from emulator.spec.rng import LaneRng, XoroshiroSpec
from hw import control
from hw.options import HwOptions
from hw.top import UpdateTop
from hw.verify.amaranth_sim import Call, beats, simulate

_U = dict(signed=False)


def _custom(name):
    """Configurations off the preset grid: each exercises a corner of the generator."""
    if name == "two-words-clt-linear":  # rng_words = 2 (fields spill into word 1), clt table, linear output
        return DatapathConfig(Variant.NAIVE, gaussian=GaussianSpec("clt", 6, 8, 0), sr_bits=20,
                              rng=XoroshiroSpec(scrambler="linear"), rng_words=2, lanes=2,
                              noise=FixedFormat(12, 12, **_U))
    if name == "vc-s-below-p":  # s = 2 < p = 5: branch A shifts x left; no decay register
        return DatapathConfig(Variant.VC, weight=FixedFormat(6, 2), grad=FixedFormat(6, 2),
                              step=FixedFormat(4, 2, **_U), noise=FixedFormat(4, 2, **_U),
                              gaussian=GaussianSpec("table", 3, 4, 2), vc_frac_bits=5, lanes=2)
    if name == "vc-s-zero":  # X = S.F: branch B keeps mu, branch A shifts x left by p
        return DatapathConfig(Variant.VC, step=FixedFormat(6, 0, **_U), noise=FixedFormat(5, 3, **_U),
                              gaussian=GaussianSpec("table", 2, 4, 0), vc_frac_bits=4, lanes=2)
    if name == "sgd-s-zero":  # X = S.F: nothing to round (s = 0)
        return DatapathConfig(Variant.SGD_L, step=FixedFormat(6, 0, **_U), lanes=3)
    if name == "lpf-sr-bits":  # sr_bits < s with an accumulator
        return DatapathConfig(Variant.LP_F, acc=FixedFormat(20, 10), sr_bits=5, lanes=1,
                              step=FixedFormat(12, 14, **_U), noise=FixedFormat(10, 14, **_U))
    raise KeyError(name)


def _registers(cfg, rng, branch_a):
    """Random in-range register words (VC: branch A or B as asked)."""
    if cfg.variant is Variant.VC:
        p = cfg.vc_frac_bits
        if branch_a:
            return StepRegisters(int(rng.integers(cfg.step.max_word + 1)), 0,
                                 int(rng.integers(1, cfg.noise.max_word + 1)), True, 0)
        return StepRegisters(int(rng.integers(cfg.step.max_word + 1)), 0, 0, False,
                             int(rng.integers((1 << (2 * p - 2)) + 1)))
    noise = int(rng.integers(cfg.noise.max_word + 1)) if cfg.variant.has_gaussian else 0
    return StepRegisters(int(rng.integers(cfg.step.max_word + 1)), 0, noise)


def _words(fmt, rng, n):
    w = rng.integers(fmt.min_word, fmt.max_word + 1, n)
    w[: min(2, n)] = [fmt.min_word, fmt.max_word][: min(2, n)]  # saturation corners
    return w


def _check(cfg, calls, *, reset_seed=0, seed=None, stall_seed=None, opts=None):
    pat = None if stall_seed is None else np.random.default_rng(stall_seed).random(100_000)
    trace = simulate(
        cfg, calls, reset_seed=reset_seed, seed=seed, top=UpdateTop(cfg, reset_seed=reset_seed, opts=opts),
        sink_valid=None if pat is None else (lambda c: pat[c] < 0.8),
        source_ready=None if pat is None else (lambda c: pat[-1 - c] < 0.7),
    )
    eng = NumpyEngine(cfg, reset_seed if seed is None else seed)
    for i, call in enumerate(calls):
        exp = eng.step(call.theta, call.grad, call.regs)
        got = trace.results[i]
        assert np.array_equal(got.state, exp.state), (i, got.state, exp.state)
        assert np.array_equal(got.weight, exp.weight), (i, got.weight, exp.weight)
    assert not trace.idle_while_busy
    return trace


W8_CASES = [
    ("w8-vc", 3, (2e-3, 1.0, 1, 5e-2)),  # branch A, decay
    ("w8-vc", 1, (1e-3, 1.0, 1, 0.0)),  # branch B
    ("w8-naive", 2, (2e-3, 1.0, 1, 5e-2)),
    ("w8-lpf", 2, (2e-3, 1.0, 1, 0.0)),
    ("w8-sgd-l", 1, (3e-3, 1.0, 1, 5e-2)),
    ("w8-sgd-f", 4, (1e-4, 1.0, 1, 5e-2)),
    ("w16-vc", 2, (1e-3, 1.0, 1, 0.0)),  # sr_bits 12 < s
    ("w4-lpf", 3, (0.25, 0.02, 1, 0.25)),
]


@pytest.mark.parametrize(("name", "lanes", "hp"), W8_CASES, ids=[f"{n}-l{lanes}" for n, lanes, _ in W8_CASES])
def test_top_matches_engine_with_stalls(name, lanes, hp):
    cfg = preset(name, lanes)
    regs = step_registers(cfg, HyperParams(*hp))
    rng = np.random.default_rng(len(name) * 10 + lanes)
    calls = []
    for m in (3 * lanes + 1, 2 * lanes):  # a partial last beat, then a call that continues the streams
        calls.append(Call(_words(cfg.state, rng, m), _words(cfg.grad, rng, m), regs))
    _check(cfg, calls, reset_seed=11, stall_seed=lanes)


@pytest.mark.parametrize("name", ["two-words-clt-linear", "vc-s-below-p", "vc-s-zero", "sgd-s-zero", "lpf-sr-bits"])
def test_top_matches_engine_custom(name):
    cfg = _custom(name)
    rng = np.random.default_rng(5)
    calls = [Call(_words(cfg.state, rng, m), _words(cfg.grad, rng, m), _registers(cfg, rng, i % 2 == 0))
             for i, m in enumerate((2 * cfg.lanes + 1, 3 * cfg.lanes, cfg.lanes))]
    _check(cfg, calls, seed=12345, stall_seed=3)


OPTS = [HwOptions("dsp18"), HwOptions("generic"), HwOptions("ice40-hx", 2), HwOptions("dsp18", 2),
        HwOptions("generic", 3)]


@pytest.mark.parametrize("opts", OPTS, ids=[f"{o.target}-p{o.pipeline}" for o in OPTS])
@pytest.mark.parametrize(("name", "lanes", "hp"), [W8_CASES[0], W8_CASES[1], W8_CASES[3], W8_CASES[6]],
                         ids=["w8-vc-A", "w8-vc-B", "w8-lpf", "w16-vc"])
def test_top_every_target_and_pipeline(name, lanes, hp, opts):
    """Same words whatever the target and pipeline depth: stalls, a seed load, two calls."""
    cfg = preset(name, lanes)
    regs = step_registers(cfg, HyperParams(*hp))
    rng = np.random.default_rng(lanes)
    calls = [Call(_words(cfg.state, rng, m), _words(cfg.grad, rng, m), regs) for m in (2 * lanes + 1, lanes)]
    _check(cfg, calls, seed=99, stall_seed=lanes, opts=opts)


def test_seed_load_equals_engine_seed():
    cfg = preset("w8-vc", 2)
    regs = step_registers(cfg, HyperParams(2e-3))
    rng = np.random.default_rng(0)
    calls = [Call(_words(cfg.state, rng, 9), _words(cfg.grad, rng, 9), regs)]
    _check(cfg, calls, reset_seed=3, seed=2**64 - 1)


def test_seed_writes_are_lane_rng_states():
    cfg = preset("w8-naive", 3)
    writes = dict(control.seed_writes(cfg, 77))
    rng = LaneRng.seeded(cfg.rng, 77, 3, 1)
    assert len(writes) == 6
    for lane in range(3):
        assert writes[control.SEED_BASE + 2 * lane] == int(rng.s0[lane, 0])
        assert writes[control.SEED_BASE + 2 * lane + 1] == int(rng.s1[lane, 0])


def test_register_writes_only_present_registers():
    assert control.register_writes(preset("w8-sgd-l"), StepRegisters(5, 7)) == [(0, 5), (1, 7)]
    vc = control.register_writes(preset("w8-vc"), StepRegisters(5, 0, 9, True, 0))
    assert vc == [(0, 5), (1, 0), (2, 9), (3, 0), (4, 1)]
    with pytest.raises(ValueError, match=r"^register vc_var=17 exceeds v0 = 16 "):
        control.register_writes(preset("w4-vc"), StepRegisters(1, vc_var=17))


def _bench(top, body):
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(body)
    sim.run()


def _bench_with_reset(top, body):
    """Like _bench, with the sync domain's reset reachable as body's second argument."""
    m = Module()
    m.domains.sync = cd = ClockDomain()
    m.submodules.top = top

    async def wrapped(ctx):
        await body(ctx, cd.rst)

    sim = Simulator(m)
    sim.add_clock(1e-8, domain="sync")
    sim.add_testbench(wrapped)
    sim.run()


@pytest.mark.parametrize("opts", [HwOptions(), HwOptions("dsp18", 2)], ids=["ice40-hx-p1", "dsp18-p2"])
def test_latency_throughput_idle_and_keep_zero(opts):
    cfg = preset("w8-naive", 2)
    top = UpdateTop(cfg, opts=opts)
    regs = step_registers(cfg, HyperParams(2e-3))
    rng = np.random.default_rng(9)
    theta, grad = _words(cfg.state, rng, 8), _words(cfg.grad, rng, 8)
    pays = beats(cfg, theta, grad)
    pays.insert(2, {"keep": 0, "theta": [0, 0], "grad": [0, 0]})  # a keep-0 beat steps no generator
    seen = {}

    async def body(ctx):
        for a, d in control.register_writes(cfg, regs):
            ctx.set(top.ctl.addr, a)
            ctx.set(top.ctl.data, d)
            ctx.set(top.ctl.we, 1)
            await ctx.tick()
        ctx.set(top.ctl.we, 0)
        ctx.set(top.source.ready, 1)
        out, cycle, first_valid = [], 0, None
        assert ctx.get(top.idle) == 1
        while len(out) < len(pays):
            ctx.set(top.sink.valid, int(cycle < len(pays)))
            if cycle < len(pays):
                ctx.set(top.sink.payload, pays[cycle])
            _, _, ready, ov, pay, idle = await ctx.tick().sample(top.sink.ready, top.source.valid,
                                                                  top.source.payload, top.idle)
            assert ready == 1  # never stalled: one beat per clock
            if cycle >= 1:
                assert idle == 0
            if ov:
                first_valid = cycle if first_valid is None else first_valid
                out.append((int(pay.keep), [int(pay.state[i]) for i in range(2)]))
            cycle += 1
        ctx.set(top.sink.valid, 0)
        await ctx.tick()
        seen.update(out=out, first=first_valid, cycles=cycle, idle_after=ctx.get(top.idle))

    _bench(top, body)
    # the beat sent at edge 0 is taken at edge `latency` (sampled values are those before the edge)
    assert seen["first"] == top.latency
    assert seen["cycles"] == top.latency + len(pays)  # one beat per clock, back to back
    assert seen["idle_after"] == 1
    keeps = [k for k, _ in seen["out"]]
    assert keeps == [3, 3, 0, 3, 3]
    got = [s for k, st in seen["out"] if k for s in st]
    exp = NumpyEngine(cfg, 0).step(theta, grad, regs)
    assert np.array_equal(np.array(got), exp.state)


def test_reset_empties_pipeline_and_restores_registers_and_generators():
    cfg = preset("w8-vc", 2)
    top = UpdateTop(cfg, reset_seed=42)
    regs = step_registers(cfg, HyperParams(2e-3))
    rng = np.random.default_rng(4)
    theta, grad = _words(cfg.state, rng, 6), _words(cfg.grad, rng, 6)
    pays = beats(cfg, theta, grad)
    res = {}

    async def collect(ctx):
        out = []
        ctx.set(top.source.ready, 1)
        sent = 0
        while len(out) < 2 * len(pays):
            ctx.set(top.sink.valid, int(sent < len(pays)))
            if sent < len(pays):
                ctx.set(top.sink.payload, pays[sent])
            _, _, sv, sr, ov, pay = await ctx.tick().sample(top.sink.valid, top.sink.ready,
                                                            top.source.valid, top.source.payload)
            sent += bool(sv and sr)
            if ov:
                out.extend(int(pay.state[i]) for i in range(2))
        ctx.set(top.sink.valid, 0)
        return np.array(out)

    async def body(ctx, rst):
        await ctx.tick().repeat(2)
        for a, d in control.seed_writes(cfg, 5) + control.register_writes(cfg, regs):
            ctx.set(top.ctl.addr, a)
            ctx.set(top.ctl.data, d)
            ctx.set(top.ctl.we, 1)
            await ctx.tick()
        ctx.set(top.ctl.we, 0)
        ctx.set(top.source.ready, 0)  # fill the pipeline, hold it, then reset
        for p in pays:
            ctx.set(top.sink.valid, 1)
            ctx.set(top.sink.payload, p)
            await ctx.tick()
        ctx.set(top.sink.valid, 0)
        assert ctx.get(top.idle) == 0
        ctx.set(rst, 1)
        await ctx.tick()
        ctx.set(rst, 0)
        res["idle"], res["valid"] = ctx.get(top.idle), ctx.get(top.source.valid)
        res["zero_regs"] = await collect(ctx)  # registers are 0 after reset
        for a, d in control.register_writes(cfg, regs):
            ctx.set(top.ctl.addr, a)
            ctx.set(top.ctl.data, d)
            ctx.set(top.ctl.we, 1)
            await ctx.tick()
        ctx.set(top.ctl.we, 0)
        res["after"] = await collect(ctx)

    _bench_with_reset(top, body)
    assert res["idle"] == 1 and res["valid"] == 0
    eng = NumpyEngine(cfg, 42)  # generators back at the reset seed, not the loaded seed 5
    assert np.array_equal(res["zero_regs"], eng.step(theta, grad, StepRegisters(0)).state)
    assert np.array_equal(res["zero_regs"], theta)  # zero registers: VC branch B, v = 0, exact
    assert np.array_equal(res["after"], eng.step(theta, grad, regs).state)


def test_writes_to_other_addresses_are_ignored():
    cfg = preset("w8-sgd-l", 1)
    regs = StepRegisters(33554)
    top = UpdateTop(cfg)
    rng = np.random.default_rng(1)
    theta, grad = _words(cfg.state, rng, 5), _words(cfg.grad, rng, 5)
    junk = [(control.NOISE, 123), (control.VC_VAR, 5), (control.VC_NOISE, 1), (0x00FF, 2**64 - 1),
            (control.SEED_BASE + 2, 99), (0xFFFF, 1)]
    trace = simulate(cfg, [Call(theta, grad, regs)], top=top)
    exp = NumpyEngine(cfg, 0).step(theta, grad, regs).state
    assert np.array_equal(trace.results[0].state, exp)

    top2 = UpdateTop(cfg)
    out = {}

    async def body(ctx):
        for a, d in junk + control.register_writes(cfg, regs) + junk:
            ctx.set(top2.ctl.addr, a)
            ctx.set(top2.ctl.data, d)
            ctx.set(top2.ctl.we, 1)
            await ctx.tick()
        ctx.set(top2.ctl.we, 0)
        ctx.set(top2.source.ready, 1)
        got = []
        for p in beats(cfg, theta, grad) + [None] * (top2.latency + 1):
            ctx.set(top2.sink.valid, int(p is not None))
            if p is not None:
                ctx.set(top2.sink.payload, p)
            *_, ov, pay = await ctx.tick().sample(top2.source.valid, top2.source.payload)
            if ov:
                got.append(int(pay.state[0]))
        out["got"] = got

    _bench(top2, body)
    assert np.array_equal(np.array(out["got"]), exp)


def test_constructor_errors():
    with pytest.raises(TypeError, match=r"^cfg must be an emulator.spec.datapath.DatapathConfig, got str$"):
        UpdateTop("w8-vc")
    with pytest.raises(ValueError, match=r"^reset_seed must be in \[0, 2\*\*64\), got -1$"):
        UpdateTop(preset("w8-vc"), reset_seed=-1)
    with pytest.raises(TypeError, match=r"^reset_seed must be an int, got bool True$"):
        UpdateTop(preset("w8-vc"), reset_seed=True)
    with pytest.raises(TypeError, match=r"^opts must be an hw.options.HwOptions, got str$"):
        UpdateTop(preset("w8-vc"), opts="dsp18")
    big = preset("w8-sgd-l", 32641)
    with pytest.raises(ValueError, match=r"^lanes \* rng_words = 32641 \* 1 = 32641 generator streams; "
                                         r"the control address map holds at most 32640$"):
        UpdateTop(big)
    with pytest.raises(ValueError, match=r"^seed must be in \[0, 2\*\*64\), got 18446744073709551616$"):
        control.seed_writes(preset("w8-vc"), 2**64)
    with pytest.raises(TypeError, match=r"^cfg must be an emulator.spec.datapath.DatapathConfig, got int$"):
        control.register_writes(3, StepRegisters(0))
