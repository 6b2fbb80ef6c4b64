"""Drive :class:`hw.top.UpdateTop` in ``amaranth.sim`` the way a host does (tests, examples).

A host loads the registers (:func:`hw.control.register_writes`) while the top is idle,
streams an L-lane tensor call as ``ceil(M / L)`` beats (all keep bits set except in a
partial last beat) and collects one output beat per input beat. ``sink_valid`` and
``source_ready`` patterns insert input gaps and output stalls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from amaranth.sim import Simulator

from emulator.spec.datapath import DatapathConfig, StepRegisters, UpdateResult

from .. import control
from ..top import UpdateTop

Pattern = Callable[[int], bool]


@dataclass
class Call:
    """One tensor call: state words, gradient words (flat int arrays) and its registers."""

    theta: np.ndarray
    grad: np.ndarray
    regs: StepRegisters


@dataclass
class Trace:
    """What the simulation saw: results per call, cycles, and every output beat's keep."""

    results: list[UpdateResult] = field(default_factory=list)
    cycles: int = 0
    keeps: list[int] = field(default_factory=list)
    idle_while_busy: bool = False


def beats(cfg: DatapathConfig, theta: np.ndarray, grad: np.ndarray) -> list[dict[str, object]]:
    """Sink payloads of one call (element i -> lane i mod L, beat i div L)."""
    n, lanes = len(theta), cfg.lanes
    out = []
    for lo in range(0, n, lanes):
        k = min(lanes, n - lo)
        out.append({
            "keep": (1 << k) - 1,
            "theta": [int(theta[lo + i]) if i < k else 0 for i in range(lanes)],
            "grad": [int(grad[lo + i]) if i < k else 0 for i in range(lanes)],
        })
    return out


def simulate(cfg: DatapathConfig, calls: Sequence[Call], *, reset_seed: int = 0, seed: int | None = None,
             sink_valid: Pattern | None = None, source_ready: Pattern | None = None,
             top: UpdateTop | None = None) -> Trace:
    """Run ``calls`` through a fresh ``UpdateTop(cfg, reset_seed)``; ``seed`` loads generators first."""
    top = top if top is not None else UpdateTop(cfg, reset_seed=reset_seed)
    trace = Trace()
    lanes = cfg.lanes

    async def write(ctx: Any, writes: list[tuple[int, int]]) -> None:
        for addr, data in writes:
            ctx.set(top.ctl.addr, addr)
            ctx.set(top.ctl.data, data)
            ctx.set(top.ctl.we, 1)
            await ctx.tick()
        ctx.set(top.ctl.we, 0)

    async def bench(ctx: Any) -> None:
        cycle = 0
        if seed is not None:
            await write(ctx, control.seed_writes(cfg, seed))
        for call in calls:
            await write(ctx, control.register_writes(cfg, call.regs))
            payloads = beats(cfg, call.theta, call.grad)
            sent = recv = 0
            state: list[int] = []
            weight: list[int] = []
            while recv < len(payloads):
                offer = sent < len(payloads) and (sink_valid is None or sink_valid(cycle))
                ctx.set(top.sink.valid, int(offer))
                if offer:
                    ctx.set(top.sink.payload, payloads[sent])
                ctx.set(top.source.ready, int(source_ready is None or source_ready(cycle)))
                _, _, sv, sr, ov, orr, pay, idle = await ctx.tick().sample(
                    top.sink.valid, top.sink.ready, top.source.valid, top.source.ready,
                    top.source.payload, top.idle)
                if idle and sent > recv:
                    trace.idle_while_busy = True
                if sv and sr:
                    sent += 1
                if ov and orr:
                    keep = int(pay.keep)
                    trace.keeps.append(keep)
                    for i in range(lanes):
                        if (keep >> i) & 1:
                            state.append(int(pay.state[i]))
                            weight.append(int(pay.weight[i]))
                    recv += 1
                cycle += 1
            ctx.set(top.sink.valid, 0)
            trace.results.append(UpdateResult(np.array(state, dtype=np.int64), np.array(weight, dtype=np.int64)))
        trace.cycles = cycle

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return trace
