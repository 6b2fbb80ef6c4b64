"""Mutation check of the co-verification: inject single faults into the exported Verilog and
require ``verify`` (what ``lpsgld verify`` runs) to fail on each.

    .venv/bin/python -m hw.verify.mutate                 # all mutants, Icarus, 2 workers
    .venv/bin/python -m hw.verify.mutate --list
    .venv/bin/python -m hw.verify.mutate --only M07 M20 --sim verilator
    .venv/bin/python -m hw.verify.mutate --only M38   # the mutant stays in sim_build/mutants/M38/<module>.v/.json

A mutant is one precise textual edit of the generated Verilog, inside one module (``scope``):
a regular expression that must match exactly ``count`` times there (else the mutant is
reported as stale: the generator changed and the table needs updating), replaced by
``repl``. ``$#`` in a pattern stands for an Amaranth/Yosys temporary (``\\$123 ``). Multi-lane
designs are mutated in one lane only, so the check also shows every lane is compared. Each
mutant must build; it is killed when the run reports a mismatch (or a hang, an idle or reset
error). Each mutant is written with the design's manifest into ``sim_build/mutants/<id>/`` and
checked by :func:`hw.verify.verify.verify` exactly as ``lpsgld verify <id>/<module>.v --manifest
<id>/<module>.json`` would (same plan, same stimulus seed per design); the unmutated design must
pass the same command first.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .case import Design
from .runner import SIM_BUILD, SIMULATORS, export_design, missing_tool, tool_env
from .verify import verify

ELEMENTS = 600  # per verify run: about the CI run of a 4-lane design
TMP = r"\\\$\d+ "  # an Amaranth temporary: backslash, dollar, digits, one space


@dataclass(frozen=True)
class Mutant:
    id: str
    design: Design
    scope: str  # module name suffix after the top name ('' = the top module)
    pattern: str
    repl: str | Callable[[re.Match[str]], str]
    what: str
    count: int = 1
    elements: int | None = None  # a longer verify run for faults that flip about one output in 2^7


VC4 = Design.of("w8-vc", 4)
NAIVE4 = Design.of("w8-naive", 4)
LPF1 = Design.of("w8-lpf", 1)
# Faults in the low-order bits of an exact sum, in a VC threshold or a table entry flip an
# output with probability (error / 2^s) or (error / 2^(2p+1)) per element: ~2^-16 at w8, so
# a short run cannot see them there. The w4 designs (s = 6, p = 3) expose the same faults.
W4VC4 = Design.of("w4-vc", 4)
W4NAIVE4 = Design.of("w4-naive", 4)
W4LPF1 = Design.of("w4-lpf", 1)


def _flip_reset_lsb(m: re.Match[str]) -> str:
    return m.group(1) + format(int(m.group(2), 16) ^ 1, "x")


MUTANTS = [
    # generator (lane 1 of 4)
    Mutant("M01", VC4, "rng_1_0", r"\{ s0\[8:0\], s0\[63:9\] \}", "{ s0[9:0], s0[63:10] }",
           "xoroshiro rotl(s0, 55) -> rotl(s0, 54)"),
    Mutant("M02", VC4, "rng_1_0", r"\[49:0\], 14'h0000 \}", "[50:0], 13'h0000 }", "xoroshiro shift sx << 14 -> << 13"),
    Mutant("M03", VC4, "rng_1_0", rf"\{{ ({TMP})\[27:0\], ({TMP})\[63:28\] \}}", r"{ \1[26:0], \2[63:27] }",
           "xoroshiro rotl(sx, 36) -> rotl(sx, 37)"),
    Mutant("M04", VC4, "rng_1_0", r"\[62:0\], (\\\$\d+ )\[63\] \} \| \{", r"[62:0], \1[63] } & {",
           "aox scrambler: rotl(sa,1) OR rotl(sa,2) -> AND"),
    Mutant("M05", VC4, "rng_1_0", rf"(assign out = {TMP}) \^ {TMP};", r"\1;",
           "aox output stage dropped (linear output)"),
    Mutant("M06", VC4, "rng_1_0", rf"(= s0;\n(?:.*\n)*?\s+if \(rst\) begin\n\s+{TMP} = 64'h[0-9a-f]{{15}})([0-9a-f])",
           _flip_reset_lsb, "reset state of s0 (lane 1): bit 0 flipped"),
    # top: keep, handshake, control
    Mutant("M07", VC4, "", r"(= live_1\[)1(\] & )", r"\g<1>2\2",
           "lane 1's generator steps on lane 2's keep bit"),
    Mutant("M08", VC4, "", r"(ctl__addr == 9'h10)3;", r"\g<1>2;", "seed load: s1 of stream 1 decoded at s0's address",
           count=2),
    Mutant("M09", VC4, "", rf"(assign {TMP} = \| \{{ )source__valid, ", r"\1", "idle ignores the output stage"),
    Mutant("M10", VC4, "", rf"assign sink__ready = advance & ({TMP});", r"assign sink__ready = \1;",
           "backpressure ignored (sink ready while the pipeline stalls)"),
    Mutant("M11", VC4, "", rf"({TMP} = )sink__payload\[3:0\];", r"\1{ 1'h1, sink__payload[2:0] };",
           "keep echo: bit 3 stuck at 1"),
    Mutant("M12", VC4, "", rf"(if \(write_vc_var\) begin\n\s+{TMP} = )wdata\[14:0\];", r"\1wdata[15:1];",
           "vc_var registers (every lane's copy) take data bits [15:1]", count=4),
    Mutant("M13", VC4, "", rf"(= vc_noise;\n(?:.*\n)*?\s+if \(rst\) begin\n\s+{TMP} = )1'h0;", r"\g<1>1'h1;",
           "vc_noise resets to 1"),
    Mutant("M14", VC4, "", rf"16'h0000:(\n\s+{TMP} = 1'h1;)", r"16'h0005:\1",
           "step register decoded at address 0x0005"),
    # exact sum (lane 2 of 4)
    Mutant("M15", VC4, "lane_2.sum", r"(= )~ (\{ sum_x_l2_1\[26\])", r"\1\2",
           "adder tree: the root's subtraction loses its inversion (x + y + 1, not x - y; all four "
           "copies in the carry-select halves)", count=4),
    Mutant("M16", W4VC4, "lane_2.sum", r"\{ sum_step_pp1, 4'h0 \}", "{ sum_step_pp1, 3'h0 }",
           "step*grad partial product 1 shifted by 3 instead of 4"),
    Mutant("M17", VC4, "lane_2.sum", r"\$signed\(\{ 1'h0, step \}\) \* \$signed\(grad\[7:6\]\)", "step * grad[7:6]",
           "step*grad top digit taken as unsigned"),
    Mutant("M18", VC4, "lane_2.sum", r"\{ sum_theta\[7\], sum_theta, 8'h00 \}",
           "{ sum_theta[7], sum_theta[7], sum_theta, 7'h00 }",
           "theta aligned to X - 1 fractional bits (both copies in the carry-select high half)", count=2),
    Mutant("M19", W4VC4, "lane_2.sum", r"\$signed\(\{ 1'h0, sum_decay_pp0 \}\)",
           "$signed({ 1'h0, sum_decay_pp0, 1'h0 })",
           "decay*theta partial product 0 shifted left by 1"),
    # VC quantizer (lane 3 of 4)
    Mutant("M20", W4VC4, "lane_3.narrow", r"\$signed\(7'h24\)", "$signed(7'h23)",
           "branch A: RN tie constant (ties toward -inf)"),
    Mutant("M21", W4VC4, "lane_3.narrow", r"(= vc_u_4 )< (vc_up;)", r"\1<= \2", "compare u_vc < up -> <="),
    Mutant("M22", VC4, "lane_3.narrow", r"(\$signed\(vc_q_4\)) - (\$signed\(2'h1\))", r"\1 + \2",
           "q - 1 computed as q + 1"),
    Mutant("M23", VC4, "lane_3.narrow", r"= vc_noise \? vc_q_a : vc_q_b;", "= vc_noise ? vc_q_b : vc_q_a;",
           "branch A/B select of q swapped"),
    Mutant("M24", W4VC4, "lane_3.narrow", rf"(assign vc_w = ){TMP}\[6\] \? 6'h00 : ({TMP}\[5:0\];)", r"\1\2",
           "branch B: max(vc_var - vs, 0) clamp dropped"),
    Mutant("M25", W4VC4, "lane_3.narrow", r"\{ vc_f_h_d1, 6'h20 \}", "{ vc_f_h_d1, 6'h00 }",
           "branch B: f(1-f) rounding constant dropped (truncation)", elements=20000),
    Mutant("M26", VC4, "lane_3.narrow", r"\? 8'h80 : 8'h7f;", "? 8'h80 : 8'h7e;",
           "weight saturation max 127 -> 126 (q + 1, q - 1 and q)", count=3),
    Mutant("M27", W4VC4, "lane_3.narrow", r"= 3'h4 - vc_l_a;", "= 3'h3 - vc_l_a;", "branch A: 2^(p-1) - l off by one"),
    Mutant("M28", VC4, "lane_3.narrow", r"\{ vc_w, 1'h0 \}", "{ 1'h0, vc_w }", "branch B: down threshold 2w -> w"),
    # Gaussian and random fields (lane 1 of 4, naive)
    Mutant("M29", W4NAIVE4, "lane_1.gauss", rf"(3'h4:\n\s+{TMP} = )5'h01;", r"\g<1>5'h03;",
           "Gaussian table entry T[4] = 1 -> 3 (both term ROMs)", count=2),
    Mutant("M30", NAIVE4, "lane_1.gauss", r"casez \(bits\[15:8\]\)", "casez (bits[16:9])",
           "Gaussian term 1 index bits [16:9]"),
    Mutant("M31", NAIVE4, "lane_1", r"= words\[23:0\];", "= words[24:1];", "sr field read one bit too high"),
    Mutant("M32", W4NAIVE4, "lane_1", r"\.bits\(words\[11:6\]\)", ".bits(words[11:6] ^ 6'h01)",
           "gauss field bit 0 inverted (the field goes straight from the generator word to the table look-ups)"),
    # SR rounding and the lp_f weight (one lane)
    Mutant("M33", W4LPF1, "lane_0.narrow", r"4'h4\)", "4'h3)", "weight RN tie constant (all four copies)", count=4),
    Mutant("M34", LPF1, "lane_0.narrow", rf"(assign {TMP} = ){TMP} \? ({TMP}\[20:13\]) : {TMP};", r"\1\2;",
           "weight saturation dropped (wraps)"),
    Mutant("M35", LPF1, "lane_0.narrow", rf"({TMP} = rnd_state_d;\n\s+if \()en(\) begin)", r"\g<1>1'h1\2",
           "state delay register ignores the pipeline enable"),
    Mutant("M36", LPF1, "lane_0.sum", r"= 1'h0 \+ sum_u_sr\[20:0\];", "= 1'h0 - sum_u_sr[20:0];",
           "SR: x + u computed as x - u in the low half of the uniform's (carry-select) adder", count=2),
    Mutant("M37", LPF1, "lane_0.narrow", r"\? 24'h800000 : 24'h7fffff;", "? 24'h800000 : 24'h7ffffe;",
           "accumulator saturation max off by one"),
    # the contract's corner cases (docs/hardware.md "Reset and seeds")
    Mutant("M38", VC4, "", rf"assign sink__ready = advance & {TMP};", "assign sink__ready = advance;",
           "sink ready not gated by reset (a beat offered during reset is taken)"),
    Mutant("M39", VC4, "", rf"(assign {TMP} = )~ seed_hold_1;", r"\g<1>1'h1;",
           "lane 1's generator steps when a seed word of it is written on a transfer edge (no hold)"),
]


class StaleMutant(Exception):
    pass


def _scope_span(text: str, top: str, scope: str) -> tuple[int, int]:
    name = top if not scope else f"\\{top}.{scope}"
    m = re.search(rf"^module {re.escape(name)} ?\(", text, re.M)
    if m is None:
        raise StaleMutant(f"module {name} not found")
    end = text.index("\nendmodule", m.end())
    return m.start(), end


def apply(mutant: Mutant, text: str, top: str) -> str:
    """The mutated Verilog; raises StaleMutant unless the pattern matches exactly ``count`` times."""
    lo, hi = _scope_span(text, top, mutant.scope)
    body = text[lo:hi]
    pattern = re.compile(mutant.pattern)
    hits = len(pattern.findall(body))
    if hits != mutant.count:
        where = mutant.scope or top
        raise StaleMutant(f"{mutant.id}: pattern matches {hits} times in {where}, expected {mutant.count}")
    new = pattern.sub(mutant.repl, body)
    if new == body:
        raise StaleMutant(f"{mutant.id}: the edit changes nothing")
    return text[:lo] + new + text[hi:]


def _write(d: Path, module: str, text: str, manifest: dict[str, Any]) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    src, man = d / f"{module}.v", d / f"{module}.json"
    src.write_text(text)
    man.write_text(json.dumps(manifest, indent=1) + "\n")
    return src, man


def stimulus_seed(design: Design) -> int:
    return zlib.crc32(f"{design.name}/mutate".encode())


def check(mutant: Mutant, sim: str, cache: dict[str, tuple[str, dict[str, Any]]], root: Path,
          elements: int = ELEMENTS) -> tuple[str, str, float]:
    """(verdict, detail, seconds): verdict is killed, SURVIVED, stale or build-error."""
    t0 = time.perf_counter()
    text, manifest = cache[mutant.design.name]
    module = mutant.design.module_name
    try:
        mutated = apply(mutant, text, module)
    except StaleMutant as e:
        return "stale", str(e), time.perf_counter() - t0
    src, man = _write(root / mutant.id, module, mutated, manifest)
    try:
        res = verify([src], man, sim=sim, elements=max(elements, mutant.elements or 0),
                     seed=stimulus_seed(mutant.design),
                     build_root=root / mutant.id / "build")
    except RuntimeError as e:
        return "build-error", f"{e}", time.perf_counter() - t0
    if not res.ok:
        first = res.report.splitlines()[0]
        return "killed", first[:300], time.perf_counter() - t0
    return "SURVIVED", res.report, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sim", choices=SIMULATORS, default="icarus")
    ap.add_argument("--only", nargs="*", help="mutant ids")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--elements", type=int, default=ELEMENTS, help=f"elements per verify run (default {ELEMENTS})")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="only export and apply the edits (finds stale mutants)")
    ap.add_argument("--markdown", action="store_true", help="print the kill table as markdown")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id}  {m.design.name:<12} {m.scope or 'top':<14} {m.what}")
        return 0
    reason = missing_tool(args.sim)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    root = SIM_BUILD / "mutants"
    shutil.rmtree(root, ignore_errors=True)
    if args.dry_run:
        stale = 0
        for d in {m.design.name: m.design for m in chosen}.values():
            (root / "base").mkdir(parents=True, exist_ok=True)
            text = export_design(d, root / "base")[0].read_text()
            for m in (m for m in chosen if m.design == d):
                try:
                    apply(m, text, d.module_name)
                except StaleMutant as e:
                    stale += 1
                    print(f"stale: {e}")
        print(f"{len(chosen) - stale} of {len(chosen)} mutants apply")
        return 1 if stale else 0
    cache: dict[str, tuple[str, dict[str, Any]]] = {}
    t0 = time.perf_counter()
    with tool_env():
        for d in {m.design.name: m.design for m in chosen}.values():
            out = root / "base" / d.name
            out.mkdir(parents=True, exist_ok=True)
            path, manifest = export_design(d, out)
            cache[d.name] = (path.read_text(), manifest)
            # the unmutated design must pass the same command, or a "kill" means nothing
            # (as many elements as the longest mutant run on this design: M25 runs 20000)
            elements = max([args.elements, *(m.elements or 0 for m in chosen if m.design == d)])
            base = verify([path], out / f"{d.module_name}.json", sim=args.sim, elements=elements,
                          seed=stimulus_seed(d), build_root=out / "build")
            if not base.ok:
                print(f"baseline {d.name} fails: {base.report}", file=sys.stderr)
                return 1
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda m: (m, *check(m, args.sim, cache, root, args.elements)), chosen))
    killed = sum(v == "killed" for _, v, _, _ in results)
    if args.markdown:
        print("| mutant | design | module | fault | verdict | first report |")
        print("|---|---|---|---|---|---|")
        for m, v, detail, _ in results:
            short = detail.split(": ", 1)[-1][:110].replace("|", "/")
            what = m.what.replace("|", "/")
            print(f"| {m.id} | {m.design.name} | {m.scope or 'top'} | {what} | {v} | {short} |")
    else:
        for m, v, detail, dt in results:
            print(f"{m.id} {v:<11} {dt:5.1f}s {m.design.name:<12} {m.what}\n      {detail[:200]}")
    print(f"\n{killed} of {len(results)} mutants killed ({100.0 * killed / max(len(results), 1):.0f} %) "
          f"on {args.sim} in {time.perf_counter() - t0:.0f} s")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
