"""Each hardware unit in amaranth.sim against its golden counterpart, by exact equality."""

from itertools import islice

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")

from amaranth.hdl import Elaboratable, Module, Signal, signed
from amaranth.sim import Simulator

from emulator.spec.datapath import StepRegisters, Variant, _vc, exact_sum, update
from emulator.spec.formats import FixedFormat, round_nearest, round_stochastic
from emulator.spec.gaussian import GaussianSpec
from emulator.spec.presets import preset
from emulator.spec.rng import XoroshiroSpec
from hw.arith import round_nearest as round_nearest_hw
from hw.arith import saturate
from hw.datapath import ExactSum, Rounder, UpdateLane, VCQuantizer
from hw.gaussian import GaussianGenerator
from hw.options import HwOptions
from hw.rng import XoroshiroGenerator
from hw.verify.vectorsim import evaluate


def run_pipeline(dut, vectors, outputs, latency):
    """Present vector i (a list of (port, value)) at cycle i with en = 1; outputs ``latency`` edges later."""
    got = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for c in range(len(vectors) + latency - 1):
            if c < len(vectors):
                for port, v in vectors[c]:
                    ctx.set(port, int(v))
            await ctx.tick()
            if c >= latency - 1:
                got.append([ctx.get(o) for o in outputs])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got, dtype=np.int64).reshape(len(vectors), len(outputs))


# every target, and pipeline depths that merge tree levels (2, 3) or leave one register per tree (8)
OPTS = [HwOptions(), HwOptions("dsp18"), HwOptions("generic"), HwOptions("ice40-hx", 2), HwOptions("dsp18", 3),
        HwOptions("generic", 8)]
OPT_IDS = [f"{o.target}-p{o.pipeline}" for o in OPTS]
opts_param = pytest.mark.parametrize("opts", OPTS, ids=OPT_IDS)


def lane_vectors(dut, theta, grad, words, reg_ports):
    """Vectors for ``UpdateLane``: beat i's words are presented ``words_delay`` cycles after its theta/grad.

    One extra trailing vector carries the last beat's words; its own output is dropped by the caller.
    """
    d = dut.words_delay
    n = len(theta)
    return [[(dut.theta, theta[i] if i < n else 0), (dut.grad, grad[i] if i < n else 0),
             (dut.words, words[i - d] if i >= d else 0), *reg_ports] for i in range(n + d)]


# ---- random source ---------------------------------------------------------------------

SPECS = [XoroshiroSpec(), XoroshiroSpec(scrambler="linear"), XoroshiroSpec(32, 26, 9, 13)]


@pytest.mark.parametrize("spec", SPECS, ids=["aox", "linear", "w32"])
def test_generator_equals_software_generate(spec):
    s0, s1 = spec.base_state(7)
    gen = XoroshiroGenerator(spec, (s0, s1))
    got = []

    async def bench(ctx):
        ctx.set(gen.step, 1)
        for _ in range(40):
            got.append(ctx.get(gen.out))
            await ctx.tick()

    sim = Simulator(gen)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == list(islice(spec.generate(s0, s1), 40))


def _base_generator():
    """The default generator at stream 0's base state: ``(spec, s0, s1, gen)``."""
    spec = XoroshiroSpec()
    s0, s1 = spec.base_state(0)
    return spec, s0, s1, XoroshiroGenerator(spec, (s0, s1))


def test_generator_holds_and_loads():
    spec, s0, s1, gen = _base_generator()
    got = []

    async def bench(ctx):
        ctx.set(gen.step, 0)
        await ctx.tick().repeat(3)  # no step: state held
        got.append(ctx.get(gen.out))
        ctx.set(gen.step, 1)
        ctx.set(gen.load0, 1)  # a load wins over the step for that word; the other word steps
        ctx.set(gen.data, 0x1234)
        await ctx.tick()
        ctx.set(gen.load0, 0)
        ctx.set(gen.step, 0)
        got.append(ctx.get(gen.out))

    sim = Simulator(gen)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got[0] == spec.output(s0, s1)
    assert got[1] == spec.output(0x1234, spec.next_state(s0, s1)[1])


def test_generator_errors():
    with pytest.raises(TypeError, match=r"^spec must be an XoroshiroSpec, got 3$"):
        XoroshiroGenerator(3)
    with pytest.raises(ValueError, match=r"^reset state \(0, 0\) is the all-zero state, which never leaves zero$"):
        XoroshiroGenerator(XoroshiroSpec(), (0, 0))
    with pytest.raises(ValueError, match=r"^reset state s1 must be an int in \[0, 2\*\*16\), got 65536$"):
        XoroshiroGenerator(XoroshiroSpec(16, 7, 1, 10), (1, 1 << 16))


