"""Golden test vectors of the shipped configurations.

The vectors pin the arithmetic: ``lpsgld vectors`` writes them, and a test
recomputes every word with the current engine and asserts equality. RTL
testbenches can replay the same file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import numpy as np

from ..spec.datapath import StepRegisters
from ..spec.host import HyperParams, step_registers
from ..spec.presets import _CASES, PRESETS, preset
from .numpy_engine import NumpyEngine


def vector_cases() -> list[dict[str, Any]]:
    """Every golden case: configuration name, lanes, seed, registers, inputs (2 steps)."""
    out: list[dict[str, Any]] = []
    for name in PRESETS:
        family = name.split("-")[0]
        for lanes in (1, 4):
            cfg = preset(name, lanes)
            for ci, (lr, temp, n, wd) in enumerate(_CASES[family]):
                regs = step_registers(cfg, HyperParams(lr, temp, n, wd))
                rng = np.random.Generator(np.random.PCG64([len(out), 7]))
                st, g = cfg.state, cfg.grad
                theta = rng.integers(st.min_word, st.max_word + 1, 37)
                theta[:2] = st.min_word, st.max_word  # saturation corners
                grad = rng.integers(g.min_word, g.max_word + 1, (2, 37))
                out.append(
                    {"config": name, "lanes": lanes, "case": ci, "seed": 1000 + ci,
                     "registers": asdict(regs), "theta": theta.tolist(), "grad": grad.tolist()}
                )
    return out


def run_case(case: dict[str, Any]) -> dict[str, list[list[int]]]:
    """Two consecutive steps of a case; state and weight words after each."""
    cfg = preset(case["config"], case["lanes"])
    eng = NumpyEngine(cfg, case["seed"])
    regs = StepRegisters(**case["registers"])
    theta = np.asarray(case["theta"], dtype=np.int64)
    states, weights = [], []
    for g in case["grad"]:
        r = eng.step(theta, np.asarray(g, dtype=np.int64), regs)
        theta = r.state
        states.append(r.state.tolist())
        weights.append(r.weight.tolist())
    return {"state": states, "weight": weights}


def write_vectors(path: str) -> str:
    cases = vector_cases()
    for c in cases:
        c["expected"] = run_case(c)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"format": 1, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    return path
