"""``verify``: run the whole co-verification plan against anyone's RTL that follows a manifest.

This is what ``lpsgld verify SOURCES... --manifest M.json`` runs (``emulator.cli`` only parses
the arguments). Two runs on one build: the random plan (tensor calls, sparse keep masks, gaps,
stalls, partial beats, register corners, both VC branches, seed loads, resets mid-stream, a
beat offered during reset, a seed word written on a transfer edge, junk writes), extended
with random segments until ``elements`` elements are verified; then a full-rate run (no gaps,
no stalls) that requires one beat per clock and exactly the manifest's latency. The first
mismatch stops the run; its report names segment, cycle, beat, lane, element, inputs,
registers, expected and received words, and the case JSON that reproduces it
(``python -m hw.verify.rerun``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .case import CosimCase, Design
from .manifest import Manifest, load_manifest
from .runner import SIM_BUILD, SIMULATORS, Build, build_sources, missing_tool, run

DEFAULT_ELEMENTS = 1000


@dataclass
class VerifyResult:
    ok: bool
    report: str
    summaries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def elements(self) -> int:
        return sum(s["elements"] for s in self.summaries)


def _check_args(sources: list[str | os.PathLike[str]], sim: str, elements: int, seed: int) -> list[Path]:
    if sim not in SIMULATORS:
        raise ValueError(f"sim must be one of {SIMULATORS}, got {sim!r}")
    for name, v, lo in (("elements", elements, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v < lo or v >= 1 << 64:
            raise ValueError(f"{name} must be in [{lo}, 2**64), got {v}")
    if not sources:
        raise ValueError("give at least one source file")
    paths = [Path(s) for s in sources]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"source file {p} does not exist")
    return paths


def verify(sources: list[str | os.PathLike[str]], manifest: str | os.PathLike[str] | Manifest, *,
           top: str | None = None, sim: str = "icarus", elements: int = DEFAULT_ELEMENTS, seed: int = 1,
           waves: bool = False, build_root: str | os.PathLike[str] | None = None) -> VerifyResult:
    """Build ``sources`` (top ``top``, default the manifest's ``module``) on ``sim`` and run the plan.

    Returns a :class:`VerifyResult` (``ok`` False with the report on the first mismatch or a
    protocol error); raises ValueError / TypeError on bad arguments or manifests and
    RuntimeError when the simulator is missing or the build fails.
    """
    paths = _check_args(sources, sim, elements, seed)
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if top is not None and not (isinstance(top, str) and top.isidentifier()):
        raise ValueError(f"top must be a Verilog identifier, got {top!r}")
    reason = missing_tool(sim)
    if reason:
        raise RuntimeError(f"cannot run {sim}: {reason}")
    design: Design = replace(man.design(), module=top or man.module)
    tag = hashlib.sha1("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:8]
    root = Path(build_root) if build_root is not None else SIM_BUILD / "verify"
    build_dir = root / sim / f"{design.module_name}-{tag}{'-waves' if waves else ''}"
    build_sources(paths, design.module_name, sim, build_dir, waves=waves)
    b = Build(sim, design, build_dir, design.module_name, man.raw, waves)
    cases = [
        ("plan", CosimCase(design, stream_seed=seed, segments=12, max_beats=24, waves=waves,
                           min_elements=elements, extra={"latency": man.latency})),
        ("full-rate", CosimCase(design, stream_seed=seed + 1, segments=3, max_beats=64, p_gap=0.0, p_stall=0.0,
                                waves=waves, extra={"latency": man.latency})),
    ]
    summaries = []
    for name, case in cases:
        try:
            summaries.append(run(b, case, name))
        except AssertionError as e:
            srcs = " ".join(str(p) for p in paths)
            case_file = build_dir / "runs" / name / "case.json"
            return VerifyResult(False, f"FAIL {design.module_name} on {sim} ({name} run): {e}\nreproduce: python -m "
                                       f"hw.verify.rerun {case_file} --sim {sim} --sources {srcs}", summaries)
    res = VerifyResult(True, "", summaries)
    lat = min(s["min_latency"] for s in summaries if s["min_latency"] is not None)
    res.report = (f"PASS {design.module_name} on {sim}: {res.elements} elements verified word for word "
                  f"({sum(s['beats'] for s in summaries)} beats, {sum(s['cycles'] for s in summaries)} cycles, "
                  f"{sum(s['segments'] for s in summaries)} segments, latency {lat}) against the golden model of "
                  f"the manifest's configuration ({man.config.variant.value}, {man.lanes} "
                  f"lane{'' if man.lanes == 1 else 's'})")
    return res