# ---- Gaussian ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [GaussianSpec("table", 2, 3, 3), GaussianSpec(), GaussianSpec("clt", 3, 5, 0),
                                  GaussianSpec("table", 5, 4, 6)], ids=["w4", "default", "clt", "odd-terms"])
@opts_param
def test_gaussian_equals_table_sum(spec, opts):
    rng = np.random.default_rng(spec.bits)
    n = 1 << spec.bits
    bits = np.arange(n) if n <= 512 else np.concatenate([[0, n - 1], rng.integers(0, n, 400)])
    dut = GaussianGenerator(spec, opts)
    got = run_pipeline(dut, [[(dut.bits, b)] for b in bits], [dut.z], dut.latency)[:, 0]
    assert np.array_equal(got, spec.sample(bits.astype(np.uint64)))


def test_gaussian_error():
    with pytest.raises(TypeError, match=r"^spec must be a GaussianSpec, got 'table'$"):
        GaussianGenerator("table")
    with pytest.raises(TypeError, match=r"^opts must be an hw.options.HwOptions, got str$"):
        GaussianGenerator(GaussianSpec(), "dsp18")


# ---- exact sum, rounder, VC quantizer ---------------------------------------------------

def _regs(cfg, rng, branch_a=True):
    p = cfg.vc_frac_bits
    noise = int(rng.integers(cfg.noise.max_word + 1)) if cfg.variant.has_gaussian else 0
    decay = int(rng.integers(cfg.decay.max_word + 1)) if cfg.decay is not None else 0
    if cfg.variant is Variant.VC:
        if branch_a:
            return StepRegisters(int(rng.integers(cfg.step.max_word + 1)), decay, noise, True, 0)
        return StepRegisters(int(rng.integers(cfg.step.max_word + 1)), decay, 0, False,
                             int(rng.integers((1 << (2 * p - 2)) + 1)))
    return StepRegisters(int(rng.integers(cfg.step.max_word + 1)), decay, noise)


@opts_param
@pytest.mark.parametrize("name", ["w8-vc", "w8-lpf", "w16-naive", "w8-sgd-l", "w16-lpf"])
def test_exact_sum(name, opts):
    cfg = preset(name)
    rng = np.random.default_rng(1)
    n = 300
    theta = rng.integers(cfg.state.min_word, cfg.state.max_word + 1, n)
    grad = rng.integers(cfg.grad.min_word, cfg.grad.max_word + 1, n)
    theta[:4] = [cfg.state.min_word, cfg.state.max_word, cfg.state.min_word, cfg.state.max_word]
    grad[:4] = [cfg.grad.max_word, cfg.grad.min_word, cfg.grad.min_word, cfg.grad.max_word]
    fmt_max = {"step": cfg.step.max_word, "decay": cfg.decay.max_word, "noise": cfg.noise.max_word}
    regs = StepRegisters(fmt_max["step"], fmt_max["decay"], fmt_max["noise"] if cfg.variant.has_gaussian else 0)
    dut = ExactSum(cfg, opts)
    ports = [(dut.step, regs.step), (dut.decay, regs.decay)]
    if cfg.variant.has_gaussian:
        gz = cfg.gaussian.max_abs
        z = rng.integers(-gz, gz + 1, n)
        z[:4] = [gz, -gz, -gz, gz]
        ports.append((dut.noise, regs.noise))
    adds_sr = cfg.variant is not Variant.VC and cfg.drop_bits > 0
    u = rng.integers(0, 1 << cfg.sr_k, n)
    u[:2] = [0, (1 << cfg.sr_k) - 1]
    vecs = [[(dut.theta, theta[i]), (dut.grad, grad[i]), *ports]
            + ([(dut.z, z[i])] if cfg.variant.has_gaussian else [])
            + ([(dut.u_sr, u[i])] if adds_sr else []) for i in range(n)]
    got = run_pipeline(dut, vecs, [dut.x], dut.latency)[:, 0]
    exp = exact_sum(cfg, theta, grad, regs)
    if cfg.variant.has_gaussian:
        exp = exp + ((regs.noise * z) << (cfg.sum_frac - cfg.noise.frac - cfg.gaussian.frac))
    if adds_sr:  # SR variants: the uniform is a leaf, x + (u << (s-k))
        exp = exp + (u << (cfg.drop_bits - cfg.sr_k))
    assert np.array_equal(got, exp)


