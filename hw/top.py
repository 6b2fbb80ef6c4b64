"""``UpdateTop``: L update lanes behind one stream sink/source, control registers and seeds.

The whole top is one pipeline with a global enable ``advance = ~source.valid |
source.ready``: every stage (data, valid and keep) moves together, so one beat per
clock flows when the output is taken and everything holds while it is not (no beat
lost or duplicated). ``sink.ready = advance & ~rst`` (combinational on ``source.ready``;
no beat is taken while reset is asserted). Lane ``l``'s generators present their output
while the beat is in the input stage and step on the edge it leaves that stage iff
``keep[l]``. Control writes are decoded into a register and land one edge later (each lane
holds its own copy of the per-step registers), which is still before any beat transferred
after the write reads them. A generator write holds the whole generator on the edge it lands
(the written word loads, the other keeps its value; the beat that would have stepped it on
that edge is the one transferred on the write edge, as in the contract). See docs/hardware.md.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, ResetSignal, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from emulator.spec.datapath import DatapathConfig
from emulator.spec.formats import check_int
from emulator.spec.rng import LaneRng

from . import control
from ._util import rejected
from .datapath import UpdateLane, lane_latency, register_ports
from .options import HwOptions, check_options
from .rng import XoroshiroGenerator


def sink_layout(cfg: DatapathConfig) -> data.StructLayout:
    """Input beat: ``keep`` (L bits), ``theta`` (L x signed S.W), ``grad`` (L x signed G.W), LSB first."""
    n = cfg.lanes
    return data.StructLayout({
        "keep": unsigned(n),
        "theta": data.ArrayLayout(signed(cfg.state.width), n),
        "grad": data.ArrayLayout(signed(cfg.grad.width), n),
    })


def source_layout(cfg: DatapathConfig) -> data.StructLayout:
    """Output beat: ``keep`` echo, ``state`` (L x signed S.W), ``weight`` (L x signed Wf.W)."""
    n = cfg.lanes
    return data.StructLayout({
        "keep": unsigned(n),
        "state": data.ArrayLayout(signed(cfg.state.width), n),
        "weight": data.ArrayLayout(signed(cfg.weight.width), n),
    })


def control_signature() -> wiring.Signature:
    """Host side of the register port (``ctl`` is ``In`` of this on the top)."""
    return wiring.Signature({
        "addr": Out(control.ADDR_WIDTH),
        "data": Out(control.DATA_WIDTH),
        "we": Out(1),
    })


class UpdateTop(wiring.Component):
    """L-lane SGLD update datapath (HW_CONTRACT): stream in, stream out, registers, seeds.

    ``latency``: a beat transferred on edge ``t`` is presented on ``source`` (valid) from
    edge ``t + latency - 1`` on, i.e. it can be taken at edge ``t + latency`` at the earliest.
    """

    def __init__(self, cfg: DatapathConfig, *, reset_seed: int = 0, opts: HwOptions | None = None):
        try:
            seed = self._check(cfg, reset_seed)
            self.opts = check_options(opts)
        except (TypeError, ValueError) as e:
            raise rejected(self, e) from None
        self.cfg = cfg
        self.reset_seed = seed
        self.latency = lane_latency(cfg, self.opts)
        super().__init__({
            "sink": In(stream.Signature(sink_layout(cfg))),
            "source": Out(stream.Signature(source_layout(cfg))),
            "ctl": In(control_signature()),
            "idle": Out(1),
        })

    @staticmethod
    def _check(cfg: object, reset_seed: object) -> int:
        if not isinstance(cfg, DatapathConfig):
            raise TypeError(f"cfg must be an emulator.spec.datapath.DatapathConfig, got {type(cfg).__name__}")
        seed = check_int("reset_seed", reset_seed)
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"reset_seed must be in [0, 2**64), got {seed}")
        n = control.streams(cfg)
        if n > control.MAX_STREAMS:
            raise ValueError(
                f"lanes * rng_words = {cfg.lanes} * {cfg.rng_words} = {n} generator streams; the control "
                f"address map holds at most {control.MAX_STREAMS}"
            )
        return seed

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.cfg
        lanes, words = cfg.lanes, cfg.rng_words

        # ---- pipeline control -------------------------------------------------------------
        valid = [Signal(name=f"valid_{i + 1}") for i in range(self.latency)]
        keep = [Signal(lanes, name=f"keep_{i + 1}", reset_less=True) for i in range(self.latency)]
        advance = Signal()
        m.d.comb += [
            advance.eq(~valid[-1] | self.source.ready),
            self.sink.ready.eq(advance & ~ResetSignal()),  # no beat is taken (and lost) during reset
            self.source.valid.eq(valid[-1]),
            self.source.payload.keep.eq(keep[-1]),
            self.idle.eq(~Cat(valid).any()),
        ]
        live = Signal(lanes, name="live_1")  # valid[0] & keep[0], one flip-flop per lane (generator step)
        with m.If(advance):
            m.d.sync += [valid[0].eq(self.sink.valid), keep[0].eq(self.sink.payload.keep),
                         live.eq(self.sink.payload.keep & self.sink.valid.replicate(lanes))]
            m.d.sync += [valid[i].eq(valid[i - 1]) for i in range(1, self.latency)]
            m.d.sync += [keep[i].eq(keep[i - 1]) for i in range(1, self.latency)]

        # ---- control writes: the decode is registered (off the clock-enable paths) ---------------
        # A register write on edge w lands in the lanes' registers on edge w + 1: before any beat
        # transferred after the write reads them (first read while the beat is in stage 1).
        wdata = Signal(control.DATA_WIDTH, name="wdata", reset_less=True)
        m.d.sync += wdata.eq(self.ctl.data)
        rmap = control.register_map(cfg)
        write = {name: Signal(name=f"write_{name}") for name in rmap}
        m.d.sync += [w.eq(0) for w in write.values()]  # high for one clock per write
        with m.If(self.ctl.we):
            with m.Switch(self.ctl.addr):
                for name, w in write.items():
                    with m.Case(rmap[name]["addr"]):
                        m.d.sync += w.eq(1)

        # ---- generators and lanes ---------------------------------------------------------
        # A seed write is registered (off the generators' clock-enable path) and applied on the first
        # edge the input stage moves on (or is empty): a beat transferred on the write edge has read the
        # old output by then, and its step is the one the contract's hold replaces.
        seed_data = Signal(cfg.rng.word_bits, name="seed_data", reset_less=True)
        with m.If(self.ctl.we):
            m.d.sync += seed_data.eq(self.ctl.data[: cfg.rng.word_bits])
        free = Signal()  # the input stage moves on this edge (or holds no beat)
        took = Signal()  # a beat transfers on this edge
        m.d.comb += [free.eq(advance | ~valid[0]), took.eq(self.sink.valid & self.sink.ready)]
        init = LaneRng.seeded(cfg.rng, self.reset_seed, lanes, words)
        for lane in range(lanes):
            gens = []
            for k in range(words):
                j = lane * words + k
                gen = XoroshiroGenerator(cfg.rng, (int(init.s0[lane, k]), int(init.s1[lane, k])))
                m.submodules[f"rng_{lane}_{k}"] = gen
                addr = control.SEED_BASE + 2 * j
                load = Signal(2, name=f"seed_load_{j}")  # pending word loads
                hold = Signal(name=f"seed_hold_{j}")  # a load is pending and came with a transfer
                hit = Cat(self.ctl.addr == addr, self.ctl.addr == addr + 1) & self.ctl.we.replicate(2)
                with m.If(hit.any()):
                    m.d.sync += [load.eq(hit), hold.eq(took)]
                with m.Elif(free):
                    m.d.sync += [load.eq(0), hold.eq(0)]
                m.d.comb += [
                    # the edge moves the input stage, or applies a pending load to an empty one; only
                    # this enable sees the late advance, step and loads come from registers
                    gen.en.eq(advance | (~valid[0] & load.any())),
                    # the beat leaves the input stage; a seed write on its transfer edge holds the generator
                    gen.step.eq(live[lane] & ~hold),
                    gen.load0.eq(load[0]),
                    gen.load1.eq(load[1]),
                    gen.data.eq(seed_data),
                ]
                gens.append(gen.out)
            m.submodules[f"lane_{lane}"] = ln = UpdateLane(cfg, self.opts)
            m.d.comb += [
                ln.en.eq(advance),
                ln.theta.eq(self.sink.payload.theta[lane]),
                ln.grad.eq(self.sink.payload.grad[lane]),
                ln.words.eq(Cat(gens)),
                self.source.payload.state[lane].eq(ln.state),
                self.source.payload.weight[lane].eq(ln.weight),
            ]
            # each lane holds its own copy of the per-step registers (short local nets); kept, or a
            # synthesis tool merges the copies (same inputs) back into one register driving every lane
            for name, width in register_ports(cfg).items():
                reg = Signal(width, name=f"reg_{name}_{lane}", attrs={"keep": 1})
                with m.If(write[name]):
                    m.d.sync += reg.eq(wdata[:width])
                m.d.comb += getattr(ln, name).eq(reg)
        return m
