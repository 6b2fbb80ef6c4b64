"""Re-run one co-simulation case from its JSON (printed with every failure, saved as case.json).

    .venv/bin/python -m hw.verify.rerun sim_build/icarus/w8-vc_l4/runs/seed123/case.json --sim icarus
    .venv/bin/python -m hw.verify.rerun CASE.json --sim verilator --waves    # dump.vcd / *.fst in the run dir
    .venv/bin/python -m hw.verify.rerun CASE.json --sources my_top.v other.v  # anyone's RTL (lpsgld verify)

Without ``--sources`` the design is exported from its configuration (``hw.flows.export``);
with it, those files are built (top: the case's module), as ``lpsgld verify`` did.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

from .case import CosimCase
from .runner import SIM_BUILD, SIMULATORS, Build, build, build_sources, missing_tool, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", help="path of a case JSON file, or the JSON text itself")
    ap.add_argument("--sim", choices=SIMULATORS, default="icarus")
    ap.add_argument("--waves", action="store_true")
    ap.add_argument("--sources", nargs="+", default=None, help="RTL files to build instead of exporting the design")
    args = ap.parse_args(argv)
    text = args.case if args.case.lstrip().startswith("{") else Path(args.case).read_text()
    case = CosimCase.from_json(text)
    reason = missing_tool(args.sim)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if args.sources:
        paths = [Path(p) for p in args.sources]
        tag = hashlib.sha1("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:8]
        build_dir = SIM_BUILD / "rerun" / args.sim / f"{case.design.module_name}-{tag}"
        build_sources(paths, case.design.module_name, args.sim, build_dir, waves=args.waves)
        b = Build(args.sim, case.design, build_dir, case.design.module_name, {}, args.waves)
    else:
        b = build(case.design, args.sim, waves=args.waves)
    case = replace(case, waves=args.waves)
    try:
        summary = run(b, case, f"rerun-{case.stream_seed}")
    except AssertionError as e:
        print(e)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
