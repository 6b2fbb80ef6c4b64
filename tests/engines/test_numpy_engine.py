"""The numpy engine: element order, stream continuation, determinism, validation, resume."""

import json
import pathlib

import numpy as np
import pytest

from emulator.engines.numpy_engine import NumpyEngine
from emulator.engines.vectors import run_case, vector_cases
from emulator.spec.datapath import StepRegisters, update
from emulator.spec.host import HyperParams, step_registers
from emulator.spec.presets import preset
from emulator.spec.rng import LaneRng

GOLDEN = pathlib.Path(__file__).parent / "golden" / "vectors.json"


def reference_steps(cfg, seed, theta, grads, regs):
    """Cycle-by-cycle model: one generator output per lane per consumed element, one element at a time."""
    rng = LaneRng.seeded(cfg.rng, seed, cfg.lanes, cfg.rng_words)
    gens = [[(int(rng.s0[i, k]), int(rng.s1[i, k])) for k in range(cfg.rng_words)] for i in range(cfg.lanes)]
    outs = []
    theta = np.asarray(theta, dtype=np.int64)
    for grad in grads:
        new = np.empty_like(theta)
        weight = np.empty_like(theta)
        for i in range(theta.size):
            lane = i % cfg.lanes
            words = []
            for k, (s0, s1) in enumerate(gens[lane]):
                words.append(cfg.rng.output(s0, s1))
                gens[lane][k] = cfg.rng.next_state(s0, s1)
            r = update(cfg, theta[i : i + 1], np.asarray(grad[i : i + 1]), regs, np.array([words], dtype=np.uint64))
            new[i], weight[i] = r.state[0], r.weight[0]
        outs.append((new.copy(), weight.copy()))
        theta = new
    return outs


@pytest.mark.parametrize(
    ("name", "lanes", "n"),
    [("w8-vc", 1, 7), ("w8-vc", 4, 10), ("w8-naive", 3, 3), ("w8-lpf", 5, 12), ("w4-sgd-f", 2, 9)],
)
def test_engine_equals_cycle_by_cycle_model(name, lanes, n):
    cfg = preset(name, lanes)
    regs = step_registers(cfg, HyperParams(2e-3 if name.startswith("w8") else 0.25))
    rng = np.random.default_rng(1)
    theta = rng.integers(cfg.state.min_word, cfg.state.max_word + 1, n)
    grads = rng.integers(cfg.grad.min_word, cfg.grad.max_word + 1, (3, n))
    eng = NumpyEngine(cfg, 99)
    got = []
    th = theta
    for g in grads:
        r = eng.step(th, g, regs)
        got.append((r.state, r.weight))
        th = r.state
    ref = reference_steps(cfg, 99, theta, grads, regs)
    for (a, b), (c, d) in zip(got, ref, strict=True):
        assert np.array_equal(a, c) and np.array_equal(b, d)


def test_chunked_jump_path_equals_single_stepping():
    """Few lanes, many cycles: the jump-ahead chunking gives the same words as stepping."""
    cfg = preset("w8-vc", lanes=2)
    regs = step_registers(cfg, HyperParams(2e-3))
    n = 40_001
    theta = np.zeros(n, dtype=np.int64)
    grad = np.arange(n, dtype=np.int64) % 200 - 100
    eng = NumpyEngine(cfg, 5)
    got = eng.step(theta, grad, regs).state
    rng = LaneRng.seeded(cfg.rng, 5, 2)
    words = np.concatenate([rng.next() for _ in range(20_001)])[:n]
    assert np.array_equal(got, update(cfg, theta, grad, regs, words).state)
    rng2 = LaneRng.seeded(cfg.rng, 5, 2)
    rng2.advance(np.array([20_001, 20_000]))
    assert eng.rng == rng2


def test_deterministic_and_seed_sensitive():
    cfg = preset("w8-vc", lanes=8)
    regs = step_registers(cfg, HyperParams(2e-3))
    theta = np.arange(-64, 64, dtype=np.int64)
    a = NumpyEngine(cfg, 1).step(theta, theta, regs).state
    b = NumpyEngine(cfg, 1).step(theta, theta, regs).state
    c = NumpyEngine(cfg, 2).step(theta, theta, regs).state
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shape_preserved():
    cfg = preset("w8-naive", lanes=4)
    regs = step_registers(cfg, HyperParams(1e-3))
    theta = np.zeros((3, 5), dtype=np.int32)
    r = NumpyEngine(cfg, 0).step(theta, theta, regs)
    assert r.state.shape == (3, 5) and r.state.dtype == np.int64


def test_resume_from_state_dict_is_bit_identical():
    cfg = preset("w8-vc", lanes=4)
    regs = step_registers(cfg, HyperParams(1e-4))
    theta = np.zeros(50, dtype=np.int64)
    run = NumpyEngine(cfg, 3)
    for _ in range(3):
        theta = run.step(theta, theta, regs).state
    saved = run.state_dict()
    cont = run.step(theta, theta, regs).state
    resumed = NumpyEngine(cfg, 0)
    resumed.load_state_dict(saved)
    assert np.array_equal(resumed.step(theta, theta, regs).state, cont)
    with pytest.raises(ValueError, match=r"state_dict was saved for configuration DatapathConfig\(.*lanes=4\), this "
                                         r"engine runs DatapathConfig\(.*lanes=2\)"):
        NumpyEngine(preset("w8-vc", lanes=2), 0).load_state_dict(saved)


