"""Co-simulation throughput: verified elements per second on each simulator.

    .venv/bin/python -m hw.verify.throughput                      # w8-vc, 8 lanes
    .venv/bin/python -m hw.verify.throughput --config w8-lpf --lanes 4 --elements 400000 40000

One register load, then one tensor call streamed at full rate (no valid gaps, no ready
stalls), every output word compared with the numpy engine's. Verilator is built with its
default -Os here (the CI builds at -O0: compile time matters more there). "elements/s" counts verified
elements over the simulation's wall time (clock, drive, monitor, unpack and compare; the
engine's expected values are computed before and reported separately). The ratio column
is against the first simulator measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time

from .case import CosimCase, Design
from .runner import SIMULATORS, build, missing_tool, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="w8-vc")
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--sims", nargs="*", default=list(SIMULATORS))
    ap.add_argument("--O0", dest="optimize", action="store_false",
                    help="Verilator: use the CI's -O0 build instead of an -Os build")
    ap.add_argument("--elements", type=int, nargs="*", default=None,
                    help="elements per simulator, in --sims order (default 40000 Icarus, 400000 Verilator)")
    args = ap.parse_args(argv)
    default = {"icarus": 40_000, "verilator": 400_000}
    counts = args.elements or [default[s] for s in args.sims]
    design = Design.of(args.config, args.lanes)
    rows = []
    for sim, n in zip(args.sims, counts, strict=True):
        reason = missing_tool(sim)
        if reason:
            print(f"{sim}: skipped ({reason})")
            continue
        t0 = time.perf_counter()
        b = build(design, sim, optimize=args.optimize)
        t_build = time.perf_counter() - t0
        case = CosimCase(design, stream_seed=7, segments=1, p_gap=0.0, p_stall=0.0,
                         extra={"elements": n, "latency": b.manifest["latency"]})
        t0 = time.perf_counter()
        s = run(b, case, f"throughput-{n}")
        total = time.perf_counter() - t0
        rows.append((sim, s["elements"], s["cycles"], s["sim_wall_s"], s["plan_s"], total, t_build))
    print(f"{design.name}: one call, full rate, every word compared")
    print(f"{'simulator':<10} {'elements':>9} {'cycles':>8} {'sim s':>7} {'elements/s':>11} {'cycles/s':>9} "
          f"{'ratio':>6} {'expected s':>10} {'run s':>6} {'build s':>7}")
    base = None
    for sim, el, cyc, wall, plan, total, tb in rows:
        rate = el / wall
        base = base or rate
        print(f"{sim:<10} {el:>9} {cyc:>8} {wall:>7.2f} {rate:>11.0f} {cyc / wall:>9.0f} {rate / base:>6.2f} "
              f"{plan:>10.2f} {total:>6.1f} {tb:>7.1f}")
    return 0 if rows else 2


if __name__ == "__main__":
    sys.exit(main())
