"""Shipped configurations and golden test vectors.

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

from .datapath import DatapathConfig, StepRegisters, Variant
from .engine import NumpyEngine
from .formats import FixedFormat
from .gaussian import GaussianSpec
from .host import HyperParams, step_registers

_U = dict(signed=False)


def _w4(variant: str, lanes: int) -> DatapathConfig:
    return DatapathConfig(
        Variant(variant),
        weight=FixedFormat(4, 1),
        grad=FixedFormat(4, 1),
        acc=FixedFormat(8, 4) if variant in ("lp_f", "sgd_f") else None,
        step=FixedFormat(4, 4, **_U),
        noise=FixedFormat(4, 3, **_U),
        decay=FixedFormat(4, 6, **_U),
        gaussian=GaussianSpec("table", 2, 3, 3),
        vc_frac_bits=3,
        lanes=lanes,
    )


def _w8(variant: str, lanes: int) -> DatapathConfig:
    return DatapathConfig(
        Variant(variant),
        weight=FixedFormat(8, 3),
        grad=FixedFormat(8, 3),
        acc=FixedFormat(24, 16) if variant in ("lp_f", "sgd_f") else None,
        step=FixedFormat(16, 24, **_U),
        noise=FixedFormat(16, 19, **_U),
        decay=FixedFormat(12, 24, **_U),
        lanes=lanes,
    )


def _w16(variant: str, lanes: int) -> DatapathConfig:
    return DatapathConfig(
        Variant(variant),
        weight=FixedFormat(16, 10),
        grad=FixedFormat(16, 10),
        acc=FixedFormat(32, 20) if variant in ("lp_f", "sgd_f") else None,
        step=FixedFormat(16, 20, **_U),
        noise=FixedFormat(16, 18, **_U),
        decay=FixedFormat(12, 24, **_U),
        gaussian=GaussianSpec("table", 4, 8, 10),
        sr_bits=12,
        vc_frac_bits=10,
        lanes=lanes,
    )


_FAMILIES = {"w4": _w4, "w8": _w8, "w16": _w16}
_VARIANTS = {"vc": "vc", "naive": "naive", "lpf": "lp_f", "sgd-l": "sgd_l", "sgd-f": "sgd_f"}
PRESETS = tuple(f"{f}-{v}" for f in _FAMILIES for v in _VARIANTS)


def preset(name: str, lanes: int = 1) -> DatapathConfig:
    """A shipped configuration, e.g. ``w8-vc``, ``w8-lpf``, ``w4-naive``, ``w16-sgd-f``."""
    family, _, variant = name.partition("-")
    if family not in _FAMILIES or variant not in _VARIANTS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(PRESETS)}")
    return _FAMILIES[family](_VARIANTS[variant], lanes)


# Hyper-parameter cases per family: (lr, temperature, dataset_size, weight_decay).
_CASES = {
    "w4": [(0.5, 1.0, 1, 0.0), (0.25, 0.02, 1, 0.25), (0.0625, 0.05, 1, 0.0)],
    "w8": [(2e-3, 1.0, 1, 0.0), (1e-4, 1.0, 1, 5e-2), (3e-3, 1.0, 1, 0.0)],
    "w16": [(1e-3, 1.0, 1, 0.0), (5e-4, 1e-4, 1, 1e-2), (1e-5, 1.0, 1, 0.0)],
}


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
