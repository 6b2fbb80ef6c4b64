"""Arithmetic building blocks shared by the datapath units (docs/spec.md sections 2 and 6).

Everything here returns Amaranth expressions or registers stages under one shared
enable, so a whole lane is a fixed-latency pipeline that holds when the enable is low.
Carry chains are kept to one adder (or one compare) per register stage: products are
split into 2-bit partial products and summed by a tree of two-input adders, one tree
level per stage.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed

from emulator.spec.formats import FixedFormat

CHUNK_BITS = 2  # multiplier digit width: a partial product is one adder deep


class Stages:
    """Pipeline registers that all load when ``en`` is high (one global enable per lane)."""

    def __init__(self, m: Module, en: Value, prefix: str):
        self.m = m
        self.en = en
        self.prefix = prefix

    def reg(self, value: Value | int, name: str) -> Signal:
        value = Value.cast(value)
        sig = Signal(value.shape(), name=f"{self.prefix}{name}", reset_less=True)
        with self.m.If(self.en):
            self.m.d.sync += sig.eq(value)
        return sig

    def delay(self, value: Value, cycles: int, name: str) -> Value:
        for i in range(cycles):
            value = self.reg(value, f"{name}_d{i}")
        return value


def saturate(value: Value, fmt: FixedFormat) -> Value:
    """``sat_fmt(value)`` for a signed ``fmt``: clamp, never wrap (sign-extension check, no adder)."""
    if not fmt.signed:
        raise ValueError(f"saturate() handles signed formats, got {fmt}")
    value = Value.cast(value)
    if not value.shape().signed:
        value = Cat(value, Const(0, 1)).as_signed()
    w = fmt.width
    n = len(value)
    if n <= w:
        return value
    top = value[w - 1 :]
    fits = top.all() | ~top.any()
    lo = Const(fmt.min_word, signed(w))
    hi = Const(fmt.max_word, signed(w))
    return Mux(fits, value[:w].as_signed(), Mux(value[-1], lo, hi))


def round_nearest(value: Value, s: int) -> Value:
    """``RN(value, s)``: ``(value + 2^(s-1)) >> s`` (ties toward +inf); a left shift for ``s <= 0``."""
    value = Value.cast(value)
    if s <= 0:
        return value.shift_left(-s)
    return (value + (1 << (s - 1))).shift_right(s)


def partial_products(a: Value, b: Value) -> list[tuple[Value, int]]:
    """``a * b`` as ``[(a * digit_i, shift_i)]`` with ``CHUNK_BITS``-bit digits of ``b``.

    Low digits are unsigned; the top digit of a signed ``b`` is signed, so the sum of
    ``digit_i << shift_i`` is ``b`` exactly.
    """
    a, b = Value.cast(a), Value.cast(b)
    n = len(b)
    out = []
    for lo in range(0, n, CHUNK_BITS):
        hi = min(lo + CHUNK_BITS, n)
        digit: Value = b[lo:hi]
        if hi == n and b.shape().signed:
            digit = digit.as_signed()
        out.append((a * digit, lo))
    return out


def product_operands(a: Value, b: Value) -> list[tuple[Value, int]]:
    """Partial products of ``a * b``, splitting the narrower operand into digits."""
    a, b = Value.cast(a), Value.cast(b)
    return partial_products(b, a) if len(a) < len(b) else partial_products(a, b)


def sum_tree(stages: Stages, leaves: list[tuple[Value, bool]], name: str) -> tuple[Value, int]:
    """Sum of signed leaves ``(value, negate)``; one register level per tree level.

    A node adds or subtracts its two inputs and passes a negate flag up, so no
    negation is ever computed: ``(-a) + (-b)`` is ``-(a + b)``, ``a + (-b)`` is
    ``a - b``. The result must be positive at the root (some leaf is not negated).
    Returns the sum and the number of register levels.
    """
    if not leaves:
        raise ValueError("sum_tree needs at least one operand")
    if all(neg for _, neg in leaves):
        raise ValueError("sum_tree needs a non-negated operand")
    # put non-negated leaves first so that every root-path has a positive operand
    level = sorted(leaves, key=lambda x: x[1])
    depth = 0
    while len(level) > 1:
        nxt: list[tuple[Value, bool]] = []
        for i in range(0, len(level) - 1, 2):
            (a, na), (b, nb) = level[i], level[i + 1]
            if na == nb:
                v, neg = a + b, na
            elif nb:
                v, neg = a - b, False
            else:
                v, neg = b - a, False
            nxt.append((stages.reg(v, f"{name}_l{depth}_{i // 2}"), neg))
        if len(level) % 2:
            a, na = level[-1]
            nxt.append((stages.reg(a, f"{name}_l{depth}_{len(level) // 2}"), na))
        level = nxt
        depth += 1
    value, neg = level[0]
    assert not neg  # guaranteed by the ordering above
    return value, depth

