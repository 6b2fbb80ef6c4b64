"""The toy chain solved exactly: stationary std without Monte Carlo error."""

import numpy as np
import pytest

from emulator.analysis.exact import update_distribution
from emulator.analysis.markov import _noise, grad_word_distribution, transition_matrix, update_probabilities
from emulator.spec.host import HyperParams, step_registers
from emulator.studies.toy import ToySettings, toy_config, toy_stationary


@pytest.mark.parametrize(("variant", "alpha"), [("vc", 2e-3), ("vc", 1e-4), ("naive", 1e-3), ("sgd_l", 1e-3)])
def test_float_probabilities_equal_exact_counting(variant, alpha):
    cfg = toy_config(variant, ToySettings(alphas=(alpha,)))
    regs = step_registers(cfg, HyperParams(alpha))
    noise = _noise(cfg, regs)
    for theta, grad in [(0, 0), (13, 17), (-40, -35), (127, 120), (-128, -128), (5, -90)]:
        words, probs = update_probabilities(cfg, theta, grad, regs, noise)
        got = np.zeros(256)
        np.add.at(got, words + 128, probs)
        want = np.zeros(256)
        for w, p in update_distribution(cfg, theta, grad, regs).items():
            want[w + 128] = float(p)
        assert np.abs(got - want).max() < 1e-12


def test_gradient_sr_distribution_is_unbiased():
    words, p = grad_word_distribution(12.3, 0.8, -128, 127)
    assert abs(p.sum() - 1) < 1e-15
    assert abs(p @ words - 12.3) < 1e-12
    words, p = grad_word_distribution(127.0, 0.8, -128, 127)
    assert words.max() == 127 and p @ words < 127  # saturation clips the upper tail


def test_exact_stationary_std_vc_one_naive_inflated():
    """The paper's Figure 1 without sampling: VC at std 1, naive 1.28 / 1.50 / 2.66."""
    vc = [toy_stationary("vc", a)["std"] for a in (2e-3, 1e-3, 1e-4)]
    naive = [toy_stationary("naive", a)["std"] for a in (2e-3, 1e-3, 1e-4)]
    assert all(abs(s - 1) < 1e-3 for s in vc)
    assert abs(naive[0] - 1.284) < 0.005 and abs(naive[1] - 1.50) < 0.01 and abs(naive[2] - 2.65) < 0.02
    assert naive[0] < naive[1] < naive[2]


def test_few_sr_bits_bias_the_chain():
    """With 4 SR bits the truncation bias drags VC's chain off centre at small steps."""
    r = toy_stationary("vc", 1e-4, ToySettings(alphas=(1e-4,), sr_bits=4))
    assert r["mean"] < -1.0


def test_rows_are_distributions_and_accumulators_rejected():
    cfg = toy_config("vc", ToySettings(alphas=(1e-3,)))
    p = transition_matrix(cfg, step_registers(cfg, HyperParams(1e-3)), 0.1)
    assert p.shape == (256, 256) and np.allclose(p.sum(axis=1), 1) and (p >= 0).all()
    lpf = toy_config("lp_f", ToySettings(alphas=(1e-3,)))
    with pytest.raises(ValueError, match="variant 'lp_f' keeps an accumulator"):
        transition_matrix(lpf, step_registers(lpf, HyperParams(1e-3)), 0.1)


def test_stationary_sgd_l_is_the_noise_free_reference():
    # regression: toy_stationary('sgd_l') used to fail in ToySettings' variant check
    sgd = toy_stationary("sgd_l", 1e-3)
    naive = toy_stationary("naive", 1e-3)
    assert sgd["variant"] == "sgd_l" and sgd["std"] < 0.2 < 1.4 < naive["std"]
