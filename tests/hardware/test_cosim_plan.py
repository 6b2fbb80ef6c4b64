"""The co-simulation testbench's own parts, without a simulator: beat packing, the expected-value
model for arbitrary keep masks, the register map and the stimulus plan."""

from dataclasses import replace

import numpy as np
import pytest

from emulator.engines.numpy_engine import NumpyEngine
from emulator.spec.datapath import StepRegisters, update
from emulator.spec.presets import preset
from emulator.spec.rng import LaneRng
from hw.verify.beats import BeatLayout
from hw.verify.case import CosimCase, Design
from hw.verify.plan import (
    ADDR_RNG,
    call_beats,
    junk_writes,
    make_plan,
    random_registers,
    random_words,
    register_widths,
    register_writes,
    seed_writes,
    step_lanes,
)


@pytest.mark.parametrize("name,lanes", [("w4-vc", 1), ("w8-lpf", 4), ("w16-sgd-f", 8), ("w16-vc", 3)])
def test_pack_unpack_round_trip(name, lanes):
    cfg = preset(name, lanes)
    lay = BeatLayout.of(cfg)
    rng = np.random.default_rng(1)
    keep = rng.random((50, lanes)) < 0.5
    th = random_words(cfg.state, rng, keep.shape)
    g = random_words(cfg.grad, rng, keep.shape)
    w = random_words(cfg.weight, rng, keep.shape)
    beats = lay.pack_sink(keep, th, g)
    assert all(0 <= b < 1 << lay.sink_width for b in beats)
    k2, th2, g2 = lay.unpack_sink(beats)
    assert np.array_equal(k2, keep) and np.array_equal(th2, th) and np.array_equal(g2, g)
    k3, s3, w3 = lay.unpack_source(lay.pack_source(keep, th, w))
    assert np.array_equal(k3, keep) and np.array_equal(s3, th) and np.array_equal(w3, w)


def test_pack_sink_bit_positions():
    """Contract layout, LSB first: keep, theta lanes, grad lanes (two's complement)."""
    lay = BeatLayout(lanes=2, state_width=4, grad_width=3, weight_width=4)
    beat = lay.pack_sink(np.array([[True, False]]), np.array([[-1, 2]]), np.array([[3, -4]]))[0]
    assert beat == 0b01 | (0xF << 2) | (0x2 << 6) | (0x3 << 10) | (0x4 << 13)


def test_unpack_rejects_wide_beats():
    with pytest.raises(ValueError, match="outside 9 bits"):
        BeatLayout(1, 4, 4, 4).unpack_source([1 << 9])


def test_call_beats_keep_masks():
    assert call_beats(5, 2).tolist() == [[True, True], [True, True], [True, False]]
    assert call_beats(3, 4).tolist() == [[True, True, True, False]]
    assert call_beats(8, 4).all()


@pytest.mark.parametrize("name", ["w8-vc", "w4-lpf", "w16-naive"])
def test_step_lanes_equals_engine_on_calls(name):
    cfg = preset(name, 4)
    rng = np.random.default_rng(2)
    regs = random_registers(cfg, name.split("-")[0], rng)
    keep = call_beats(37, 4)
    th = random_words(cfg.state, rng, keep.shape)
    g = random_words(cfg.grad, rng, keep.shape)
    a, b = NumpyEngine(cfg, 5), NumpyEngine(cfg, 5)
    st, wt = step_lanes(a, keep, th, g, regs)
    r = b.step(th.ravel()[:37], g.ravel()[:37], regs)
    assert np.array_equal(st.ravel()[:37], r.state) and np.array_equal(wt.ravel()[:37], r.weight)
    assert a.rng == b.rng


@pytest.mark.parametrize("name", ["w8-vc", "w8-naive", "w4-sgd-f"])
def test_step_lanes_matches_beat_by_beat_kernel(name):
    """Arbitrary keep masks: a lane steps its generators only for the elements it takes."""
    cfg = preset(name, 3)
    rng = np.random.default_rng(3)
    regs = random_registers(cfg, name.split("-")[0], rng)
    keep = rng.random((20, 3)) < 0.5
    th = random_words(cfg.state, rng, keep.shape)
    g = random_words(cfg.grad, rng, keep.shape)
    st, wt = step_lanes(NumpyEngine(cfg, 9), keep, th, g, regs)
    lanes = LaneRng.seeded(cfg.rng, 9, 3, cfg.rng_words)
    for b in range(20):
        for lane in range(3):
            if keep[b, lane]:
                one = LaneRng(cfg.rng, lanes.s0[lane:lane + 1], lanes.s1[lane:lane + 1])
                words = one.next()
                lanes.s0[lane], lanes.s1[lane] = one.s0[0], one.s1[0]
                r = update(cfg, th[b:b + 1, lane], g[b:b + 1, lane], regs, words)
                assert (st[b, lane], wt[b, lane]) == (r.state[0], r.weight[0])


