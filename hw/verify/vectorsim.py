"""Vectorized evaluation of a pipelined Amaranth design's function, for exhaustive checks.

A lane unit is a feed-forward pipeline under one enable: with the enable held high, each
output after ``latency`` edges is a fixed function of the inputs presented ``latency``
edges earlier. :func:`evaluate` computes that function directly from the elaborated
design (the same ``Fragment`` that the Verilog back-end and ``amaranth.sim`` consume):
every register is read as a wire carrying its next-state expression, and every
expression node (operators, slices, concatenations, switch values, ``If``/``Switch``
statements) is evaluated with Amaranth's width and sign rules on numpy ``int64``
arrays, one element per input vector. Millions of vectors take seconds, so the W=4
configurations can be checked against the golden model for every input.

Limits (checked, ``NotImplementedError`` otherwise): values up to 63 bits (64-bit
unsigned inputs are accepted when every value is below 2**63), no feedback through
registers, no memories or instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from amaranth.hdl import Fragment, Shape, Signal, Value
from amaranth.hdl._ast import (  # the AST node classes the front-end produces
    Assign,
    Concat,
    Const,
    Operator,
    Part,
    Slice,
    Switch,
    SwitchValue,
)

_MAX_BITS = 63


def _norm(a: np.ndarray, shape: Shape) -> np.ndarray:
    """Wrap exact integers to ``shape`` (two's complement for signed)."""
    w = shape.width
    if w == 0:
        return np.zeros_like(a)
    if w >= 64 or (w == _MAX_BITS and not shape.signed):
        if np.any(a < 0):
            raise NotImplementedError(f"{w}-bit unsigned values must be < 2**63 here")
        return a
    a = a & ((1 << w) - 1)
    if shape.signed:
        a = a - (((a >> (w - 1)) & 1) << w)
    return a


def _bits(a: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` low bits of ``a`` as a non-negative integer."""
    if width >= 64:
        return a
    return a & ((1 << width) - 1)


def _fits(src: Shape, dst: Shape) -> bool:
    """Every value of ``src`` is a value of ``dst`` (so an assignment needs no wrapping)."""
    if src.signed and not dst.signed:
        return False
    return src.width + (dst.signed and not src.signed) <= dst.width


def _match(test: np.ndarray, width: int, pattern: str) -> np.ndarray:
    mask = value = 0
    for ch in pattern:  # MSB first
        mask, value = mask << 1, value << 1
        if ch != "-":
            mask |= 1
            value |= ch == "1"
    return (_bits(test, width) & mask) == value


class _Evaluator:
    def __init__(self, design: Any):
        self.drivers: dict[int, list[Any]] = {}
        self._collect(Fragment.get(design, None))

    def start(self, inputs: list[tuple[Signal, np.ndarray]], n: int) -> None:
        """Forget all values; set the inputs of the next batch of ``n`` vectors."""
        self.n = n
        self.values: dict[int, np.ndarray] = {}
        self.busy: set[int] = set()
        self.cache: dict[int, tuple[Value, np.ndarray]] = {}
        for sig, arr in inputs:
            if not isinstance(sig, Signal):
                raise TypeError(f"inputs must be (Signal, values) pairs, got {sig!r}")
            a = np.asarray(arr, dtype=np.int64)  # scalars stay 0-d: constant folding for free
            if a.ndim > 1 or (a.ndim == 1 and a.size != n):
                raise ValueError(f"input {sig.name} has shape {a.shape}; expected a scalar or ({n},)")
            if not np.array_equal(_norm(a, sig.shape()), a):
                raise ValueError(f"input {sig.name} has values outside {sig.shape()}")
            self.values[id(sig)] = a

    def _collect(self, frag: Fragment) -> None:
        for _domain, stmts in frag.statements.items():
            for stmt in stmts:
                for sig in stmt._lhs_signals():
                    self.drivers.setdefault(id(sig), []).append(stmt)
        for sub, _name, _loc in frag.subfragments:
            if type(sub) is not Fragment and not isinstance(sub, Fragment):
                raise NotImplementedError(f"cannot evaluate {type(sub).__name__}")
            self._collect(sub)

    # ---- values ------------------------------------------------------------------------

    def signal(self, sig: Signal) -> np.ndarray:
        key = id(sig)
        if key in self.values:
            return self.values[key]
        if key in self.busy:
            raise NotImplementedError(f"feedback through {sig.name}: not a feed-forward pipeline")
        self.busy.add(key)
        cur = np.asarray(sig.init, dtype=np.int64)
        for stmt in self.drivers.get(key, []):
            cur = self.execute(stmt, sig, cur, None)
        self.busy.discard(key)
        self.values[key] = cur
        return cur

    def value(self, v: Any) -> np.ndarray:
        v = Value.cast(v)
        hit = self.cache.get(id(v))
        if hit is not None and hit[0] is v:
            return hit[1]
        out = self._value(v)
        self.cache[id(v)] = (v, out)  # keep v alive so its id is not reused
        return out

    def _value(self, v: Value) -> np.ndarray:
        shape = v.shape()
        if shape.width > 64 or (shape.width == 64 and shape.signed):
            raise NotImplementedError(f"{shape} is wider than this evaluator handles")
        if isinstance(v, Const):
            return np.asarray(v.value, dtype=np.int64)
        if isinstance(v, Signal):
            return self.signal(v)
        if isinstance(v, Slice):
            inner = self.value(v.value)
            return _bits(inner >> v.start, v.stop - v.start)
        if isinstance(v, Part):
            inner = self.value(v.value)
            off = self.value(v.offset) * v.stride
            return _bits(inner >> off, v.width)
        if isinstance(v, Concat):
            out = np.asarray(0, dtype=np.int64)
            pos = 0
            for part in v.parts:
                w = len(part)
                if w:
                    out = out | (_bits(self.value(part), w) << pos)
                pos += w
            return _norm(out, shape) if shape.signed else out
        if isinstance(v, SwitchValue):
            return self.switch_value(v)
        if isinstance(v, Operator):
            return self.operator(v)
        raise NotImplementedError(f"cannot evaluate {type(v).__name__}: {v!r}")

    def switch_value(self, v: SwitchValue) -> np.ndarray:
        tw = len(v.test)
        test = self.value(v.test)
        shape = v.shape()
        cases = v.cases
        table_ok = tw <= 16 and all(
            isinstance(val, Const) and (pats is None or all("-" not in p for p in pats)) for pats, val in cases
        )
        if table_ok:  # a ROM: one gather instead of a mask per case
            table = np.zeros(1 << tw, dtype=np.int64)
            done = np.zeros(1 << tw, dtype=bool)
            for pats, val in cases:
                sel = ~done if pats is None else np.isin(np.arange(1 << tw), [int(p, 2) for p in pats]) & ~done
                table[sel] = val.value
                done |= sel
            return _norm(table[_bits(test, tw)], shape)
        if len(cases) == 2 and cases[0][0] == ("0",) and cases[1][0] is None:  # Mux
            return np.where(test != 0, self.value(cases[1][1]), self.value(cases[0][1]))
        out = np.asarray(0, dtype=np.int64)
        left = np.asarray(True)
        for pats, val in cases:
            sel = left if pats is None else left & np.any([_match(test, tw, p) for p in pats], axis=0)
            if sel.any():
                out = np.where(sel, self.value(val), out)
            left = left & ~sel
        return out  # every case value is exact and fits the unified shape

    def operator(self, v: Operator) -> np.ndarray:
        op, ops = v.operator, v.operands
        shape = v.shape()
        a = self.value(ops[0])
        if len(ops) == 1:
            w = len(ops[0])
            if op == "+":
                r = a
            elif op == "-":
                r = -a
            elif op == "~":
                r = ~a
            elif op in ("b", "r|"):
                r = (a != 0).astype(np.int64)
            elif op == "r&":
                r = (_bits(a, w) == (1 << w) - 1).astype(np.int64)
            elif op == "r^":
                r = np.zeros(self.n, dtype=np.int64)
                for i in range(w):
                    r ^= (a >> i) & 1
            elif op in ("u", "s"):
                return _norm(a, shape) if ops[0].shape().signed != shape.signed else a
            else:
                raise NotImplementedError(f"operator {op!r}")
            return _norm(r, shape) if op in ("~",) and not shape.signed else r
        b = self.value(ops[1])
        if op == "*" and len(ops[0]) + len(ops[1]) > _MAX_BITS:
            raise NotImplementedError(f"product of {len(ops[0])} x {len(ops[1])} bits overflows int64")
        if op == "+":
            r = a + b
        elif op == "-":
            r = a - b
        elif op == "*":
            r = a * b
        elif op == "&":
            r = a & b
        elif op == "|":
            r = a | b
        elif op == "^":
            r = a ^ b
        elif op == "<<":
            if shape.width > _MAX_BITS:
                raise NotImplementedError(f"variable shift result of {shape.width} bits")
            r = a << b
        elif op == ">>":
            r = a >> np.minimum(b, 63)
        elif op in ("==", "!=", "<", "<=", ">", ">="):
            fn = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
                  ">": np.greater, ">=": np.greater_equal}[op]
            r = fn(a, b).astype(np.int64)
        else:
            raise NotImplementedError(f"operator {op!r}")
        return _norm(r, shape)

    # ---- statements --------------------------------------------------------------------

    def execute(self, stmt: Any, sig: Signal, cur: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Apply ``stmt``'s effect on ``sig`` (current value ``cur``) where ``mask`` holds."""
        if isinstance(stmt, Assign):
            return self.assign(stmt, sig, cur, mask)
        if isinstance(stmt, Switch):
            tw = len(stmt.test)
            test = self.value(stmt.test)
            left = np.asarray(True) if mask is None else mask
            for pats, stmts, _loc in stmt.cases:
                sel = left if pats is None else left & np.any([_match(test, tw, p) for p in pats], axis=0)
                if sel.any():
                    sub = None if sel.all() else sel
                    for s in stmts:
                        if any(x is sig for x in s._lhs_signals()):
                            cur = self.execute(s, sig, cur, sub)
                left = left & ~sel
            return cur
        if isinstance(stmt, Sequence):
            for s in stmt:
                cur = self.execute(s, sig, cur, mask)
            return cur
        raise NotImplementedError(f"cannot execute {type(stmt).__name__}")

    def assign(self, stmt: Assign, sig: Signal, cur: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        lhs = stmt.lhs
        if isinstance(lhs, Signal):
            if lhs is not sig:
                return cur
            new = self.value(stmt.rhs)
            if not _fits(Value.cast(stmt.rhs).shape(), sig.shape()):
                new = _norm(new, sig.shape())
        elif isinstance(lhs, Slice) and isinstance(lhs.value, Signal):
            if lhs.value is not sig:
                return cur
            w = lhs.stop - lhs.start
            field = ((1 << w) - 1) << lhs.start
            bits = _bits(cur, len(sig)) & ~field
            new = _norm(bits | (_bits(self.value(stmt.rhs), w) << lhs.start), sig.shape())
        else:
            raise NotImplementedError(f"assignment to {lhs!r}")
        return new if mask is None else np.where(mask, new, cur)


def evaluate(design: Any, inputs: Iterable[tuple[Signal, Any]], outputs: Sequence[Any], *,
             batch: int = 1 << 18) -> list[np.ndarray]:
    """Outputs of a feed-forward pipelined ``design`` for vectors of ``inputs`` (registers as wires).

    ``inputs`` pairs input port signals (``component.theta``, ...) with 1-d arrays (one
    element per vector) or scalars (held for every vector); hold the pipeline enable at 1.
    Returns one int64 array per output value. Vectors are evaluated ``batch`` at a time.
    """
    pairs = [(sig, np.asarray(a)) for sig, a in inputs]
    n = max((a.size for _, a in pairs if a.ndim), default=1)
    ev = _Evaluator(design)
    outs = [np.empty(n, dtype=np.int64) for _ in outputs]
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        ev.start([(sig, a[lo:hi] if a.ndim else a) for sig, a in pairs], hi - lo)
        for buf, o in zip(outs, outputs, strict=True):
            buf[lo:hi] = ev.value(o)
    return outs
