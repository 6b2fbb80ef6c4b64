"""Host register function and schedules."""

import math

import pytest

from emulator.spec.datapath import DatapathConfig
from emulator.spec.host import ConstantLR, CyclicalCosineLR, HyperParams, realized, registers_at, step_registers
from emulator.spec.presets import preset


def test_noise_variance_follows_reference_code():
    assert HyperParams(0.5, 1e-3, 50000).noise_variance == pytest.approx(2 * 0.5 * 1e-3 / 50000, rel=1e-15)


def test_registers_round_half_up_and_realize_the_target():
    cfg = preset("w8-naive")
    regs = step_registers(cfg, HyperParams(2e-3))
    assert regs.step == math.floor(2e-3 * 2**24 + 0.5)
    r = realized(cfg, regs)
    assert abs(r["lr"] / 2e-3 - 1) < 2**-15
    assert abs(r["noise_variance"] / 4e-3 - 1) < 2e-4  # scale divides by the generator's exact std


def test_vc_branch_choice_is_exact_at_v0():
    cfg = preset("w8-vc")  # LSB 1/8: v0 = 1/256, i.e. lr = 1/512 with T = N = 1
    at = step_registers(cfg, HyperParams(1 / 512))
    assert not at.vc_noise and at.vc_var == 1 << 14  # v == v0 stays in branch B with the full v0
    above = step_registers(cfg, HyperParams(1 / 512 + 2**-20))
    assert above.vc_noise and above.noise > 0
    assert realized(cfg, above)["branch"] == 1.0


def test_weight_decay_needs_a_register():
    with pytest.raises(ValueError, match=r"weight_decay=0\.1 but the configuration has no decay register"):
        step_registers(DatapathConfig("vc"), HyperParams(1e-3, weight_decay=0.1))
    regs = step_registers(preset("w8-vc"), HyperParams(1e-3, weight_decay=0.1))
    assert regs.decay == math.floor(1e-4 * 2**24 + 0.5)


@pytest.mark.parametrize(
    ("hp", "msg"),
    [
        (HyperParams(0.01), r"lr=0.01 does not fit register format UQ\(16,24\) \(word 167772 > 65535\)"),
        (HyperParams(1e-9), r"lr=1e-09 underflows register format UQ\(16,24\)"),
        (HyperParams(1e-3, temperature=1e-9), r"noise variance 2e-12 underflows the VC variance register"),
    ],
)
def test_register_overflow_and_underflow(hp, msg):
    with pytest.raises(ValueError, match=msg):
        step_registers(preset("w8-vc"), hp)


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        (dict(lr=float("nan")), ValueError, "lr must be finite and >= 0.0, got nan"),
        (dict(lr=-1.0), ValueError, "lr must be finite and >= 0.0, got -1.0"),
        (dict(lr="1"), TypeError, "lr must be a real number, got '1'"),
        (dict(lr=1e-3, dataset_size=0), ValueError, "dataset_size must be >= 1, got 0"),
        (dict(lr=1e-3, dataset_size=2.5), TypeError, "dataset_size must be an int, got 2.5"),
        (dict(lr=1e-3, temperature=float("inf")), ValueError, "temperature must be finite"),
    ],
)
def test_bad_hyperparams(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        HyperParams(**kwargs)


def test_sgd_variants_have_no_noise():
    regs = step_registers(preset("w8-sgd-l"), HyperParams(1e-3))
    assert (regs.noise, regs.vc_var, regs.vc_noise) == (0, 0, False)


def test_schedules():
    assert ConstantLR(0.1).lr(123) == 0.1
    s = CyclicalCosineLR(0.5, total_steps=100, cycles=4)
    assert s.cycle_len == 25
    assert s.lr(0) == 0.5 and s.lr(25) == 0.5
    assert s.lr(12) < 0.5 and s.lr(24) < s.lr(12)
    assert s.lr(13) == pytest.approx(0.25 * (math.cos(math.pi * 13 / 25) + 1))
    cfg = preset("w8-vc")
    sched = CyclicalCosineLR(2e-3, 100, 2)
    assert registers_at(cfg, sched, 0) == step_registers(cfg, HyperParams(2e-3))
    with pytest.raises(ValueError, match="total_steps and cycles must be >= 1"):
        CyclicalCosineLR(0.1, 0, 1)


def test_vc_just_above_v0_falls_back_to_branch_b():
    cfg = preset("w8-vc")
    regs = step_registers(cfg, HyperParams(2**-9 * (1 + 1e-12)))  # v - v0 below the noise LSB
    assert (regs.vc_noise, regs.noise, regs.vc_var) == (False, 0, 1 << 14)
    with pytest.raises(ValueError, match="base_lr must be finite"):
        ConstantLR(float("nan"))


def test_huge_values_and_numpy_ints():
    import numpy as np

    with pytest.raises(ValueError, match=r"lr=1e\+300 does not fit register format UQ\(16,24\)"):
        step_registers(preset("w8-vc"), HyperParams(1e300))
    assert HyperParams(1e-3, dataset_size=np.int64(5)).dataset_size == 5
    with pytest.raises(TypeError, match=r"cycles must be an int, got 2\.5"):
        CyclicalCosineLR(0.1, 10, 2.5)