def test_register_writes_follow_the_contract_map():
    cfg = preset("w8-vc", 2)
    regs = StepRegisters(step=33554, decay=7, noise=5091, vc_noise=True, vc_var=100)
    writes = register_writes(cfg, regs, np.random.default_rng(0))
    widths = register_widths(cfg)
    got = {a: d & ((1 << widths[a]) - 1) for a, d in writes}
    assert got == {0: 33554, 1: 7, 2: 5091, 3: 100, 4: 1}
    assert any(d >> widths[a] for a, d in writes)  # junk above the register's width


def test_register_writes_unused_registers_get_junk():
    cfg = preset("w8-sgd-l", 1)
    writes = dict(register_writes(cfg, StepRegisters(step=5), np.random.default_rng(0)))
    assert set(register_widths(cfg)) == {0, 1}
    assert writes[0] & 0xFFFF == 5
    with pytest.raises(ValueError, match="not used"):
        register_writes(cfg, StepRegisters(step=5, noise=1), np.random.default_rng(0))


def test_seed_writes_load_every_stream():
    cfg = replace(preset("w8-naive", 3), rng_words=2)
    writes = seed_writes(cfg, 77)
    r = LaneRng.seeded(cfg.rng, 77, 3, 2)
    assert [a for a, _ in writes] == list(range(ADDR_RNG, ADDR_RNG + 12))
    assert [d for _, d in writes[0::2]] == [int(x) for x in r.s0.ravel()]
    assert [d for _, d in writes[1::2]] == [int(x) for x in r.s1.ravel()]
    # stream j = lane * rng_words + k
    assert writes[2 * 3][1] == int(r.s0[1, 1])


def test_junk_writes_avoid_the_map():
    cfg = preset("w8-vc", 4)
    used = set(register_widths(cfg)) | set(range(ADDR_RNG, ADDR_RNG + 2 * 4))
    for seed in range(20):
        for addr, _ in junk_writes(cfg, np.random.default_rng(seed)):
            assert addr not in used and 0 <= addr < 1 << 16


@pytest.mark.parametrize("name", ["w8-vc", "w4-vc", "w16-lpf", "w8-sgd-l"])
def test_random_registers_are_legal_and_cover_vc_branches(name):
    cfg = preset(name, 1)
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(60):
        regs = random_registers(cfg, name.split("-")[0], rng)
        cfg.check_registers(regs)
        seen.add(regs.vc_noise)
        assert random_registers(cfg, name.split("-")[0], rng, branch=False).vc_noise is False
    assert seen == ({True, False} if name.endswith("vc") else {False})


def test_random_words_hit_the_extremes():
    fmt = preset("w8-vc").weight
    w = random_words(fmt, np.random.default_rng(5), (2000,))
    assert w.min() == fmt.min_word and w.max() == fmt.max_word


def test_plan_is_deterministic_and_covers_the_script():
    case = CosimCase(Design.of("w8-vc", 4), stream_seed=11, segments=8)
    a, b = make_plan(case), make_plan(case)
    assert [s.sink_words for s in a.segments] == [s.sink_words for s in b.segments]
    segs = a.segments
    assert segs[0].regs == StepRegisters(0) and not segs[0].writes  # reset values
    assert {segs[1].regs.vc_noise, segs[2].regs.vc_noise} == {True, False}
    assert "sparse" in segs[3].label and not segs[3].keep.all()
    assert any(a >= ADDR_RNG for a, _ in segs[4].writes)  # seed load
    assert segs[5].reset_after is not None and segs[6].engine_seed == "reset seed 0"
    assert segs[7].reset_before
    for s in segs:
        k = s.keep.sum(axis=1)
        if "call" in s.label:  # tensor calls: full beats, then a partial last beat
            assert (k[:-1] == 4).all() and 1 <= k[-1] <= 4
    other = make_plan(replace(case, stream_seed=12))
    assert [s.sink_words for s in other.segments] != [s.sink_words for s in segs]


def test_case_json_round_trip():
    case = CosimCase(Design.of("w8-vc", 4, sr_bits=3, gaussian=dict(kind="table", terms=6, index_bits=8, frac=8),
                               rng_words=2), stream_seed=3, p_gap=0.5)
    again = CosimCase.from_json(case.to_json())
    assert again == case
    assert again.design.config().rng_words == 2 and again.design.config().gaussian.terms == 6
    assert case.design.name == "w8-vc_l4_g6x8_rw2_sr3"
