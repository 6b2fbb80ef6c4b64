"""Gaussian generator: ``z = T[i_0] + ... + T[i_(terms-1)]`` (spec section 5).

The table is ``GaussianSpec.table`` (derived in the emulator, never typed here); term
``j`` reads bits ``[j*b, (j+1)*b)`` of the ``gauss`` field. One register stage holds
the look-ups (two on targets that register the table output, ``HwOptions.register_table``),
then a two-input adder tree sums them (a register every ``pipeline``-th level).
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from emulator.spec.gaussian import GaussianSpec

from ._util import rejected
from .arith import Stages, sum_tree
from .options import HwOptions, check_options, tree_levels


def tree_depth(n: int) -> int:
    """Register levels of :func:`hw.arith.sum_tree` for ``n`` operands."""
    d = 0
    while n > 1:
        n = (n + 1) // 2
        d += 1
    return d


def gaussian_stages(spec: GaussianSpec, opts: HwOptions) -> int:
    """Register stages of :class:`GaussianGenerator`: look-ups (+ table register), then the tree."""
    return 1 + opts.register_table + tree_levels(tree_depth(spec.terms), opts.pipeline)


class GaussianGenerator(wiring.Component):
    """``bits`` (the gauss field) in, ``z`` out ``latency`` enabled clocks later."""

    def __init__(self, spec: GaussianSpec, opts: HwOptions | None = None):
        if not isinstance(spec, GaussianSpec):
            raise rejected(self, TypeError(f"spec must be a GaussianSpec, got {spec!r}"))
        try:
            self.opts = check_options(opts)
        except TypeError as e:
            raise rejected(self, e) from None
        self.spec = spec
        self.latency = gaussian_stages(spec, self.opts)
        super().__init__({"en": In(1), "bits": In(spec.bits), "z": Out(signed(spec.width))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        sp = self.spec
        table = [int(t) for t in sp.table]
        tw = max(abs(t) for t in table).bit_length() + 1
        rom = Array(Const(t, signed(tw)) for t in table)
        st = Stages(m, self.en, "gauss_")
        b = sp.index_bits
        terms = [(st.reg(rom[self.bits[j * b : (j + 1) * b]], f"t{j}"), False) for j in range(sp.terms)]
        if self.opts.register_table:  # the block-RAM output gets its own register
            terms = [(st.reg(t, f"t{j}_q"), False) for j, (t, _) in enumerate(terms)]
        z, _ = sum_tree(st, terms, "z", self.opts.pipeline)
        m.d.comb += self.z.eq(z)
        return m
