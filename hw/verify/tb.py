"""cocotb testbench class for ``UpdateTop`` (ports of HW_CONTRACT).

One coroutine per stream drives the sink and the source ready and collects output beats, in
two phases per clock: after the rising edge it writes (a precomputed beat integer, valid,
ready), in ``ReadOnly`` it samples the settled handshake (sink ready may depend
combinationally on source ready) and the output. A transfer is counted when valid and ready
are both 1 in the ReadOnly phase before an edge. Random valid gaps and ready stalls come
from a seeded numpy generator. The per-clock Python work is a few handle reads and writes;
outputs are stored as raw integers and unpacked with numpy after the stream.

Also checked every cycle: ``idle`` equals "no beat inside the pipeline" (beats accepted minus
beats delivered is zero), and after a reset the pipeline is empty. Corner cases of the
contract: a beat offered while ``rst`` is high must not be taken (``sink__ready`` = 0 during
reset), and a control write can be placed on the edge that transfers a given beat.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from .beats import BeatLayout

STALL_TIMEOUT = 2000  # cycles without any transfer before the stream is declared hung


def _coins(rng: np.random.Generator, p: float) -> Iterator[bool]:
    """An endless stream of independent Bernoulli(p) draws."""
    if p <= 0:
        while True:
            yield False
    while True:
        yield from (rng.random(4096) < p).tolist()


@dataclass
class StreamResult:
    outputs: list[int] = field(default_factory=list)
    out_cycles: list[int] = field(default_factory=list)
    in_cycles: list[int] = field(default_factory=list)
    idle_error: str | None = None
    cycles: int = 0


class UpdateTopTB:
    """Drives one ``UpdateTop`` instance: clock, reset, control writes, beat streams."""

    def __init__(self, dut, layout: BeatLayout, rng: np.random.Generator, p_gap: float, p_stall: float,
                 period_ns: int = 10):
        self.dut = dut
        self.layout = layout
        self.period_ns = period_ns
        self.gap = _coins(rng, p_gap)
        self.stall = _coins(rng, p_stall)
        self.cycle = 0
        self._edge = RisingEdge(dut.clk)
        self._ro = ReadOnly()
        if len(dut.sink__payload) != layout.sink_width:
            raise ValueError(f"sink__payload has {len(dut.sink__payload)} bits, contract says {layout.sink_width}")
        if len(dut.source__payload) != layout.source_width:
            raise ValueError(
                f"source__payload has {len(dut.source__payload)} bits, contract says {layout.source_width}"
            )

    async def start(self) -> None:
        d = self.dut
        for h in (d.sink__valid, d.sink__payload, d.source__ready, d.ctl__we, d.ctl__addr, d.ctl__data):
            h.value = 0
        d.rst.value = 1
        Clock(d.clk, self.period_ns, unit="ns", impl="gpi").start()
        await self.reset()

    async def tick(self) -> None:
        await self._edge
        self.cycle += 1

    async def reset(self, cycles: int = 2, offer: int | None = None) -> None:
        """Synchronous reset with the handshakes idle (or, with ``offer``, that beat offered on
        the sink and the source ready during reset: ``sink__ready`` must stay 0, the beat is not
        taken); then the pipeline must be empty."""
        d = self.dut
        d.sink__valid.value = 0 if offer is None else 1
        if offer is not None:
            d.sink__payload.value = offer
        d.source__ready.value = 0 if offer is None else 1
        d.ctl__we.value = 0
        d.rst.value = 1
        for _ in range(cycles):
            if offer is not None:
                await self._ro
                if int(d.sink__ready.value) != 0:
                    raise AssertionError(
                        f"cycle {self.cycle}: sink__ready=1 while rst=1 with a beat offered (the contract: no "
                        "beat is taken during reset)")
            await self.tick()
        d.rst.value = 0
        d.sink__valid.value = 0
        d.source__ready.value = 0
        await self.tick()
        await self._ro
        if int(d.idle.value) != 1 or int(d.source__valid.value) != 0:
            raise AssertionError(
                f"cycle {self.cycle}: after reset idle={d.idle.value} source__valid={d.source__valid.value} "
                "(expected an empty pipeline)"
            )
        await self.tick()

    async def write(self, writes: list[tuple[int, int]]) -> None:
        """One control write per clock (only while idle, as the contract requires)."""
        if not writes:
            return
        d = self.dut
        for addr, data in writes:
            d.ctl__addr.value = addr
            d.ctl__data.value = data
            d.ctl__we.value = 1
            await self.tick()
        d.ctl__we.value = 0

    async def stream(self, words: list[int], reset_after: int | None = None,
                     write_on_transfer: dict[int, tuple[int, int]] | None = None) -> StreamResult:
        """Send ``words`` as input beats, collect one output beat per input beat.

        With ``reset_after`` the stream stops (sink valid and source ready low) as soon as that
        many input beats have been accepted, returning the outputs received so far. With
        ``write_on_transfer = {b: (addr, data)}`` that control write is driven in the cycle beat
        ``b`` is offered with the source ready (no stall: the beat must transfer on that edge).
        """
        d = self.dut
        sink_valid, sink_ready, sink_payload = d.sink__valid, d.sink__ready, d.sink__payload
        src_valid, src_ready, src_payload = d.source__valid, d.source__ready, d.source__payload
        idle = d.idle
        edge, ro = self._edge, self._ro
        gap, stall = self.gap, self.stall
        res = StreamResult()
        outputs, out_cycles, in_cycles = res.outputs, res.out_cycles, res.in_cycles
        n = len(words)
        stop = n if reset_after is None else reset_after
        sent = 0
        holding = False  # a beat is on the sink, waiting for ready
        driven_valid = 0
        driven_ready = 0
        quiet = 0
        start = self.cycle
        cycle = self.cycle
        wot = write_on_transfer or {}
        while len(outputs) < n:
            if sent >= stop and reset_after is not None:
                break
            if not holding and sent < stop and not next(gap):
                sink_payload.value = words[sent]
                holding = True
            if holding != driven_valid:
                sink_valid.value = driven_valid = int(holding)
            ready = 0 if next(stall) else 1
            wot_now = holding and sent in wot
            if wot_now:
                ready = 1
                d.ctl__addr.value, d.ctl__data.value = wot[sent]
                d.ctl__we.value = 1
            if ready != driven_ready:
                src_ready.value = driven_ready = ready
            await ro
            in_x = holding and sink_ready.value
            if wot_now and not in_x:
                self.cycle = cycle
                raise AssertionError(f"cycle {cycle}: beat {sent} offered with source__ready=1 but sink__ready=0")
            out_x = ready and src_valid.value
            if (sent == len(outputs)) != bool(idle.value) and res.idle_error is None:
                res.idle_error = (f"cycle {cycle}: idle={int(idle.value)} with {sent - len(outputs)} beats "
                                  "inside the pipeline")
            if out_x:
                outputs.append(src_payload.value.to_unsigned())
                out_cycles.append(cycle)
            await edge
            cycle += 1
            if wot_now:
                d.ctl__we.value = 0
            if in_x:
                in_cycles.append(cycle - 1)
                sent += 1
                holding = False
            if in_x or out_x:
                quiet = 0
            else:
                quiet += 1
                if quiet > STALL_TIMEOUT:
                    self.cycle = cycle
                    raise AssertionError(
                        f"cycle {cycle}: no transfer for {STALL_TIMEOUT} cycles ({sent} of {n} beats in, "
                        f"{len(outputs)} out)"
                    )
        sink_valid.value = 0
        src_ready.value = 0
        self.cycle = cycle
        if reset_after is None:
            # nothing may follow the last beat, and the pipeline must report idle
            await ro
            if int(src_valid.value) or not int(idle.value):
                res.idle_error = res.idle_error or (
                    f"cycle {cycle}: after the last output beat source__valid={src_valid.value} "
                    f"idle={idle.value} (expected 0 and 1)"
                )
            await self.tick()
        res.cycles = self.cycle - start
        return res
