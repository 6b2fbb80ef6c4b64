"""cocotb test module run inside the simulator (Icarus or Verilator) by ``hw.verify.runner``.

The whole configuration arrives as JSON in ``$LPSGLD_COSIM`` (:class:`CosimCase`); the
stimulus and the expected words are regenerated here from it (``plan.make_plan``), so a
failure is reproduced from the JSON alone. Writes ``summary.json`` (counts, cycles, times)
and, on a mismatch, ``failure.txt`` into the run directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import cocotb
import numpy as np

from hw.verify.case import ENV_VAR, CosimCase
from hw.verify.plan import Segment, describe_registers, first_mismatch, make_plan
from hw.verify.tb import StreamResult, UpdateTopTB


def _check(seg: Segment, res: StreamResult, layout, case: CosimCase) -> str | None:
    keep, state, weight = layout.unpack_source(res.outputs)
    bad = first_mismatch(seg, keep, state, weight)
    if bad is not None:
        beat, msg = bad
        return f"{seg.label}: output beat at cycle {res.out_cycles[beat]} (input at cycle {res.in_cycles[beat]}): {msg}"
    if res.idle_error:
        return f"{seg.label}: {res.idle_error}; registers {describe_registers(seg.regs)}"
    if case.p_gap == 0 and case.p_stall == 0 and res.outputs:
        # never stalled: one beat per clock in and out, each after exactly the manifest's latency
        lat = case.extra.get("latency")
        i, o = res.in_cycles, res.out_cycles
        if i != list(range(i[0], i[0] + len(i))) or o != list(range(o[0], o[0] + len(o))):
            return f"{seg.label}: not one beat per clock without stalls: in {res.in_cycles}, out {res.out_cycles}"
        if lat is not None and res.out_cycles[0] - res.in_cycles[0] != lat:
            return (f"{seg.label}: latency {res.out_cycles[0] - res.in_cycles[0]} cycles, manifest says {lat}")
    return None


@cocotb.test()
async def updatetop(dut):
    case = CosimCase.from_json(os.environ[ENV_VAR])
    try:
        await _run(dut, case)
    except AssertionError as e:  # testbench checks (hangs, idle, reset) and word mismatches alike
        text = f"{e}\ncase: {case.to_json()}"
        pathlib.Path("failure.txt").write_text(text + "\n")
        raise AssertionError(text) from None


async def _run(dut, case: CosimCase) -> None:
    t0 = time.perf_counter()
    plan = make_plan(case)
    t_plan = time.perf_counter() - t0
    tb = UpdateTopTB(dut, plan.layout, np.random.default_rng([case.stream_seed, 0x6A9]), case.p_gap, case.p_stall)
    await tb.start()
    t1 = time.perf_counter()
    verified = beats = 0
    latency = None
    stream_cycles = 0
    for seg in plan.segments:
        try:
            if seg.reset_before:
                await tb.reset(offer=seg.sink_words[0] if seg.offer_in_reset else None)
            await tb.write(seg.writes)
            res = await tb.stream(seg.sink_words, seg.reset_after, seg.write_on_transfer)
        except AssertionError as e:
            raise AssertionError(f"{seg.label}: {e}; registers {describe_registers(seg.regs)}") from None
        stream_cycles += res.cycles
        if seg.reset_after is not None:
            await tb.reset()
        msg = _check(seg, res, plan.layout, case)
        if msg is not None:
            raise AssertionError(msg)
        n = len(res.outputs)
        beats += n
        verified += int(seg.keep[:n].sum())
        if n:
            lat = min(o - i for o, i in zip(res.out_cycles, res.in_cycles, strict=False))
            latency = lat if latency is None else min(latency, lat)
    wall = time.perf_counter() - t1
    summary = {
        "design": case.design.name, "elements": verified, "beats": beats, "cycles": tb.cycle,
        "stream_cycles": stream_cycles, "min_latency": latency, "sim_wall_s": wall, "plan_s": t_plan,
        "segments": len(plan.segments),
    }
    pathlib.Path(case.summary_file or "summary.json").write_text(json.dumps(summary) + "\n")
    dut._log.info("verified %d elements in %d beats, %d cycles, %.2f s", verified, beats, tb.cycle, wall)
