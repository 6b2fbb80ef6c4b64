"""Arithmetic building blocks shared by the datapath units (docs/spec.md sections 2 and 6).

Everything here returns Amaranth expressions or registers stages under one shared
enable, so a whole lane is a fixed-latency pipeline that holds when the enable is low.
With the default options (``hw.options.HwOptions``: target ``ice40-hx``, pipeline 1)
carry chains are kept to one adder (or one compare) per register stage: products are
split into 2-bit partial products and summed by a tree of two-input adders, one tree
level per stage. Other targets take whole products (one multiplier each); a pipeline
depth ``k`` registers every k-th tree level.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed

from emulator.spec.formats import FixedFormat

from .options import DSP_DIGIT_BITS, DSP_OPERAND_BITS, HwOptions, registered_level

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


def digits(b: Value, bits: int) -> list[tuple[Value, int]]:
    """``b`` as ``[(digit_i, shift_i)]`` of ``bits``-bit digits, ``sum(digit_i << shift_i) == b``.

    Low digits are unsigned; the top digit of a signed ``b`` is signed.
    """
    b = Value.cast(b)
    n = len(b)
    out = []
    for lo in range(0, n, bits):
        hi = min(lo + bits, n)
        digit: Value = b[lo:hi]
        if hi == n and b.shape().signed:
            digit = digit.as_signed()
        out.append((digit, lo))
    return out


def partial_products(a: Value, b: Value) -> list[tuple[Value, int]]:
    """``a * b`` as ``[(a * digit_i, shift_i)]`` with ``CHUNK_BITS``-bit digits of ``b``."""
    a = Value.cast(a)
    return [(a * d, sh) for d, sh in digits(b, CHUNK_BITS)]


def _dsp_split(v: Value) -> list[tuple[Value, int]]:
    """``v`` whole if it fits an 18-bit signed DSP operand, else 17-bit digits."""
    if len(v) + (0 if v.shape().signed else 1) <= DSP_OPERAND_BITS:
        return [(v, 0)]
    return digits(v, DSP_DIGIT_BITS)


def product_count(a: tuple[int, bool], b: tuple[int, bool], opts: HwOptions) -> int:
    """Leaves :func:`product_operands` makes for operands of ``(width, signed)`` ``a`` and ``b``."""
    if opts.digit_products:
        return -(-min(a[0], b[0]) // CHUNK_BITS)
    if opts.target == "dsp18":
        def n(w: int, signed: bool) -> int:
            return 1 if w + (not signed) <= DSP_OPERAND_BITS else -(-w // DSP_DIGIT_BITS)
        return n(*a) * n(*b)
    return 1


def product_operands(a: Value, b: Value, opts: HwOptions | None = None) -> list[tuple[Value, int]]:
    """``a * b`` as a list of ``(product, shift)`` leaves, per the target.

    ``ice40-hx``: 2-bit digit products of the narrower operand. ``dsp18``: one product per
    pair of DSP-sized pieces (one multiplier when both operands fit 18 signed bits).
    ``generic``: the whole product.
    """
    opts = opts or HwOptions()
    a, b = Value.cast(a), Value.cast(b)
    if opts.digit_products:
        return partial_products(b, a) if len(a) < len(b) else partial_products(a, b)
    if opts.target == "dsp18":
        return [(da * db, sa + sb) for da, sa in _dsp_split(a) for db, sb in _dsp_split(b)]
    return [(a * b, 0)]


def square_count(width: int, signed_: bool, opts: HwOptions) -> int:
    """Leaves :func:`square_operands` makes for an operand of ``width`` bits."""
    if opts.squares_in_logic and not signed_:
        return -(-width // CHUNK_BITS)
    return product_count((width, signed_), (width, signed_), opts)


def _times_digit(d: Value, operand: Value) -> Value:
    """``d * operand`` for a short unsigned digit ``d``, as gated shifted copies of ``operand`` (no ``*``:
    a synthesis tool that maps multiplications to DSP blocks maps even a 2-bit digit product to one)."""
    terms = [Mux(d[i], operand.shift_left(i), 0) for i in range(len(d))]
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


def square_operands(a: Value, opts: HwOptions | None = None) -> list[tuple[Value, int]]:
    """``a * a`` as a list of ``(product, shift)`` leaves, per the target.

    ``ice40-hx`` with an unsigned ``a = sum(d_i << b*i)`` (``b``-bit digits): the symmetric
    squarer ``a^2 = sum(d_i * (d_i + (a >> b*(i+1)) << (b+1)) << 2*b*i)``, each cross term
    ``d_i*d_j`` formed once (doubled by the shift) instead of twice, so digit ``i`` multiplies only
    the bits above it: about a third fewer partial-product bits than ``a * a`` for 16 bits (95
    against 144), tending to half for wide operands, and each operand bit drives fewer of them.
    The operand ``d_i + (hi << (b+1))`` is a concatenation (no adder).
    ``dsp18`` squares in logic the same way (``HwOptions.squares_in_logic``: the DSP blocks are kept
    for the three products of the exact sum), each digit product written as gated shifted copies of
    its operand so that the tool does not map it to a DSP block.
    ``generic`` and signed operands: :func:`product_operands`.
    """
    opts = opts or HwOptions()
    a = Value.cast(a)
    if not opts.squares_in_logic or a.shape().signed:
        return product_operands(a, a, opts)
    out = []
    for d, lo in digits(a, CHUNK_BITS):
        hi = a[lo + CHUNK_BITS:]
        operand = Cat(d, Const(0, CHUNK_BITS + 1 - len(d)), hi) if len(hi) else d
        out.append((d * operand if opts.digit_products else _times_digit(d, operand), 2 * lo))
    return out


def cap_for_compare(value: Value, bits: int) -> Value:
    """An unsigned ``value`` narrowed to ``bits + 1`` bits without changing any compare ``u < value``
    for ``u < 2**bits``: the low ``bits`` bits and one bit set when any higher bit is (so the compare
    is a ``bits + 1``-bit carry chain, not one as wide as ``value``)."""
    value = Value.cast(value)
    if value.shape().signed:
        raise ValueError(f"cap_for_compare() needs an unsigned value, got {value.shape()}")
    if len(value) <= bits + 1:
        return value
    return Cat(value[:bits], value[bits:].any())


def add_sub(a: Value, b: Value, sub: bool, max_carry: int | None = None) -> Value:
    """``a - b`` if ``sub`` else ``a + b`` (Amaranth's width); with ``max_carry`` and a wider result,
    a carry-select adder: the low half, and the high half twice (carry in 0 and 1) side by side,
    the low half's carry picking one, so no carry chain is longer than about half the width."""
    a, b = Value.cast(a), Value.cast(b)
    exact = a - b if sub else a + b
    w = len(exact)
    if max_carry is None or w <= max_carry:
        return exact
    # two's complement over w bits: a + (sub ? ~b + 1 : b); exact because the result fits w bits
    sa = a.as_signed() if a.shape().signed else Cat(a, Const(0, 1)).as_signed()
    sb = b.as_signed() if b.shape().signed else Cat(b, Const(0, 1)).as_signed()
    ea, eb = Cat(sa, sa[-1].replicate(w - len(sa))), Cat(sb, sb[-1].replicate(w - len(sb)))
    if sub:
        eb = ~eb
    h = w // 2
    low = ea[:h] + eb[:h] + int(sub)  # h + 1 bits: the carry into the high half on top
    hi0 = (ea[h:] + eb[h:])[: w - h]
    hi1 = (ea[h:] + eb[h:] + 1)[: w - h]
    out = Cat(low[:h], Mux(low[h], hi1, hi0))
    return out.as_signed() if exact.shape().signed else out


def sum_tree(stages: Stages, leaves: list[tuple[Value, bool]], name: str, pipeline: int = 1,
             max_carry: int | None = None) -> tuple[Value, int]:
    """Sum of signed leaves ``(value, negate)``; a register on every ``pipeline``-th level and the root.

    A node adds or subtracts its two inputs and passes a negate flag up, so no
    negation is ever computed: ``(-a) + (-b)`` is ``-(a + b)``, ``a + (-b)`` is
    ``a - b``. The result must be positive at the root (some leaf is not negated).
    ``max_carry``: adders wider than this are carry-select adders (:func:`add_sub`).
    Returns the sum and the number of register levels.
    """
    n, total = len(leaves), 0
    while n > 1:
        n, total = (n + 1) // 2, total + 1
    if not leaves:
        raise ValueError("sum_tree needs at least one operand")
    if all(neg for _, neg in leaves):
        raise ValueError("sum_tree needs a non-negated operand")
    # put non-negated leaves first so that every root-path has a positive operand
    level = sorted(leaves, key=lambda x: x[1])
    depth = regs = 0
    while len(level) > 1:
        registered = registered_level(depth, total, pipeline)

        def node(v: Value, i: int, depth: int = depth, registered: bool = registered) -> Value:
            return stages.reg(v, f"{name}_l{depth}_{i}") if registered else v

        nxt: list[tuple[Value, bool]] = []
        for i in range(0, len(level) - 1, 2):
            (a, na), (b, nb) = level[i], level[i + 1]
            if na == nb:
                v, neg = add_sub(a, b, False, max_carry), na
            elif nb:
                v, neg = add_sub(a, b, True, max_carry), False
            else:
                v, neg = add_sub(b, a, True, max_carry), False
            nxt.append((node(v, i // 2), neg))
        if len(level) % 2:
            a, na = level[-1]
            nxt.append((node(a, len(level) // 2), na))
        level = nxt
        depth += 1
        regs += registered
    value, neg = level[0]
    assert not neg  # guaranteed by the ordering above
    return value, regs