def _sum_bound(cfg):
    return 1 << (cfg.sum_width - 2)


@pytest.mark.parametrize("name", ["w8-naive", "w8-lpf", "w16-sgd-f", "w4-lpf"])
def test_rounder(name):
    cfg = preset(name)
    rng = np.random.default_rng(2)
    n = 400
    b = _sum_bound(cfg)
    x = rng.integers(-b, b, n)
    x[:2] = [-b, b - 1]  # saturates both ways
    k = cfg.sr_k
    u = rng.integers(0, 1 << k, n)
    dut = Rounder(cfg)
    xu = x + (u << (cfg.drop_bits - k))  # ExactSum adds the uniform; the rounder drops s bits
    got = run_pipeline(dut, [[(dut.x, xu[i])] for i in range(n)], [dut.state, dut.weight], dut.latency)
    state = cfg.state.saturate(round_stochastic(x, cfg.drop_bits, k, u))
    weight = state if not cfg.variant.has_accumulator else cfg.weight.saturate(
        round_nearest(state, cfg.state.frac - cfg.weight.frac))
    assert np.array_equal(got[:, 0], state)
    assert np.array_equal(got[:, 1], weight)


@pytest.mark.parametrize("branch_a", [True, False], ids=["A", "B"])
@opts_param
@pytest.mark.parametrize("name", ["w8-vc", "w16-vc"])
def test_vc_quantizer(name, branch_a, opts):
    cfg = preset(name)
    rng = np.random.default_rng(3)
    n = 400
    b = _sum_bound(cfg)
    mu = rng.integers(-b, b, n)
    mu[:2] = [-b, b - 1]
    words = rng.integers(0, 1 << 63, (n, 1)).astype(np.uint64)
    r = _regs(cfg, rng, branch_a)
    regs = StepRegisters(r.step, r.decay, 0, r.vc_noise, r.vc_var)  # x = mu: the quantizer alone
    f = cfg.fields
    u_sr = (words[:, 0] >> np.uint64(f["sr"].offset)) & np.uint64((1 << f["sr"].width) - 1)
    u_vc = (words[:, 0] >> np.uint64(f["vc"].offset)) & np.uint64((1 << f["vc"].width) - 1)
    dut = VCQuantizer(cfg, opts)
    vecs = [[(dut.x, mu[i]), (dut.u_sr, u_sr[i]), (dut.u_vc, u_vc[i]), (dut.vc_noise, int(regs.vc_noise)),
             (dut.vc_var, regs.vc_var)] for i in range(n)]
    got = run_pipeline(dut, vecs, [dut.out], dut.latency)[:, 0]
    assert np.array_equal(got, cfg.weight.saturate(_vc(cfg, mu, regs, words)))


def test_unit_errors():
    with pytest.raises(ValueError, match=r"^Rounder implements the SR variants; variant 'vc' uses VCQuantizer$"):
        Rounder(preset("w8-vc"))
    with pytest.raises(ValueError, match=r"^VCQuantizer needs variant 'vc', got 'naive'$"):
        VCQuantizer(preset("w8-naive"))
    with pytest.raises(TypeError, match=r"^cfg must be an emulator.spec.datapath.DatapathConfig, got dict$"):
        UpdateLane({})
    with pytest.raises(TypeError, match=r"^opts must be an hw.options.HwOptions, got dict$"):
        UpdateLane(preset("w8-vc"), {})
    with pytest.raises(TypeError, match=r"^opts must be an hw.options.HwOptions, got str$"):
        ExactSum(preset("w8-vc"), "dsp18")


def test_options_errors():
    with pytest.raises(ValueError, match=r"^target must be one of ice40-hx, dsp18, generic; got 'ecp5'$"):
        HwOptions("ecp5")
    with pytest.raises(TypeError, match=r"^target must be a str, one of ice40-hx, dsp18, generic; got 18$"):
        HwOptions(18)
    with pytest.raises(ValueError, match=r"^pipeline must be in \[1, 8\] \(register every k-th adder level\), got 0$"):
        HwOptions(pipeline=0)
    with pytest.raises(TypeError, match=r"^pipeline must be an int, got True$"):
        HwOptions(pipeline=True)
    with pytest.raises(TypeError, match=r"^pipeline must be an int, got 2.0$"):
        HwOptions(pipeline=2.0)
    assert HwOptions().suffix == "" and HwOptions("dsp18", 2).suffix == "_dsp18_p2"


# ---- the whole lane, and the vectorized evaluator used by the exhaustive checks ------------