@pytest.mark.parametrize(
    ("theta", "grad", "exc", "msg"),
    [
        (np.array([0, 200]), np.array([0, 0]), ValueError, r"theta word 200 outside Q\(8,3\) range \[-128, 127\]"),
        (np.array([0, 0]), np.array([0, -129]), ValueError, r"grad word -129 outside Q\(8,3\) range"),
        (np.array([0.5, 0]), np.array([0, 0]), TypeError, r"theta must be an integer array for Q\(8,3\), got dtype"),
        (np.zeros(3, np.int64), np.zeros(4, np.int64), ValueError, r"theta shape \(3,\) != grad shape \(4,\)"),
    ],
)
def test_bad_inputs(theta, grad, exc, msg):
    cfg = preset("w8-vc")
    eng = NumpyEngine(cfg, 0)
    with pytest.raises(exc, match=msg):
        eng.step(theta, grad, step_registers(cfg, HyperParams(1e-3)))


def test_bad_engine_arguments():
    with pytest.raises(TypeError, match="cfg must be a DatapathConfig, got dict"):
        NumpyEngine({}, 0)  # type: ignore[arg-type]
    cfg = preset("w8-vc", lanes=2)
    with pytest.raises(ValueError, match="rng does not match"):
        NumpyEngine(cfg, 0, rng=LaneRng.seeded(cfg.rng, 0, 3))
    with pytest.raises(TypeError, match="registers must be StepRegisters"):
        NumpyEngine(cfg, 0).step(np.zeros(2, np.int64), np.zeros(2, np.int64), (1, 0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"register step=70000 exceeds"):
        NumpyEngine(cfg, 0).step(np.zeros(2, np.int64), np.zeros(2, np.int64), StepRegisters(70000))


def test_empty_input():
    cfg = preset("w8-vc", lanes=2)
    eng = NumpyEngine(cfg, 0)
    before = eng.rng.copy()
    r = eng.step(np.zeros(0, np.int64), np.zeros(0, np.int64), step_registers(cfg, HyperParams(1e-3)))
    assert r.state.size == 0 and eng.rng == before


def test_golden_vectors_pin_the_arithmetic():
    data = json.loads(GOLDEN.read_text())
    cases = data["cases"]
    fresh = vector_cases()
    assert len(cases) == len(fresh) == 90
    for stored, new in zip(cases, fresh, strict=True):
        assert {k: v for k, v in stored.items() if k != "expected"} == new  # same inputs
        assert run_case(stored) == stored["expected"], (stored["config"], stored["lanes"], stored["case"])
    branches = {(c["config"], c["registers"]["vc_noise"]) for c in cases if c["config"].endswith("-vc")}
    assert {b for _, b in branches} == {True, False}  # both VC branches are pinned


@pytest.mark.parametrize(
    ("theta", "grad", "regs"),
    [
        (np.array([0, 200]), np.array([0, 0]), None),
        (np.array([0.5, 0]), np.array([0, 0]), None),
        (np.zeros(3, np.int64), np.zeros(4, np.int64), None),
        (np.zeros(2, np.int64), np.zeros(2, np.int64), StepRegisters(70000)),
    ],
)
def test_rejected_step_leaves_the_random_state_alone(theta, grad, regs):
    cfg = preset("w8-vc", lanes=2)
    eng = NumpyEngine(cfg, 0)
    before = eng.rng.copy()
    with pytest.raises((ValueError, TypeError)):
        eng.step(theta, grad, regs or step_registers(cfg, HyperParams(1e-3)))
    assert eng.rng == before


def test_two_generator_words_and_more_lanes_than_elements():
    from emulator.spec.datapath import DatapathConfig
    from emulator.spec.formats import FixedFormat

    cfg = DatapathConfig("naive", sr_bits=40, noise=FixedFormat(16, 30, signed=False), rng_words=2, lanes=7)
    regs = step_registers(cfg, HyperParams(1e-3, temperature=1e-6))
    assert regs.noise > 0 and cfg.fields["gauss"].word == 1
    rng = np.random.default_rng(4)
    theta = rng.integers(-128, 128, 5)
    grads = rng.integers(-128, 128, (3, 5))
    eng = NumpyEngine(cfg, 8)
    th, got = theta, []
    for g in grads:
        th = eng.step(th, g, regs).state
        got.append(th)
    ref = reference_steps(cfg, 8, theta, grads, regs)
    assert all(np.array_equal(a, r[0]) for a, r in zip(got, ref, strict=True))
    expected = LaneRng.seeded(cfg.rng, 8, 7, 2)
    expected.advance(np.array([3, 3, 3, 3, 3, 0, 0]))
    assert eng.rng == expected  # idle lanes did not move


def test_numpy_integer_registers_behave_like_python_ints():
    from emulator.analysis.exact import update_distribution

    cfg = preset("w8-naive")
    regs = step_registers(cfg, HyperParams(2e-3))
    for kind in (np.int32, np.uint64):
        npregs = StepRegisters(kind(regs.step), 0, kind(regs.noise))
        assert npregs == regs and type(npregs.step) is int
        assert update_distribution(cfg, 13, -37, npregs) == update_distribution(cfg, 13, -37, regs)
        a = NumpyEngine(cfg, 1).step(np.arange(-50, 50), np.arange(100) - 50, npregs).state
        b = NumpyEngine(cfg, 1).step(np.arange(-50, 50), np.arange(100) - 50, regs).state
        assert np.array_equal(a, b)


def test_kernel_rejects_non_int64_words_and_vc_registers_elsewhere():
    cfg = preset("w8-lpf")
    regs = step_registers(cfg, HyperParams(2e-3))
    words = np.zeros((1, 1), dtype=np.uint64)
    with pytest.raises(TypeError, match="update\\(\\) needs int64 theta words, got int32"):
        update(cfg, np.array([13 << 13], np.int32), np.array([-37]), regs, words)
    with pytest.raises(ValueError, match="registers vc_noise=False, vc_var=5 are VC-only; variant is 'lp_f'"):
        cfg.check_registers(StepRegisters(1, 0, 0, False, 5))
