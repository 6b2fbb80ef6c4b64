"""Lane random source: one xoroshiro generator (transition and scrambler from ``XoroshiroSpec``).

The shift and rotate constants, the word size and the output stage all come from the
spec object; the reset state is a parameter (the top computes it with
``LaneRng.seeded``). Per update the generator presents ``out(s0, s1)`` and steps on
the same clock edge, so the consumer registers the output read *before* the step.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from emulator.spec.rng import XoroshiroSpec

from ._util import rejected


def next_state(spec: XoroshiroSpec, s0: Value, s1: Value) -> tuple[Value, Value]:
    """T(s0, s1): ``sx = s0 ^ s1``, ``s0' = rotl(s0, a) ^ sx ^ (sx << b)``, ``s1' = rotl(sx, c)``."""
    w = spec.word_bits
    sx = s0 ^ s1
    n0 = s0.rotate_left(spec.a) ^ sx ^ sx.shift_left(spec.b)[:w]
    return n0, sx.rotate_left(spec.c)


def output(spec: XoroshiroSpec, s0: Value, s1: Value) -> Value:
    """The scrambled output word: ``aox`` or ``linear`` (spec section 3)."""
    sx = s0 ^ s1
    if spec.scrambler == "linear":
        return sx
    sa = s0 & s1
    return sx ^ (sa.rotate_left(1) | sa.rotate_left(2))


class XoroshiroGenerator(wiring.Component):
    """One generator: ``out`` is the current output; ``step`` advances on the clock edge.

    ``load0`` / ``load1`` write ``data`` into ``s0`` / ``s1`` (a seed load; a load wins
    over a step of the same word). All of it happens only on an edge with ``en`` high
    (default 1): a top whose "this edge moves" condition arrives late (a pipeline's
    ``advance``) drives ``en`` with it and ``step`` / ``load*`` from registers, so the late
    signal only enables the state registers and never selects their data.
    ``reset_state`` is the state after ``rst``.
    """

    def __init__(self, spec: XoroshiroSpec, reset_state: tuple[int, int] = (1, 0)):
        if not isinstance(spec, XoroshiroSpec):
            raise rejected(self, TypeError(f"spec must be an XoroshiroSpec, got {spec!r}"))
        s0, s1 = reset_state
        for name, v in (("s0", s0), ("s1", s1)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= spec.mask:
                raise rejected(self, ValueError(
                    f"reset state {name} must be an int in [0, 2**{spec.word_bits}), got {v!r}"))
        if s0 == 0 and s1 == 0:
            raise rejected(self, ValueError("reset state (0, 0) is the all-zero state, which never leaves zero"))
        self.spec = spec
        self.reset_state = (s0, s1)
        w = spec.word_bits
        super().__init__({
            "out": Out(w),
            "step": In(1),
            "load0": In(1),
            "load1": In(1),
            "en": In(1, init=1),
            "data": In(w),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.spec.word_bits
        s0 = Signal(w, init=self.reset_state[0])
        s1 = Signal(w, init=self.reset_state[1])
        m.d.comb += self.out.eq(output(self.spec, s0, s1))
        n0, n1 = next_state(self.spec, s0, s1)
        with m.If(self.en):
            with m.If(self.load0):
                m.d.sync += s0.eq(self.data)
            with m.Elif(self.step):
                m.d.sync += s0.eq(n0)
            with m.If(self.load1):
                m.d.sync += s1.eq(self.data)
            with m.Elif(self.step):
                m.d.sync += s1.eq(n1)
        return m
