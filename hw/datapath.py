"""One update lane: exact sum, Gaussian noise, rounding / VC quantizer, saturation.

Every unit is built from the emulator's :class:`~emulator.spec.datapath.DatapathConfig`
and is a fixed-latency pipeline under one enable ``en`` (all registers load when it
is high, hold when it is low). The arithmetic is docs/spec.md section 6, word for word:

* :class:`ExactSum`: ``x = mu + noise`` at ``X = cfg.sum_frac`` fractional bits, as a
  tree of 2-bit partial products (``step*g``, ``decay*theta``, ``noise*z``) and the
  aligned ``theta`` (products subtracted by the tree, never negated);
* :class:`Rounder`: ``sat_S(SR_k(x, s, u_sr))`` and, for ``lp_f`` / ``sgd_f``,
  ``weight = sat_Wf(RN(state, A.F - Wf.F))``; the SR uniform enters the exact sum as one
  more leaf (``SR_k(x) = (x + (u_sr << (s-k))) >> s``), so the rounder is a shift;
* :class:`VCQuantizer`: both VC branches sharing one ``2p``-bit squarer (``l^2`` in
  branch A, ``f_H^2`` in branch B) and one pair of compares against ``u_vc``;
* :class:`UpdateLane`: field extraction from the generator words, the Gaussian
  generator, the sum and the final narrowing, with the side signals delayed to match.

Every unit takes an optional :class:`hw.options.HwOptions` (target, pipeline depth): the
structure changes, the integers do not.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from emulator.spec.datapath import WORD_BITS, DatapathConfig, Variant

from ._util import rejected
from .arith import (
    Stages,
    cap_for_compare,
    product_count,
    product_operands,
    round_nearest,
    saturate,
    square_count,
    square_operands,
    sum_tree,
)
from .gaussian import GaussianGenerator, gaussian_stages, tree_depth
from .options import HwOptions, check_options, tree_levels


def _check_cfg(component: object, cfg: object) -> DatapathConfig:
    if not isinstance(cfg, DatapathConfig):
        raise rejected(component, TypeError(
            f"cfg must be an emulator.spec.datapath.DatapathConfig, got {type(cfg).__name__}"))
    return cfg


def _check_opts(component: object, opts: object) -> HwOptions:
    try:
        return check_options(opts)
    except TypeError as e:
        raise rejected(component, e) from None


def register_ports(cfg: DatapathConfig) -> dict[str, int]:
    """Per-step register inputs a lane needs: name -> width (absent registers left out)."""
    ports = {"step": cfg.step.width}
    if cfg.decay is not None:
        ports["decay"] = cfg.decay.width
    if cfg.variant.has_gaussian:
        ports["noise"] = cfg.noise.width
    if cfg.variant is Variant.VC:
        ports["vc_var"] = 2 * cfg.vc_frac_bits - 1  # holds 0 .. 2^(2p-2)
        ports["vc_noise"] = 1
    return ports


def sum_adds_sr(cfg: DatapathConfig) -> bool:
    """Whether the SR uniform is a leaf of the exact sum: SR variants with bits to drop (not VC, whose
    branch B needs the fraction of ``x`` itself and branch A no uniform)."""
    return cfg.variant is not Variant.VC and cfg.drop_bits > 0


def _operand_count(cfg: DatapathConfig, opts: HwOptions) -> int:
    """Leaves of the exact-sum tree: theta, the product leaves of each product (per target), u_sr."""
    pairs = [((cfg.step.width, False), (cfg.grad.width, True))]
    if cfg.decay is not None:
        pairs.append(((cfg.decay.width, False), (cfg.state.width, True)))
    if cfg.variant.has_gaussian:
        pairs.append(((cfg.noise.width, False), (cfg.gaussian.width, True)))
    return 1 + sum(product_count(a, b, opts) for a, b in pairs) + sum_adds_sr(cfg)


def _square_count(cfg: DatapathConfig, opts: HwOptions) -> int:
    h = 2 * cfg.vc_frac_bits
    return square_count(h, False, opts)


def exact_sum_latency(cfg: DatapathConfig, opts: HwOptions | None = None) -> int:
    """Register stages of :class:`ExactSum`: the products, then the registered tree levels."""
    opts = check_options(opts)
    return 1 + tree_levels(tree_depth(_operand_count(cfg, opts)), opts.pipeline)


def narrowing_latency(cfg: DatapathConfig, opts: HwOptions | None = None) -> int:
    """Register stages of :class:`Rounder` (SR variants) or :class:`VCQuantizer`."""
    opts = check_options(opts)
    if cfg.variant is Variant.VC:
        # rounding; squarer products; squarer tree; thresholds; top-up/select; compares; output
        return 2 + tree_levels(tree_depth(_square_count(cfg, opts)), opts.pipeline) + 4
    return 2 if cfg.variant.has_accumulator else 1


def gaussian_latency(cfg: DatapathConfig, opts: HwOptions | None = None) -> int:
    return gaussian_stages(cfg.gaussian, check_options(opts)) if cfg.variant.has_gaussian else 0


def lane_latency(cfg: DatapathConfig, opts: HwOptions | None = None) -> int:
    """Register stages of :class:`UpdateLane`: input, Gaussian, exact sum, narrowing."""
    return sum(n for _, n, _ in pipeline_stages(cfg, opts))


def _products_text(opts: HwOptions) -> str:
    if opts.digit_products:
        return "2-bit digit products"
    return "DSP-sized products (one 18x18 multiplier each)" if opts.target == "dsp18" else "whole products"


def pipeline_stages(cfg: DatapathConfig, opts: HwOptions | None = None) -> list[tuple[str, int, str]]:
    """The lane's pipeline as (unit, register stages, what happens there), input to output."""
    opts = check_options(opts)
    k = opts.pipeline
    v = cfg.variant
    every = "" if k == 1 else f" (a register every {k} levels)"
    out = [("input", 1, "theta and grad registered; the generators present the beat's word during this stage "
                        "and step when it leaves")]
    if v.has_gaussian:
        d = tree_depth(cfg.gaussian.terms)
        table = ", their output registered" if opts.register_table else ""
        out.append(("gaussian", gaussian_latency(cfg, opts),
                    f"{cfg.gaussian.terms} table look-ups{table}, then a {d}-level adder tree{every}"))
    n = _operand_count(cfg, opts)
    sr = " + u_sr << (s-k)" if sum_adds_sr(cfg) else ""
    out.append(("exact_sum", exact_sum_latency(cfg, opts),
                f"{n - 1 - sum_adds_sr(cfg)} {_products_text(opts)} + aligned theta{sr}, then a {tree_depth(n)}-level "
                f"add/subtract tree{every}"))
    if v is Variant.VC:
        d = tree_depth(_square_count(cfg, opts))
        sq_text = _products_text(opts)
        if opts.squares_in_logic and not opts.digit_products:
            sq_text = "2-bit digit products in logic (the DSP blocks go to the exact sum)"
        out += [
            ("vc_round", 1, "branch A y = RN(x, s-p) + 2^(p-1); branch B t = (x >> (s-k)) + u_sr (one adder each)"),
            ("vc_square", 1 + tree_levels(d, k),
             f"one 2p-bit squarer (l or f_H): {sq_text}, {d}-level tree{every}"),
            ("vc_thresholds", 2, "down = 2 l^2 + ((2^(p-1) - l) << (p+1)); vs = f_H(2^H - f_H) rounded; "
                                 "w = max(vc_var - vs, 0); thresholds of the active branch"),
            ("vc_compare", 1, "u_vc < up, u_vc < down; q + 1, q - 1, q, each saturated to the weight format"),
            ("vc_out", 1, "select sat(q + c)"),
        ]
    else:
        out += [("sr_saturate", 1, "state = sat_S(x >> s) (x includes the SR uniform: one shift, no adder)")]
        if v.has_accumulator:
            out.append(("weight", 1, "weight = sat_Wf(RN(state, A.F - Wf.F)); state delayed one stage"))
    return out


