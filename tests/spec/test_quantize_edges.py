"""Arithmetic edges found by an outside oracle (issue 13, item 9): an SR input whose scaled value
underflows, and a value whose scaling overflows, follow docs/spec.md (no underflow to -0, no warning)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from emulator.spec.formats import FixedFormat


def test_sr_of_the_smallest_negative_subnormal_follows_the_spec() -> None:
    # x * 2^F = -5e-324 / 8 underflows to -0.0 in float64; the spec's floor(x 2^F) is -1 and the
    # retained fraction f_1 = 1, so SR gives -1 with probability 1/2 (u = 0 rounds up to 0)
    fmt = FixedFormat(8, -3)
    got = fmt.quantize(np.full(10000, -5e-324), "stochastic", np.random.default_rng(7), sr_bits=1)
    u = np.random.default_rng(7).integers(0, 2, size=10000, dtype=np.int64)
    assert np.array_equal(got, np.where(u < 1, 0, -1))
    assert 4800 < int((got == -1).sum()) < 5200
    # positive and negative tiny values at every k: floor 0 (never up) or -1 (up unless u = 2^k - 1)
    for k in (1, 8, 52):
        pos = fmt.quantize(np.full(64, 5e-324), "stochastic", np.random.default_rng(1), sr_bits=k)
        assert not pos.any()
        neg = fmt.quantize(np.full(64, -1e-300), "stochastic", np.random.default_rng(1), sr_bits=k)
        u = np.random.default_rng(1).integers(0, 1 << k, size=64, dtype=np.int64)
        assert np.array_equal(neg, np.where(u < (1 << k) - 1, 0, -1))
    assert not fmt.quantize(np.array([-5e-324, 5e-324, -0.0])).any()  # nearest: 0


def test_overflowing_scale_saturates_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the suite runs with -W error too
        got = FixedFormat(8, 3).quantize(np.array([1.7e308, -1.7e308, np.inf, -np.inf]))
        sr = FixedFormat(8, 3).quantize(np.array([1.7e308, -1.7e308]), "stochastic", np.random.default_rng(0))
    assert got.tolist() == [127, -128, 127, -128] and sr.tolist() == [127, -128]


def test_torch_quantize_matches_on_the_edges() -> None:
    torch = pytest.importorskip("torch", reason="needs torch (bash scripts/setup.sh torch)")
    from emulator.engines.torch_engine import torch_quantize

    fmt = FixedFormat(8, -3)
    x = np.array([-5e-324, 5e-324, -1e-300, 1.7e308, -1.7e308, -0.0, 3.0, -13.0])
    u = np.random.default_rng(2).integers(0, 2, size=x.size, dtype=np.int64)
    got = torch_quantize(torch.from_numpy(x), fmt, "stochastic", u=torch.from_numpy(u), sr_bits=1)
    fl = np.array([-1, 0, -1, 128, -129, 0, 0, -2])  # floor(x 2^-3), clamped to [min - 1, max + 1]
    fk = np.array([1, 0, 1, 0, 0, 0, 0, 0])  # floor(x 2^-2) - 2 floor(x 2^-3): 1/2 for the tiny negatives
    want = np.clip(fl + (u < fk), -128, 127)
    assert np.array_equal(got.numpy(), want)
    assert torch.equal(torch_quantize(torch.from_numpy(x), fmt), torch.from_numpy(fmt.quantize(x)))
