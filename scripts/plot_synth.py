"""Fmax and device fill against the number of lanes, from `lpsgld synth --json` reports.

    python scripts/plot_synth.py RUN.json [RUN.json ...] --summary docs/measurements/synthesis_issue16.json
    python scripts/plot_synth.py docs/measurements/synthesis_issue16.json -o docs/img/synthesis_lanes.png

The first form reduces full reports (each a few hundred kB with the critical paths) to one compact
record per (config, lanes, device, target): area, placed cells, Fmax per seed. The second plots
such a summary (or full reports): Fmax per seed against lanes, one line per config and device, with
the 100 / 120 / 150 MHz lines of issue 16; and the share of logic cells used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CELLS = ("ICESTORM_LC", "TRELLIS_COMB")  # placed logic cells: iCE40, ECP5


def summarize(report: dict) -> list[dict]:
    """One record per result of a full ``lpsgld synth --json`` report (a summary passes through)."""
    if "records" in report:
        return list(report["records"])
    out = []
    for r in report["results"]:
        cells = None
        for p in r["pnr"]:
            for name in CELLS:
                if name in p.get("utilization", {}):
                    cells = p["utilization"][name]
        out.append({
            "config": r["config"], "lanes": r["lanes"], "device": report["device"], "target": report["target"],
            "pipeline": report["pipeline_depth"], "source": report["source"], "area": r["area"], "cells": cells,
            "fmax_mhz": {str(p["seed"]): p["fmax_mhz"] for p in r["pnr"]},
        })
    return out


def load(paths: list[str]) -> list[dict]:
    records: dict[tuple, dict] = {}
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"plot_synth: cannot read {path}: {e}") from None
        try:
            recs = summarize(report)
        except (KeyError, TypeError, AttributeError) as e:
            raise SystemExit(f"plot_synth: {path} is neither an lpsgld synth --json report nor a summary "
                             f"(missing {e})") from None
        for rec in recs:  # a later file replaces an earlier one for the same design
            records[(rec["config"], rec["lanes"], rec["device"], rec["target"], rec["pipeline"])] = rec
    return sorted(records.values(), key=lambda r: (r["device"], r["target"], r["config"], r["lanes"]))


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, (ax_f, ax_c) = plt.subplots(1, 2, figsize=(11, 4.4))
    devices = sorted({r["device"] for r in records})
    colour = {d: f"C{i}" for i, d in enumerate(devices)}  # colour: device; line style: config
    style = {"w8-vc": "-", "w8-naive": "--", "w8-lpf": ":"}
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        if r["fmax_mhz"]:
            groups.setdefault((r["config"], r["device"], r["target"]), []).append(r)
    for (config, device, target), rs in sorted(groups.items()):
        kw = {"color": colour[device], "ls": style.get(config, "-.")}
        lanes = [r["lanes"] for r in rs]
        seeds = [[f for f in r["fmax_mhz"].values() if f] for r in rs]
        ax_f.plot(lanes, [min(s) for s in seeds], marker="o", **kw)
        for n, s in zip(lanes, seeds, strict=True):
            ax_f.scatter([n] * len(s), s, color=colour[device], s=10, alpha=0.6)
        fill = [(r["lanes"], 100 * r["cells"][0] / r["cells"][1]) for r in rs if r["cells"]]
        if fill:
            ax_c.plot(*zip(*fill, strict=True), marker="o", label=f"{config}, {device} ({target})", **kw)
    for mhz in (100, 120, 150):
        ax_f.axhline(mhz, color="grey", lw=0.8, ls="--")
    ax_f.set(xscale="log", xlabel="lanes", ylabel="Fmax, MHz (line: worst seed; dots: seeds)",
             title="Fmax against lanes (nextpnr seeds 1-3)")
    ax_c.axhline(100, color="grey", lw=0.8, ls="--")
    ax_c.set(xscale="log", xlabel="lanes", ylabel="placed logic cells, % of the device", title="Device fill")
    for ax in (ax_f, ax_c):
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks([1, 2, 4, 8], labels=["1", "2", "4", "8"])
    ax_c.legend(fontsize=6.5, loc="upper left", ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="lpsgld synth --json reports, or a summary written by --summary")
    ap.add_argument("--summary", help="write the compact records here (JSON)")
    ap.add_argument("-o", "--out", help="write the plot here (PNG)")
    args = ap.parse_args(argv)
    if not args.summary and not args.out:
        ap.error("nothing to do: give --summary and/or -o")
    records = load(args.reports)
    if args.summary:
        Path(args.summary).write_text(json.dumps({"records": records}, indent=1) + "\n")
    if args.out:
        plot(records, args.out)
    print(f"{len(records)} designs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