def _wire(m: Module, value: Value, name: str) -> Signal:
    sig = Signal(value.shape(), name=name)
    m.d.comb += sig.eq(value)
    return sig


class ExactSum(wiring.Component):
    """``x = mu + noise`` (``noise`` is ``noise_reg * z``; drive ``noise`` with 0 to get ``mu``).

    SR variants (:func:`sum_adds_sr`) add the stochastic-rounding uniform too: ``x = mu + noise +
    (u_sr << (s - k))``, so that ``SR_k(mu + noise) = x >> s`` (``u_sr`` arrives with theta and grad).
    """

    def __init__(self, cfg: DatapathConfig, opts: HwOptions | None = None):
        self.cfg = cfg = _check_cfg(self, cfg)
        self.opts = _check_opts(self, opts)
        self.latency = exact_sum_latency(cfg, self.opts)
        sig = {
            "en": In(1),
            "theta": In(signed(cfg.state.width)),
            "grad": In(signed(cfg.grad.width)),
            "step": In(cfg.step.width),
            "x": Out(signed(cfg.sum_width)),
        }
        if cfg.decay is not None:
            sig["decay"] = In(cfg.decay.width)
        if cfg.variant.has_gaussian:
            sig["noise"] = In(cfg.noise.width)
            sig["z"] = In(signed(cfg.gaussian.width))
        if sum_adds_sr(cfg):
            sig["u_sr"] = In(cfg.sr_k)
        super().__init__(sig)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.cfg
        xf = cfg.sum_frac
        st = Stages(m, self.en, "sum_")
        leaves: list[tuple[Value, bool]] = [(st.reg(self.theta, "theta").shift_left(xf - cfg.state.frac), False)]
        terms = [("step", self.step, self.grad, xf - cfg.step.frac - cfg.grad.frac, True)]
        if cfg.decay is not None:
            terms.append(("decay", self.decay, self.theta, xf - cfg.decay.frac - cfg.state.frac, True))
        if cfg.variant.has_gaussian:
            terms.append(("noise", self.noise, self.z, xf - cfg.noise.frac - cfg.gaussian.frac, False))
        for name, reg, inp, align, neg in terms:
            for i, (pp, shift) in enumerate(product_operands(reg, inp, self.opts)):
                leaves.append((st.reg(pp, f"{name}_pp{i}").shift_left(shift + align), neg))
        if sum_adds_sr(cfg):  # SR_k(x) = (x + (u << (s-k))) >> s: the uniform is one more leaf
            leaves.append((st.reg(self.u_sr, "u_sr").shift_left(cfg.drop_bits - cfg.sr_k), False))
        x, depth = sum_tree(st, leaves, "x", self.opts.pipeline, self.opts.max_carry(cfg.sum_width))
        assert 1 + depth == self.latency  # the latency functions match what is built
        m.d.comb += self.x.eq(x)  # |x| < 2^(sum_width - 2): the truncation is exact
        return m


