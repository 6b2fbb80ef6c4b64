"""Re-run one co-simulation case from its JSON (printed with every failure, saved as case.json).

    .venv/bin/python -m hw.verify.rerun sim_build/icarus/w8-vc_l4/runs/seed123/case.json --sim icarus
    .venv/bin/python -m hw.verify.rerun CASE.json --sim verilator --waves    # dump.vcd / *.fst in the run dir
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from .case import CosimCase
from .runner import SIMULATORS, build, missing_tool, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", help="path of a case JSON file, or the JSON text itself")
    ap.add_argument("--sim", choices=SIMULATORS, default="icarus")
    ap.add_argument("--waves", action="store_true")
    args = ap.parse_args(argv)
    text = args.case if args.case.lstrip().startswith("{") else Path(args.case).read_text()
    case = CosimCase.from_json(text)
    reason = missing_tool(args.sim)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
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
