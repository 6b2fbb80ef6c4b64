"""docs/spec.md section 10, read literally (issue 13, item 10): each test quotes the sentence that
resolves one ambiguity and pins the library to it."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import pytest

from emulator.engines.bfp_engine import BfpEngine
from emulator.spec.bfp import BfpConfig, BfpFormat, BfpRegisters, BfpTensor, bfp_registers, update
from emulator.spec.datapath import Variant
from emulator.spec.formats import FixedFormat
from emulator.spec.host import HyperParams

SPEC = re.sub(r"\s+", " ", (pathlib.Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text())
U = dict(signed=False)


def says(sentence: str) -> None:
    """The spec contains ``sentence`` (whitespace-insensitive)."""
    assert re.sub(r"\s+", " ", sentence) in SPEC, sentence


def _example() -> tuple[BfpConfig, BfpRegisters, BfpTensor, BfpTensor]:
    cfg = BfpConfig(Variant.VC, weight=BfpFormat(6, 3), grad=BfpFormat(6, 3), step=FixedFormat(8, 8, **U),
                    noise=FixedFormat(8, 4, **U), lanes=1)
    f = cfg.weight
    tab = tuple(255 if e <= 0 else 0 for e in range(f.min_exp, f.max_exp + 1))
    regs = BfpRegisters(step=0, vc_noise=tab, vc_var=(1024,) * len(tab))
    theta = BfpTensor(np.array([[16, -3, 5, 0]]), np.array([0]))
    return cfg, regs, theta, BfpTensor(np.zeros((1, 4), dtype=np.int64), np.array([0]))


def test_vc_branch_and_table_entries_come_from_e0_not_the_final_exponent() -> None:
    says("The branch and both table entries stay those of `E0` even when the noise lifts the row to "
         "`E > E0`: `vc_noise[E]` and `vc_var[E]` of the final exponent are never read.")
    says("the result is `[[-6, 10, 31, -21]]` at `E = 3`.")
    cfg, regs, theta, grad = _example()
    r = BfpEngine(cfg, 0).step(theta, grad, regs)
    assert r.state.mant.tolist() == [[-6, 10, 31, -21]] and r.state.exp.tolist() == [3]
    # read literally with vc_noise[E] (E = 3: 0, branch B) the row would stay at E0 = 0
    assert regs.vc_noise[3 - cfg.weight.min_exp] == 0


def test_vc_tables_are_indexed_from_e_min() -> None:
    says("**entry `i` for `E0 = E_min + i`**")
    cfg, regs, theta, grad = _example()
    n = 1 << cfg.weight.exp_bits
    assert len(regs.vc_noise) == n
    # move the single branch-A entry: only the row whose E0 sits at that index takes branch A
    only = tuple(255 if i == 0 - cfg.weight.min_exp else 0 for i in range(n))
    a = BfpEngine(cfg, 0).step(theta, grad, BfpRegisters(step=0, vc_noise=only, vc_var=regs.vc_var))
    shifted = tuple(255 if i == 1 - cfg.weight.min_exp else 0 for i in range(n))
    b = BfpEngine(cfg, 0).step(theta, grad, BfpRegisters(step=0, vc_noise=shifted, vc_var=regs.vc_var))
    assert a.state.exp.tolist() == [3] and b.state.exp.tolist() == [0]  # b: branch B, no noise lift
    real = BfpConfig.paper("vc", lanes=1, max_lr=0.5, weight_decay=5e-4, temperature=1.0, dataset_size=1000)
    hp = HyperParams(0.5, 1.0, 1000, 5e-4)
    tab = bfp_registers(real, hp)
    assert len(tab.vc_noise) == len(tab.vc_var) == 1 << real.weight.exp_bits


def test_the_noise_term_sets_the_window_in_every_row_and_for_zero_registers() -> None:
    says("noise for every row of `naive`, `lp_f` and `vc` (the variants with a Gaussian), **including VC "
         "branch-B rows** (which add no noise) and rows whose register is 0")
    says("**`max|z|` = `terms * max_i |table[i]|`**")
    cfg, regs, _, _ = _example()
    assert cfg.term_bits["noise"] == (cfg.noise.max_word * cfg.gaussian.max_abs).bit_length()
    assert cfg.gaussian.max_abs == cfg.gaussian.terms * int(np.abs(cfg.gaussian.table).max())
    # a narrow window (B = 10) makes the window's LSB L visible: with every table entry 0 all rows
    # take branch B and add no noise, yet the noise term still sets H, so theta's low bits are cut
    narrow = dataclasses.replace(cfg, window_bits=10)

    @dataclasses.dataclass(frozen=True)
    class WithoutNoiseInH(BfpConfig):  # the literal misreading: H from the terms actually added
        @property
        def term_bits(self) -> dict[str, int]:
            return {k: v for k, v in BfpConfig.term_bits.fget(self).items() if k != "noise"}  # type: ignore[attr-defined]

    other = WithoutNoiseInH(**{f.name: getattr(narrow, f.name) for f in dataclasses.fields(narrow)})
    zero = BfpRegisters(step=3, vc_noise=(0,) * len(regs.vc_noise), vc_var=(0,) * len(regs.vc_var))
    rng = np.random.default_rng(0)
    theta = BfpTensor(rng.integers(-31, 32, (64, 4)), np.zeros(64, dtype=np.int64))
    grad = BfpTensor(rng.integers(-31, 32, (64, 4)), np.zeros(64, dtype=np.int64))
    words = rng.integers(0, 1 << 62, (256, 1)).astype(np.uint64)
    got = update(narrow, theta, grad, zero, words)
    literal = update(other, theta, grad, zero, words)
    assert not np.array_equal(got.state.mant, literal.state.mant)  # the two readings differ here
    # and the library's is the spec's: theta (LSB 2^-4) is floored to the window LSB 2^-1 before rounding
    top = max(-4 + 5, -12 + 13, narrow.noise_lsb_exp + narrow.term_bits["noise"])
    assert top == narrow.noise_lsb_exp + narrow.term_bits["noise"] and top + 2 - 10 == -1


def test_the_bfp_quantizer_saturates_symmetrically_unlike_fixedformat() -> None:
    says("with `W = 8`, `x = [-127.75 * 2^-6, 1.0]` BFP gives `m = [-127, 64]`, `FixedFormat(8, 6)` gives "
         "`[-128, 64]`")
    x = np.array([[-127.75 * 2.0**-6, 1.0]])
    q = BfpFormat(8, 8).quantize(x)
    assert q.mant.tolist() == [[-127, 64]] and q.exp.tolist() == [0]
    assert FixedFormat(8, 6).quantize(x).tolist() == [[-128, 64]]


def test_nan_under_stochastic_quantization_raises_before_drawing() -> None:
    says("NaN raises under both roundings before anything is drawn from `rng` (the generator is not advanced).")
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match=r"cannot quantize NaN \(first at flat index 3\)"):
        BfpFormat(8, 8).quantize(np.array([[0.5, 1.0], [0.25, np.nan]]), "stochastic", rng)
    assert rng.integers(0, 1 << 30) == np.random.default_rng(4).integers(0, 1 << 30)


def test_zero_length_dimensions() -> None:
    says("A tensor with a 0-length dimension has no elements: the update returns its (empty) mantissas, gives "
         "each of its `R` rows (if any) the exponent `E_min`")
    says("A tensor with a 0-length dimension quantizes to empty mantissas, and each of its `R` rows (if any) "
         "takes `E_min`.")
    cfg = BfpConfig.paper("vc", lanes=2, max_lr=0.5, weight_decay=5e-4, temperature=1.0, dataset_size=1000)
    regs = bfp_registers(cfg, HyperParams(0.5, 1.0, 1000, 5e-4))
    f = cfg.weight
    q = f.quantize(np.zeros((3, 0)))
    assert q.mant.shape == (3, 0) and q.exp.tolist() == [f.min_exp] * 3
    eng, fresh = BfpEngine(cfg, 1), BfpEngine(cfg, 1)
    th = BfpTensor(np.zeros((3, 0), dtype=np.int64), np.array([0, 1, 2]))
    r = eng.step(th, BfpTensor(np.zeros((3, 0), dtype=np.int64), np.zeros(3, dtype=np.int64)), regs)
    assert r.state.mant.shape == (3, 0) and r.state.exp.tolist() == [f.min_exp] * 3
    assert eng.rng == fresh.rng  # nothing drawn
    none = BfpTensor(np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64))
    r = eng.step(none, none, regs)
    assert r.state.mant.shape == (0, 4) and eng.rng == fresh.rng


def test_a_rejected_call_changes_nothing() -> None:
    says("A call that raises (a word or exponent out of range, mismatched shapes, bad registers, or any "
         "failure during the update) changes nothing")
    says("A masked numpy array is refused (`TypeError`): the datapath has no mask.")
    cfg, regs, theta, grad = _example()
    eng, fresh = BfpEngine(cfg, 0), BfpEngine(cfg, 0)
    bad = [BfpTensor(np.array([[99, 0, 0, 0]]), np.array([0])),  # mantissa out of range
           BfpTensor(np.array([[1, 0, 0]]), np.array([0]))]  # shape mismatch
    for t in bad:
        with pytest.raises(ValueError):
            eng.step(t, grad, regs)
    with pytest.raises(ValueError):
        eng.step(theta, grad, BfpRegisters(step=0, vc_noise=(1,), vc_var=(0,)))
    with pytest.raises(TypeError, match="masked array"):
        eng.step(BfpTensor(np.ma.masked_array(theta.mant), theta.exp), grad, regs)
    assert eng.rng == fresh.rng
    a, b = eng.step(theta, grad, regs), fresh.step(theta, grad, regs)
    assert np.array_equal(a.state.mant, b.state.mant)
