"""Exhaustive W=4 equivalence of the hardware lane with the golden ``update``.

For each W=4 preset every state word, every gradient word and every random input the
update reads (the ``vc`` field and the shared ``sr``/``gauss`` field for VC; the ``sr``
and ``gauss`` fields otherwise) is checked under representative registers (host values,
maxima, both VC branches). The hardware side is the elaborated ``UpdateLane`` itself,
evaluated vector-wide by :func:`hw.verify.vectorsim.evaluate` (registers read as wires; the
evaluator is checked against amaranth.sim in test_hw_units). ``LPSGLD_SOAK=1`` also
enumerates every Gaussian index for ``w4-lpf`` (16.7M vectors per register set).
"""

import os

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")

from emulator.spec.datapath import StepRegisters, update
from emulator.spec.host import HyperParams, step_registers
from emulator.spec.presets import preset
from hw.datapath import UpdateLane, register_ports
from hw.options import HwOptions
from hw.verify.vectorsim import evaluate

SOAK = os.environ.get("LPSGLD_SOAK") == "1"


def _all_inputs(cfg, gauss_values=None):
    """Every (theta, grad, random word) combination; random words cover every used field bit."""
    f = cfg.fields
    top = max(x.offset + x.width for x in f.values())
    if gauss_values is None:
        words = np.arange(1 << top)
    else:  # every bit below the gauss field, the given gauss indices above it
        g = f["gauss"]
        low = np.arange(1 << g.offset)
        words = (np.asarray(gauss_values)[:, None] << g.offset | low[None, :]).ravel()
    st, gr = cfg.state, cfg.grad
    th, g_, w = np.meshgrid(np.arange(st.min_word, st.max_word + 1), np.arange(gr.min_word, gr.max_word + 1),
                            words, indexing="ij")
    return th.ravel(), g_.ravel(), w.ravel()


# every target; pipeline depths 1 (every tree level registered) and 2 (every other level)
OPTS = [HwOptions(), HwOptions("dsp18"), HwOptions("generic"), HwOptions("ice40-hx", 2), HwOptions("dsp18", 2)]
OPT_IDS = [f"{o.target}-p{o.pipeline}" for o in OPTS]


def _check(cfg, regs, theta, grad, words, opts=None):
    lane = UpdateLane(cfg, opts)
    values = {"step": regs.step, "decay": regs.decay, "noise": regs.noise, "vc_noise": int(regs.vc_noise),
              "vc_var": regs.vc_var}
    ins = [(lane.en, 1), (lane.theta, theta), (lane.grad, grad), (lane.words, words)]
    ins += [(getattr(lane, name), values[name]) for name in register_ports(cfg)]
    state, weight = evaluate(lane, ins, [lane.state, lane.weight])
    exp = update(cfg, theta.astype(np.int64), grad.astype(np.int64), regs, words.astype(np.uint64)[:, None])
    bad = np.flatnonzero((state != exp.state) | (weight != exp.weight))
    assert bad.size == 0, (
        f"{bad.size} mismatches; first: theta={theta[bad[0]]} grad={grad[bad[0]]} word={words[bad[0]]:#x} "
        f"hw=({state[bad[0]]}, {weight[bad[0]]}) golden=({exp.state[bad[0]]}, {exp.weight[bad[0]]})"
    )
    return theta.size


def _max_regs(cfg, **kw):
    return StepRegisters(cfg.step.max_word, cfg.decay.max_word, **kw)


VC_REGS = {
    "A-host": lambda c: step_registers(c, HyperParams(0.5)),
    "B-host": lambda c: step_registers(c, HyperParams(0.0625, 0.05)),
    "A-max": lambda c: _max_regs(c, noise=c.noise.max_word, vc_noise=True),
    "B-v0": lambda c: _max_regs(c, vc_var=1 << (2 * c.vc_frac_bits - 2)),
}


@pytest.mark.parametrize("opts", OPTS, ids=OPT_IDS)
@pytest.mark.parametrize("regs", list(VC_REGS), ids=list(VC_REGS))
def test_w4_vc_every_input(regs, opts):
    cfg = preset("w4-vc")
    r = VC_REGS[regs](cfg)
    assert r.vc_noise == regs.startswith("A")  # the case exercises the branch it names
    n = _check(cfg, r, *_all_inputs(cfg), opts)
    assert n == 16 * 16 * (1 << 13)


SR_REGS = {
    "host": lambda c: step_registers(c, HyperParams(0.25, 0.02, 1, 0.25)),
    "max": lambda c: _max_regs(c, noise=c.noise.max_word if c.variant.has_gaussian else 0),
}


@pytest.mark.parametrize("opts", OPTS, ids=OPT_IDS)
@pytest.mark.parametrize("regs", list(SR_REGS), ids=list(SR_REGS))
@pytest.mark.parametrize("name", ["w4-naive", "w4-sgd-l", "w4-sgd-f"])
def test_w4_sr_variants_every_input(name, regs, opts):
    cfg = preset(name)
    _check(cfg, SR_REGS[regs](cfg), *_all_inputs(cfg), opts)


@pytest.mark.parametrize("regs", list(SR_REGS), ids=list(SR_REGS))
@pytest.mark.parametrize("opts", OPTS, ids=OPT_IDS)
def test_w4_lpf_every_state_grad_and_sr_input(regs, opts):
    """Every accumulator word, gradient and SR input; Gaussian indices: all under LPSGLD_SOAK=1."""
    cfg = preset("w4-lpf")
    g = cfg.fields["gauss"]
    gauss = np.arange(1 << g.width) if SOAK else np.array([0, 1, 9, 27, 36, 54, 62, 63])
    _check(cfg, SR_REGS[regs](cfg), *_all_inputs(cfg, gauss), opts)