@opts_param
@pytest.mark.parametrize("name", ["w8-vc", "w8-lpf", "w16-vc"])
def test_lane_sim_equals_golden_and_vectorsim(name, opts):
    cfg = preset(name)
    rng = np.random.default_rng(4)
    n = 200
    theta = rng.integers(cfg.state.min_word, cfg.state.max_word + 1, n)
    grad = rng.integers(cfg.grad.min_word, cfg.grad.max_word + 1, n)
    words = rng.integers(0, 1 << 63, n)  # the evaluator takes words below 2**63
    regs = _regs(cfg, rng, branch_a=name != "w16-vc")
    dut = UpdateLane(cfg, opts)
    reg_ports = [(getattr(dut, k), int(v)) for k, v in
                 (("step", regs.step), ("decay", regs.decay), ("noise", regs.noise),
                  ("vc_noise", regs.vc_noise), ("vc_var", regs.vc_var)) if hasattr(dut, k)]
    got = run_pipeline(dut, lane_vectors(dut, theta, grad, words, reg_ports), [dut.state, dut.weight],
                       dut.latency)[:n]
    exp = update(cfg, theta, grad, regs, words.astype(np.uint64)[:, None])
    assert np.array_equal(got[:, 0], exp.state)
    assert np.array_equal(got[:, 1], exp.weight)
    lane = UpdateLane(cfg, opts)
    ins = [(lane.en, 1), (lane.theta, theta), (lane.grad, grad), (lane.words, words)]
    ins += [(getattr(lane, p.name), v) for p, v in reg_ports]
    ev = evaluate(lane, ins, [lane.state, lane.weight])
    assert np.array_equal(ev[0], got[:, 0])
    assert np.array_equal(ev[1], got[:, 1])


# ---- rounding and saturation primitives, every input ------------------------------------

class _Comb(Elaboratable):
    """A combinational wrapper: ``out = fn(inp)``, elaborated like any design."""

    def __init__(self, width, fn):
        self.inp = Signal(signed(width))
        self.out = Signal(signed(2 * width + 8))
        self.fn = fn

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.out.eq(self.fn(self.inp))
        return m


@pytest.mark.parametrize("fmt", [FixedFormat(4, 1), FixedFormat(7, 0), FixedFormat(10, 3), FixedFormat(11, 0)])
def test_saturate_every_value(fmt):
    dut = _Comb(11, lambda v: saturate(v, fmt))
    x = np.arange(-(1 << 10), 1 << 10)
    (got,) = evaluate(dut, [(dut.inp, x)], [dut.out])
    assert np.array_equal(got, fmt.saturate(x))


@pytest.mark.parametrize("s", [-2, 0, 1, 3, 9])
def test_round_nearest_every_value(s):
    dut = _Comb(10, lambda v: round_nearest_hw(v, s))
    x = np.arange(-(1 << 9), 1 << 9)
    (got,) = evaluate(dut, [(dut.inp, x)], [dut.out])
    assert np.array_equal(got, round_nearest(x, s))
    assert list(round_nearest(np.array([3, -3, 1, -1]), 1)) == [2, -1, 1, 0]  # the spec's examples


@pytest.mark.parametrize("max_carry", [2, 3, 5])
@pytest.mark.parametrize("sub", [False, True], ids=["add", "sub"])
@pytest.mark.parametrize("signs", [(True, True), (True, False), (False, True), (False, False)],
                         ids=["ss", "su", "us", "uu"])
def test_carry_select_add_sub_every_value(signs, sub, max_carry):
    """The carry-select adder (wide exact-sum nodes on ice40-hx) equals a + b / a - b for every operand pair."""
    from hw.arith import add_sub

    sa, sb = signs
    a_sig, b_sig = Signal(signed(6) if sa else 6), Signal(signed(5) if sb else 5)

    class _AddSub(Elaboratable):
        def __init__(self):
            self.a, self.b = a_sig, b_sig
            self.out = Signal(signed(10))

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.out.eq(add_sub(self.a, self.b, sub, max_carry))
            return m

    dut = _AddSub()
    a = np.arange(-32, 32) if sa else np.arange(64)
    b = np.arange(-16, 16) if sb else np.arange(32)
    aa, bb = (x.ravel() for x in np.meshgrid(a, b, indexing="ij"))
    (got,) = evaluate(dut, [(dut.a, aa), (dut.b, bb)], [dut.out])
    assert np.array_equal(got, aa - bb if sub else aa + bb)


