"""Random configurations: the lane hardware equals the golden ``update`` for each.

The presets pin a few corners; the datapath is generated from any ``DatapathConfig``,
so this draws configurations (formats, alignments, sr_bits, vc_frac_bits, Gaussian
shape, decay or not; one generator word: two-word layouts are in test_hw_top) from a seeded generator and checks the
elaborated lane (evaluated by hw.verify.vectorsim) against ``emulator.spec.datapath.update`` on
random and corner inputs under both VC branches, each with a random target and pipeline depth.
``LPSGLD_SOAK=1`` draws 200.
"""

import os

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")

from emulator.spec.datapath import DatapathConfig, StepRegisters, Variant, update
from emulator.spec.formats import FixedFormat
from emulator.spec.gaussian import GaussianSpec
from hw.datapath import UpdateLane, register_ports
from hw.options import TARGETS, HwOptions
from hw.verify.vectorsim import evaluate

COUNT = 200 if os.environ.get("LPSGLD_SOAK") == "1" else 40
_U = dict(signed=False)


def _config(rng):
    """A valid configuration whose intermediates stay well inside int64 (sum_width <= 40)."""
    while True:
        v = Variant(rng.choice(["vc", "naive", "lp_f", "sgd_l", "sgd_f"]))
        ww = int(rng.integers(3, 11))
        weight = FixedFormat(ww, int(rng.integers(-1, ww + 3)))
        acc = None
        if v.has_accumulator:
            fa = weight.frac + int(rng.integers(0, 7))
            acc = FixedFormat(weight.width - weight.frac + fa + int(rng.integers(0, 3)), fa)
        kind = str(rng.choice(["table", "clt"]))
        gauss = GaussianSpec(kind, int(rng.integers(1, 6)), int(rng.integers(1, 7)),
                             0 if kind == "clt" else int(rng.integers(0, 7)))
        try:
            cfg = DatapathConfig(
                v, weight=weight, grad=FixedFormat(int(rng.integers(3, 11)), int(rng.integers(0, 7))), acc=acc,
                step=FixedFormat(int(rng.integers(2, 13)), int(rng.integers(0, 17)), **_U),
                noise=FixedFormat(int(rng.integers(2, 13)), int(rng.integers(0, 17)), **_U),
                decay=None if rng.integers(2) else FixedFormat(int(rng.integers(2, 11)), int(rng.integers(0, 15)),
                                                               **_U),
                gaussian=gauss, sr_bits=None if rng.integers(2) else int(rng.integers(1, 13)),
                vc_frac_bits=int(rng.integers(1, 7)),
            )
        except ValueError:
            continue  # e.g. the random fields need a second generator word
        if cfg.sum_width <= 40:
            return cfg


def _registers(cfg, rng, branch_a):
    step = int(rng.integers(cfg.step.max_word + 1))
    decay = int(rng.integers(cfg.decay.max_word + 1)) if cfg.decay is not None else 0
    noise = int(rng.integers(1, cfg.noise.max_word + 1)) if cfg.variant.has_gaussian else 0
    if cfg.variant is not Variant.VC:
        return StepRegisters(step, decay, noise)
    if branch_a:
        return StepRegisters(step, decay, noise, True, 0)
    return StepRegisters(step, decay, noise, False, int(rng.integers((1 << (2 * cfg.vc_frac_bits - 2)) + 1)))


@pytest.mark.parametrize("index", range(COUNT))
def test_random_configuration(index):
    rng = np.random.default_rng([index, 2026])
    cfg = _config(rng)
    opts = HwOptions(str(rng.choice(TARGETS)), int(rng.integers(1, 4)))  # any target, pipeline depth 1-3
    n = 4000
    st, gr = cfg.state, cfg.grad
    theta = rng.integers(st.min_word, st.max_word + 1, n)
    grad = rng.integers(gr.min_word, gr.max_word + 1, n)
    theta[:4], grad[:4] = [st.min_word, st.max_word] * 2, [gr.max_word, gr.min_word, gr.min_word, gr.max_word]
    words = rng.integers(0, 1 << 63, (n, 1))  # the evaluator takes one word below 2**63
    for branch_a in (True, False) if cfg.variant is Variant.VC else (True,):
        regs = _registers(cfg, rng, branch_a)
        cfg.check_registers(regs)
        lane = UpdateLane(cfg, opts)
        values = {"step": regs.step, "decay": regs.decay, "noise": regs.noise, "vc_noise": int(regs.vc_noise),
                  "vc_var": regs.vc_var}
        ins = [(lane.en, 1), (lane.theta, theta), (lane.grad, grad), (lane.words, words[:, 0])]
        ins += [(getattr(lane, r), values[r]) for r in register_ports(cfg)]
        state, weight = evaluate(lane, ins, [lane.state, lane.weight])
        exp = update(cfg, theta, grad, regs, words.astype(np.uint64))
        assert np.array_equal(state, exp.state), (cfg, opts, regs)
        assert np.array_equal(weight, exp.weight), (cfg, opts, regs)