class Rounder(wiring.Component):
    """``state = sat_S(x >> s)`` for ``x`` = the exact sum plus ``u_sr << (s-k)`` (:class:`ExactSum`
    adds it), i.e. ``sat_S(SR_k(mu + noise, s, u_sr))``; ``weight`` per the variant (spec section 6)."""

    def __init__(self, cfg: DatapathConfig, opts: HwOptions | None = None):
        self.cfg = cfg = _check_cfg(self, cfg)
        self.opts = _check_opts(self, opts)
        if cfg.variant is Variant.VC:
            raise rejected(self, ValueError("Rounder implements the SR variants; variant 'vc' uses VCQuantizer"))
        self.latency = narrowing_latency(cfg, self.opts)
        super().__init__({
            "en": In(1),
            "x": In(signed(cfg.sum_width)),
            "state": Out(signed(cfg.state.width)),
            "weight": Out(signed(cfg.weight.width)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.cfg
        st = Stages(m, self.en, "rnd_")
        # stage 1: drop the s bits (the uniform is already added), saturate to the state format
        state = st.reg(saturate(self.x.shift_right(cfg.drop_bits), cfg.state), "state")
        if cfg.variant.has_accumulator:
            # stage 3: weight = sat_Wf(RN(state, A.F - Wf.F)); state delayed to stay aligned
            d = cfg.state.frac - cfg.weight.frac
            weight = st.reg(saturate(round_nearest(state, d), cfg.weight), "weight")
            state = st.reg(state, "state_d")
            m.d.comb += self.weight.eq(weight)
        else:
            m.d.comb += self.weight.eq(state)
        m.d.comb += self.state.eq(state)
        return m


class VCQuantizer(wiring.Component):
    """VC SGLDLP-L narrowing: branch A if ``vc_noise`` else branch B (spec section 6).

    Branch A: ``y = RN(x, s - p) + 2^(p-1)``, ``q = y >> p``, ``l = y mod 2^p``,
    ``up = l^2``, ``down = up + (2^p - l)^2 = 2 l^2 + ((2^(p-1) - l) << (p+1))``.
    Branch B: ``q = SR_k(x)``, ``vs = ((f_H << H) - f_H^2 + 2^(H-1)) >> H``,
    ``w = max(vc_var - vs, 0)``, ``up = w``, ``down = 2w``. Both: ``c = +1`` if
    ``u_vc < up``, ``-1`` if ``up <= u_vc < down``, else 0; ``out = sat_Wf(q + c)``.
    """

    def __init__(self, cfg: DatapathConfig, opts: HwOptions | None = None):
        self.cfg = cfg = _check_cfg(self, cfg)
        self.opts = _check_opts(self, opts)
        if cfg.variant is not Variant.VC:
            raise rejected(self, ValueError(f"VCQuantizer needs variant 'vc', got {cfg.variant.value!r}"))
        p = cfg.vc_frac_bits
        self.latency = narrowing_latency(cfg, self.opts)
        super().__init__({
            "en": In(1),
            "x": In(signed(cfg.sum_width)),
            "u_sr": In(max(cfg.sr_k, 1)),
            "u_vc": In(cfg.vc_uniform_bits),
            "vc_noise": In(1),
            "vc_var": In(2 * p - 1),
            "out": Out(signed(cfg.weight.width)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.cfg
        s, k, p = cfg.drop_bits, cfg.sr_k, cfg.vc_frac_bits
        h = 2 * p
        st = Stages(m, self.en, "vc_")
        x = self.x
        u = self.u_vc
        # ---- stage 1: both roundings (one adder each) -----------------------------------
        if s > p:  # RN(x, s-p) + 2^(p-1) == (x + 2^(s-p-1) + 2^(s-1)) >> (s-p)
            y = (x + ((1 << (s - p - 1)) + (1 << (s - 1)))).shift_right(s - p)
        else:  # RN shifts left (or not at all)
            y = x.shift_left(p - s) + (1 << (p - 1))
        if s:
            t = x.shift_right(s - k) + self.u_sr[:k]
            fk = x[s - k : s]  # (x >> (s-k)) mod 2^k
            fh = fk[k - h :] if k >= h else Cat(Const(0, h - k), fk)
        else:  # nothing to round: q = x, f = 0 so vs = 0
            t = x
            fh = Const(0, h)
        y, t = _wire(m, y, "y"), _wire(m, t, "t")  # each adder once in the netlist
        q_a = st.reg(y.shift_right(p), "q_a")
        l_a = st.reg(y[:p], "l_a")
        q_b = st.reg(t.shift_right(k), "q_b")
        f_h = st.reg(fh, "f_h")
        # the squarer operand, selected here by the static branch bit (off the product stage's path)
        sq_in = st.reg(Mux(self.vc_noise, y[:p], fh), "sq_in")  # l (p bits) in branch A, f_H (2p bits) in B
        u = st.reg(u, "u_1")
        # ---- stage 2: squarer partial products -------------------------------------------
        leaves = [(st.reg(pp.shift_left(sh), f"sq_pp{i}"), False)
                  for i, (pp, sh) in enumerate(square_operands(sq_in, self.opts))]
        m_a = st.reg((1 << (p - 1)) - l_a, "m_a")  # 2^(p-1) - l, signed
        q = st.reg(Mux(self.vc_noise, q_a, q_b), "q")
        f_h = st.reg(f_h, "f_h2")
        u = st.reg(u, "u_2")
        # ---- squarer tree ----------------------------------------------------------------
        sq, depth = sum_tree(st, leaves, "sq", self.opts.pipeline)
        m_a = st.delay(m_a, depth, "m_a")
        q = st.delay(q, depth, "q")
        f_h = st.delay(f_h, depth, "f_h")
        u = st.delay(u, depth, "u")
        # ---- stage: branch-A down threshold, branch-B f(1-f) (one adder each) -----------
        down_a = st.reg(sq.shift_left(1) + m_a.shift_left(p + 1), "down_a")
        diff = Cat(Const(1 << (h - 1), h), f_h) - sq  # (f_H << H) + 2^(H-1) - f_H^2 >= 0
        vs = st.reg(diff[h : 2 * h], "vs")
        up_a = st.reg(sq, "up_a")
        q = st.reg(q, "q_3")
        u = st.reg(u, "u_3")
        # ---- stage: top-up w = max(vc_var - vs, 0); thresholds of the active branch ---
        wd = self.vc_var - vs
        w = _wire(m, Mux(wd[-1], 0, wd[: len(wd) - 1]), "vc_w")
        # capped at 2^len(u): the same compare outcome on a carry chain of len(u) + 1 cells
        nu = len(u)
        up = st.reg(cap_for_compare(_wire(m, Mux(self.vc_noise, up_a, w), "vc_up_sel"), nu), "up")
        down = st.reg(cap_for_compare(_wire(m, Mux(self.vc_noise, down_a[: h + 1], w.shift_left(1)), "vc_down_sel"),
                                      nu), "down")
        q = st.reg(q, "q_4")
        u = st.reg(u, "u_4")
        # ---- stage: the two compares; q +- 1 in parallel ---------------------------------
        lt_up = st.reg(u < up, "lt_up")
        lt_down = st.reg(u < down, "lt_down")
        # sat(select(...)) == select(sat(...)): each candidate saturated here, beside the compares
        q_up = st.reg(saturate(_wire(m, q + 1, "vc_q_inc"), cfg.weight), "q_up")
        q_dn = st.reg(saturate(_wire(m, q - 1, "vc_q_dec"), cfg.weight), "q_dn")
        q = st.reg(saturate(q, cfg.weight), "q_5")
        # ---- stage: select ----------------------------------------------------------------------
        out = st.reg(Mux(lt_up, q_up, Mux(lt_down, q_dn, q)), "out")
        m.d.comb += self.out.eq(out)
        return m


class UpdateLane(wiring.Component):
    """One lane: generator words, (theta, grad) and registers in; new state and weight out.

    ``theta`` / ``grad`` are registered on the first enabled edge (the input stage).
    ``words`` is the generator output *while the beat is in the input stage*, i.e. one
    enabled edge later (:attr:`words_delay`): each random field is read straight from it
    by its first consumer (the Gaussian table look-ups, the ``u_sr`` / ``u_vc`` registers),
    so no random bits are registered at the input. ``words`` holds generator word ``k`` at
    bits ``[64k, 64k+64)``; fields are cut out with ``cfg.fields``. The register inputs are
    read from the stage after the input stage on (the VC noise gate is precomputed in a
    register of its own), so they may change up to the edge that registers the beat.
    ``state`` / ``weight`` are valid ``latency`` enabled edges after the beat is presented.
    """

    words_delay = 1

    def __init__(self, cfg: DatapathConfig, opts: HwOptions | None = None):
        self.cfg = cfg = _check_cfg(self, cfg)
        self.opts = _check_opts(self, opts)
        self.latency = lane_latency(cfg, self.opts)
        sig = {
            "en": In(1),
            "theta": In(signed(cfg.state.width)),
            "grad": In(signed(cfg.grad.width)),
            "words": In(WORD_BITS * cfg.rng_words),
            "state": Out(signed(cfg.state.width)),
            "weight": Out(signed(cfg.weight.width)),
        }
        for name, width in register_ports(cfg).items():
            sig[name] = In(width)
        super().__init__(sig)

    def _field(self, words: Value, name: str) -> Value:
        f = self.cfg.fields.get(name)
        if f is None or f.width == 0:
            return Const(0, 1)
        lo = f.word * WORD_BITS + f.offset
        return words[lo : lo + f.width]

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.cfg
        v = cfg.variant
        st = Stages(m, self.en, "lane_")
        theta = st.reg(self.theta, "theta")
        grad = st.reg(self.grad, "grad")
        words = self.words  # the generator output while the beat is in the input stage
        regs = {name: getattr(self, name) for name in register_ports(cfg)}
        m.submodules.sum = esum = ExactSum(cfg, self.opts)
        m.d.comb += [esum.en.eq(self.en), esum.step.eq(regs["step"])]
        if cfg.decay is not None:
            m.d.comb += esum.decay.eq(regs["decay"])
        gauss_lat = 0
        if v.has_gaussian:
            m.submodules.gauss = gauss = GaussianGenerator(cfg.gaussian, self.opts)
            gauss_lat = gauss.latency
            g = cfg.fields["gauss"]
            lo = g.word * WORD_BITS + g.offset
            m.d.comb += [gauss.en.eq(self.en), gauss.bits.eq(words[lo : lo + g.width])]
            noise: Value = regs["noise"]
            if v is Variant.VC:  # branch B uses mu alone: the noise term is gated off by vc_noise
                noise = Signal(self.noise.shape(), name="reg_noise_gated")
                m.d.sync += noise.eq(Mux(self.vc_noise, self.noise, 0))
            m.d.comb += [esum.noise.eq(noise), esum.z.eq(gauss.z)]
        m.d.comb += [
            esum.theta.eq(st.delay(theta, gauss_lat, "theta")),
            esum.grad.eq(st.delay(grad, gauss_lat, "grad")),
        ]
        # random fields, read from the generator while the beat is in the input stage
        if sum_adds_sr(cfg):  # a leaf of the exact sum: carried only while the Gaussian is computed
            m.d.comb += esum.u_sr.eq(st.delay(self._field(words, "sr"), gauss_lat, "u_sr"))
        # VC: registered on the edge the beat leaves the input stage, carried to the quantizer
        side = gauss_lat + esum.latency - self.words_delay
        if v is Variant.VC:
            m.submodules.narrow = vcq = VCQuantizer(cfg, self.opts)
            u_sr = st.delay(st.reg(self._field(words, "sr"), "u_sr"), side, "u_sr")
            m.d.comb += [
                vcq.en.eq(self.en), vcq.x.eq(esum.x), vcq.u_sr.eq(u_sr),
                vcq.u_vc.eq(st.delay(st.reg(self._field(words, "vc"), "u_vc"), side, "u_vc")),
                vcq.vc_noise.eq(regs["vc_noise"]), vcq.vc_var.eq(regs["vc_var"]),
                self.state.eq(vcq.out), self.weight.eq(vcq.out),
            ]
        else:
            m.submodules.narrow = rnd = Rounder(cfg, self.opts)
            m.d.comb += [
                rnd.en.eq(self.en), rnd.x.eq(esum.x),
                self.state.eq(rnd.state), self.weight.eq(rnd.weight),
            ]
        return m
