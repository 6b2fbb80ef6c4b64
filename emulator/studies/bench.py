"""Throughput of the bit-exact engine against a plain float32 numpy SGLD step, same run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from ..engines.numpy_engine import NumpyEngine
from ..spec.host import HyperParams, step_registers
from ..spec.presets import preset

# variant -> (preset, lr): lr 2e-3 puts VC in branch A (Gaussian), 1e-3 in branch B (SR + top-up)
_PRESET = {
    "vc": ("w8-vc", 2e-3),
    "vc_b": ("w8-vc", 1e-3),
    "naive": ("w8-naive", 2e-3),
    "lp_f": ("w8-lpf", 2e-3),
    "sgd_l": ("w8-sgd-l", 2e-3),
    "sgd_f": ("w8-sgd-f", 2e-3),
}


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


VARIANTS = tuple(_PRESET)


def run_bench(elements: int, lanes: Sequence[int], repeat: int, variants: Sequence[str]) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    theta32 = rng.standard_normal(elements, dtype=np.float32)
    g32 = rng.standard_normal(elements, dtype=np.float32)
    lr32, sigma32 = np.float32(2e-3), np.float32(np.sqrt(4e-3))

    def float_step() -> object:
        return theta32 - lr32 * g32 + sigma32 * rng.standard_normal(elements, dtype=np.float32)

    base = _best(float_step, repeat)
    print(f"{elements:,} elements; float32 numpy SGLD step (theta - a*g + s*randn): "
          f"{base * 1e3:.1f} ms = {elements / base / 1e6:.1f} M elem/s")
    print(f"{'variant':>8} {'lanes':>7} {'ms':>9} {'M elem/s':>9} {'x float32':>10}")
    rows: list[dict[str, object]] = []
    for v in variants:
        for L in lanes:
            name, lr = _PRESET[v]
            cfg = preset(name, L)
            regs = step_registers(cfg, HyperParams(lr))
            st = cfg.state
            theta = rng.integers(st.min_word // 2, st.max_word // 2, elements)
            grad = rng.integers(cfg.grad.min_word // 2, cfg.grad.max_word // 2, elements)
            eng = NumpyEngine(cfg, 1)
            t = _best(lambda: eng.step(theta, grad, regs), repeat)  # noqa: B023
            rows.append({"variant": v, "lanes": L, "seconds": t, "ratio": t / base})
            print(f"{v:>8} {L:>7} {t * 1e3:9.1f} {elements / t / 1e6:9.1f} {t / base:10.2f}")
    return rows