@pytest.mark.parametrize("width", [1, 2, 3, 7, 8, 11])
@pytest.mark.parametrize("target", ["ice40-hx", "dsp18", "generic"])
def test_square_operands_sum_to_the_square_for_every_value(width, target):
    """The squarer's leaves (symmetric digit products on ice40-hx) add up to a*a for every operand."""
    from hw.arith import CHUNK_BITS, square_count, square_operands

    opts = HwOptions(target=target)
    leaves = square_operands(Signal(width), opts)
    assert len(leaves) == square_count(width, False, opts)
    if target == "ice40-hx":  # cross terms once: digit i multiplies only the bits above it
        n = -(-width // CHUNK_BITS)
        assert len(leaves) == n
        assert [len(pp) for pp, _ in leaves] == sorted((len(pp) for pp, _ in leaves), reverse=True)

    def total(v):
        acc = 0
        for pp, sh in square_operands(v[:width], opts):
            acc = acc + pp.shift_left(sh)
        return acc

    dut = _Comb(width + 1, total)  # the operand is the unsigned low `width` bits of inp
    x = np.arange(1 << width)
    (got,) = evaluate(dut, [(dut.inp, x)], [dut.out])
    assert np.array_equal(got, x * x)


@pytest.mark.parametrize("step", [0, 1])
@pytest.mark.parametrize("en", [0, 1])
def test_generator_loads_and_steps_only_when_enabled(step, en):
    """``en`` gates everything: a load held high writes its word on the first enabled edge, winning
    over a step of that word while the other word steps."""
    spec, s0, s1, gen = _base_generator()
    got = []

    async def bench(ctx):
        ctx.set(gen.load0, 1)
        ctx.set(gen.data, 0x5678)
        ctx.set(gen.step, step)
        ctx.set(gen.en, en)
        await ctx.tick()
        got.append(ctx.get(gen.out))

    sim = Simulator(gen)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    _, n1 = spec.next_state(s0, s1)
    want = {(0, 0): spec.output(s0, s1),  # not enabled: held, whatever step and load say
            (0, 1): spec.output(s0, s1),
            (1, 0): spec.output(0x5678, s1),  # a load without a step: s1 holds
            (1, 1): spec.output(0x5678, n1)}  # the load wins for s0, s1 steps
    assert got == [want[en, step]]


@pytest.mark.parametrize("width", [3, 5, 6, 9])
def test_cap_for_compare_keeps_every_compare(width):
    """u < cap(t) == u < t for every 4-bit u and every t of ``width`` bits; the cap is 5 bits at most."""
    from hw.arith import cap_for_compare

    t = Signal(width)
    capped = cap_for_compare(t, 4)
    assert len(capped) == min(width, 5)

    class _Lt(Elaboratable):
        def __init__(self):
            self.u, self.t, self.out = Signal(4), t, Signal(1)

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.out.eq(self.u < cap_for_compare(self.t, 4))
            return m

    dut = _Lt()
    u, tv = np.meshgrid(np.arange(16), np.arange(1 << width))
    (got,) = evaluate(dut, [(dut.u, u.ravel()), (dut.t, tv.ravel())], [dut.out])
    assert np.array_equal(got, (u.ravel() < tv.ravel()).astype(np.int64))
    with pytest.raises(ValueError, match=r"^cap_for_compare\(\) needs an unsigned value, got signed\(5\)$"):
        cap_for_compare(Signal(signed(5)), 2)


@pytest.mark.parametrize("config", ["w8-vc", "w16-vc"])
def test_dsp18_keeps_its_multipliers_for_the_exact_sum(config):
    """dsp18: the netlist's multiplications are the exact sum's products only (a VC lane needs 3 DSP
    blocks for w8, so 8 lanes fit the 28 of an ECP5-25K); the squarer is logic with no ``*`` at all."""
    import re

    from amaranth.back import rtlil

    from hw.arith import product_count
    from hw.datapath import UpdateLane, VCQuantizer

    cfg = preset(config)
    opts = HwOptions("dsp18")

    def muls(component):
        return len(re.findall(r"cell \$mul ", rtlil.convert(component, emit_src=False)))

    pairs = [((cfg.step.width, False), (cfg.grad.width, True)), ((cfg.decay.width, False), (cfg.state.width, True)),
             ((cfg.noise.width, False), (cfg.gaussian.width, True))]
    assert muls(VCQuantizer(cfg, opts)) == 0
    assert muls(UpdateLane(cfg, opts)) == sum(product_count(a, b, opts) for a, b in pairs)
    if config == "w8-vc":
        assert muls(UpdateLane(cfg, opts)) == 3
