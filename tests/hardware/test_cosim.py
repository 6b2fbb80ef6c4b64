"""Co-verification: the exported UpdateTop Verilog on Icarus and Verilator against the numpy engine.

Each test builds (or reuses) one design and runs one seeded stimulus: tensor calls with partial
last beats, sparse keep masks with empty beats, register changes (both VC branches, format
extremes), control writes with junk above the register widths and to unmapped addresses, a
seed load, a mid-stream reset and a reset between calls, random sink valid gaps and source
ready stalls. Every state and weight word of every kept lane is compared by equality; see
``hw/verify`` and docs/cosim.md. ``LPSGLD_SOAK=1``: 200 segments and three stimulus seeds
per design. ``LPSGLD_WAVES=1``: waveforms in the run directories (separate builds).

Matrix (what builds are spent on): Verilator builds cost 5-25 s each, Icarus builds about a
second but simulate about 20x slower per clock. Icarus covers every preset at 1 and 4 lanes,
every w8 variant at 8 lanes and the custom random budgets, and every target / pipeline depth
(``OPTIONS``) on the w8 VC and LP-F presets, w4 VC and w16 LP-F (with ``LPSGLD_SOAK=1``: every w8
variant and the w4 / w16 VC and LP-F presets); Verilator covers every
variant, every word length, every lane count and every target on a smaller set, plus the
full-rate/latency check (default and dsp18 at pipeline 2).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hw.verify.case import Design, ci_case
from hw.verify.runner import build, missing_tool, run, soak_requested, waves_requested

_G6 = dict(kind="table", terms=6, index_bits=8, frac=8)  # 48 Gaussian bits: moves a field to word 1
VARIANTS = ("vc", "naive", "lpf", "sgd-l", "sgd-f")

# Random-bit budgets the presets lack (sr_bits None / small, rng_words 2 with a field in word 1),
# a non-zero reset seed (other reset constants in the generators).
CUSTOM = [
    Design.of("w8-vc", 4, sr_bits=3),  # k < 2p: VC branch B zero-extends f_k
    Design.of("w16-vc", 1, sr_bits=None),  # k = s = 24 > 2p: f_k truncated
    Design.of("w8-naive", 4, sr_bits=1),
    Design.of("w4-sgd-f", 1, sr_bits=2),
    Design.of("w16-sgd-l", 8, sr_bits=3),
    Design.of("w8-vc", 4, rng_words=2, gaussian=_G6),  # sr and gauss in word 1
    Design.of("w8-naive", 4, rng_words=2, gaussian=_G6),  # gauss in word 1
    Design.of("w8-lpf", 1, rng_words=2, gaussian=_G6),
    Design.of("w8-sgd-f", 4, reset_seed=12345),
]

ICARUS = (
    [Design.of(f"{w}-{v}", lanes) for w in ("w4", "w8", "w16") for v in VARIANTS for lanes in (1, 4)]
    + [Design.of(f"w8-{v}", 8) for v in VARIANTS]
    + CUSTOM
)

VERILATOR = [
    Design.of("w4-vc", 1),
    Design.of("w4-naive", 4),
    Design.of("w4-lpf", 4),
    Design.of("w8-vc", 8),
    Design.of("w8-lpf", 1),
    Design.of("w8-sgd-l", 1),
    Design.of("w16-vc", 1),
    Design.of("w16-sgd-f", 1),
    Design.of("w8-vc", 1, rng_words=2, gaussian=_G6),
    Design.of("w8-naive", 1, sr_bits=1),
]

# Every target and pipeline depth (hw.options.HwOptions): the same words whatever the structure.
# dsp18 splits operands wider than 18 signed bits (w8-lpf / w16 accumulators) and squares in logic.
OPTIONS = [("dsp18", 1), ("generic", 1), ("ice40-hx", 2), ("dsp18", 2), ("generic", 3)]
# CI runs every option on the two variants that use every unit (vc: Gaussian, squarer, VC; lpf: accumulator,
# weight rounding) at w8 and on vc at w4 / lpf at w16; LPSGLD_SOAK=1 runs every variant and word length.
_SOAK = soak_requested()
ICARUS += [Design.of(f"w8-{v}", 4, target=t, pipeline=k) for t, k in OPTIONS for v in VARIANTS
           if _SOAK or v in ("vc", "lpf")]
ICARUS += [Design.of(f"{w}-{v}", 1, target=t, pipeline=k) for t, k in OPTIONS for w in ("w4", "w16")
           for v in ("vc", "lpf") if _SOAK or (w, v) in (("w4", "vc"), ("w16", "lpf"))]
ICARUS += [Design.of("w8-vc", 4, target="dsp18", pipeline=2, rng_words=2, gaussian=_G6),
           Design.of("w8-naive", 2, target="generic", pipeline=2, sr_bits=1)]
VERILATOR += [Design.of("w8-vc", 8, target="dsp18"), Design.of("w16-lpf", 1, target="generic", pipeline=2),
              Design.of("w4-vc", 1, pipeline=3), Design.of("w8-naive", 4, target="dsp18", pipeline=2),
              Design.of("w16-vc", 1, target="dsp18", pipeline=2)]

MATRIX = [("icarus", d) for d in ICARUS] + [("verilator", d) for d in VERILATOR]
FULL_RATE = [("icarus", Design.of("w8-vc", 8)), ("verilator", Design.of("w8-vc", 8)),
             ("verilator", Design.of("w8-vc", 8, target="dsp18", pipeline=2))]

_builds: dict[tuple[str, str, bool], object] = {}


def _build(sim: str, design: Design):
    reason = missing_tool(sim)
    if reason:
        pytest.skip(reason)
    pytest.importorskip("amaranth", reason="amaranth is not installed (bash scripts/setup.sh dev,hw,sim)")
    waves = waves_requested()
    key = (sim, design.name, waves)
    if key not in _builds:
        _builds[key] = build(design, sim, waves=waves)
    return _builds[key]


@pytest.mark.parametrize("sim,design", MATRIX, ids=[f"{s}-{d.name}" for s, d in MATRIX])
def test_cosim(sim, design):
    b = _build(sim, design)
    soak = soak_requested()
    for k in range(3 if soak else 1):
        case = ci_case(design, b.manifest["latency"], k=k, soak=soak, waves=b.waves)
        summary = run(b, case, f"seed{case.stream_seed}")
        assert summary["elements"] > 0 and summary["segments"] == case.segments
        assert summary["min_latency"] >= b.manifest["latency"]


@pytest.mark.parametrize("sim,design", FULL_RATE, ids=[f"{s}-{d.name}" for s, d in FULL_RATE])
def test_full_rate_and_latency(sim, design):
    """Never stalled: one beat per clock in and out, each exactly the manifest's latency late."""
    b = _build(sim, design)
    case = replace(ci_case(design, b.manifest["latency"], k=99, waves=b.waves), segments=6, max_beats=64,
                   p_gap=0.0, p_stall=0.0)
    summary = run(b, case, "full-rate")
    assert summary["min_latency"] == b.manifest["latency"]


def test_register_map_matches_hw_control():
    """The testbench's reading of the contract and hw-core's host helpers agree."""
    import numpy as np

    control = pytest.importorskip("hw.control", reason="hw.control needs amaranth")
    from emulator.spec.datapath import StepRegisters
    from hw.verify.plan import register_widths, register_writes, seed_writes

    for design in (Design.of("w8-vc", 3), Design.of("w8-sgd-l", 2, rng_words=2), Design.of("w16-lpf", 1)):
        cfg = design.config()
        assert seed_writes(cfg, 2**64 - 5) == control.seed_writes(cfg, 2**64 - 5)
        vc = cfg.variant.value == "vc"
        regs = StepRegisters(step=3, decay=2, noise=1 if cfg.variant.has_gaussian else 0, vc_noise=vc,
                             vc_var=9 if vc else 0)
        widths = register_widths(cfg)
        mine = {a: d & ((1 << widths[a]) - 1) for a, d in register_writes(cfg, regs, np.random.default_rng(0))
                if a in widths}
        assert mine == dict(control.register_writes(cfg, regs))
