"""The stimulus of a co-simulation run and its expected output words, from the numpy engine.

A run is a list of :class:`Segment`: optional reset, control writes (registers, a seed load,
junk to unmapped addresses), then one stream of input beats. Every random choice comes from
one ``numpy.random.Generator`` seeded by the case's ``stream_seed``. Expected words are
computed vectorized with :class:`emulator.engines.numpy_engine.NumpyEngine` before simulation:

* a tensor call (keep = the low ``M - (beats-1) L`` bits on the last beat) is
  ``engine.step`` on the flat tensor, exactly as a host would call it;
* a stream of arbitrary keep masks (holes, all-zero beats) is stepped lane by lane: lane
  ``l`` is a one-lane engine holding lane ``l``'s generator states, fed the elements whose
  keep bit is set (a lane steps once per element it consumes), then written back;
* a reset restarts from ``NumpyEngine(cfg, reset_seed)`` with zero registers, a seed load of
  ``n`` from ``NumpyEngine(cfg, n)``.

The register map and the seed writes follow HW_CONTRACT directly (not ``hw.control``), so
the testbench checks the map instead of sharing its author's reading of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from emulator.engines.numpy_engine import NumpyEngine
from emulator.spec.datapath import DatapathConfig, StepRegisters, Variant
from emulator.spec.formats import FixedFormat
from emulator.spec.host import HyperParams, step_registers
from emulator.spec.presets import _CASES
from emulator.spec.rng import LaneRng

from .beats import BeatLayout
from .case import CosimCase

ADDR_STEP, ADDR_DECAY, ADDR_NOISE, ADDR_VC_VAR, ADDR_VC_NOISE = 0x0000, 0x0001, 0x0002, 0x0003, 0x0004
ADDR_RNG = 0x0100
MASK64 = (1 << 64) - 1


def register_widths(cfg: DatapathConfig) -> dict[int, int]:
    """Contract widths of the registers this configuration uses (address -> bits)."""
    out = {ADDR_STEP: cfg.step.width}
    if cfg.decay is not None:
        out[ADDR_DECAY] = cfg.decay.width
    if cfg.variant.has_gaussian:
        out[ADDR_NOISE] = cfg.noise.width
    if cfg.variant is Variant.VC:
        out[ADDR_VC_VAR] = 2 * cfg.vc_frac_bits - 1
        out[ADDR_VC_NOISE] = 1
    return out


def register_writes(cfg: DatapathConfig, regs: StepRegisters, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Writes loading ``regs``: used registers carry random junk above their width (the
    register takes the low bits it needs); unused ones get pure junk (writes are ignored)."""
    values = {ADDR_STEP: regs.step, ADDR_DECAY: regs.decay, ADDR_NOISE: regs.noise,
              ADDR_VC_VAR: regs.vc_var, ADDR_VC_NOISE: int(regs.vc_noise)}
    widths = register_widths(cfg)
    out = []
    for addr in (ADDR_STEP, ADDR_DECAY, ADDR_NOISE, ADDR_VC_VAR, ADDR_VC_NOISE):
        junk = int(rng.integers(0, 1 << 63)) * 2 + int(rng.integers(0, 2))
        if addr in widths:
            w = widths[addr]
            out.append((addr, (values[addr] | (junk << w)) & MASK64))
        else:
            if values[addr]:
                raise ValueError(f"register {addr:#x}={values[addr]} is not used by {cfg.variant.value}")
            out.append((addr, junk))
    return out


def seed_writes(cfg: DatapathConfig, seed: int) -> list[tuple[int, int]]:
    """The host's seed load: ``LaneRng.seeded(cfg.rng, seed, L, words)`` into every stream."""
    r = LaneRng.seeded(cfg.rng, seed, cfg.lanes, cfg.rng_words)
    out = []
    for j, (s0, s1) in enumerate(zip(r.s0.ravel(), r.s1.ravel(), strict=True)):
        out += [(ADDR_RNG + 2 * j, int(s0)), (ADDR_RNG + 2 * j + 1, int(s1))]
    return out


def junk_writes(cfg: DatapathConfig, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Writes to addresses outside the map: they must change nothing."""
    streams = cfg.lanes * cfg.rng_words
    addrs = [0x0005, 0x00FF, ADDR_RNG + 2 * streams, ADDR_RNG + 2 * streams + 1, 0x8000, 0x8100, 0xFFFF,
             ADDR_RNG - 1]
    pick = rng.choice(len(addrs), size=3, replace=False)
    return [(addrs[i], int(rng.integers(0, 1 << 63)) * 2 + 1) for i in sorted(pick)]


# ---- random values --------------------------------------------------------------------


def random_words(fmt: FixedFormat, rng: np.random.Generator, shape: tuple[int, ...], tie_bits: int = 0) -> np.ndarray:
    """Words of ``fmt``: uniform, small (|w| <= 4), the format's extremes and, with ``tie_bits`` = d > 0,
    words whose low d bits are a rounding corner (2^(d-1), 2^(d-1) - 1, 0, 2^d - 1): ties of RN(w, d)."""
    lo, hi = fmt.min_word, fmt.max_word
    uniform = rng.integers(lo, hi, size=shape, endpoint=True)
    small = np.clip(rng.integers(-4, 4, size=shape, endpoint=True), lo, hi)
    corners = np.array([lo, lo + 1, hi - 1, hi], dtype=np.int64)[rng.integers(0, 4, size=shape)]
    mode = rng.random(shape)
    out = np.where(mode < 0.55, uniform, np.where(mode < 0.75, small, corners))
    if tie_bits > 0:
        d = tie_bits
        low = np.array([1 << (d - 1), (1 << (d - 1)) - 1, 0, (1 << d) - 1], dtype=np.int64)
        low = low[rng.integers(0, 4, size=shape)]
        ties = (rng.integers(lo >> d, hi >> d, size=shape, endpoint=True) << d) | low
        out = np.where(mode >= 0.85, ties, out)
    return out.astype(np.int64)


def _reg_value(fmt: FixedFormat | None, rng: np.random.Generator, style: str) -> int:
    if fmt is None:
        return 0
    if style == "max":
        return fmt.max_word
    if style == "zero":
        return 0
    if style == "pow2":  # products land exactly on rounding ties and grid points
        return 1 << int(rng.integers(0, fmt.width))
    if rng.random() < 0.5:  # small values keep the update near the grid (rounding corners)
        return int(rng.integers(0, min(fmt.max_word, 64), endpoint=True))
    return int(rng.integers(0, fmt.max_word, endpoint=True))


def random_registers(
    cfg: DatapathConfig, family: str | None, rng: np.random.Generator, branch: bool | None = None
) -> StepRegisters:
    """A legal register set: the host's answer for a golden hyper-parameter case, or random
    words, powers of two (exact rounding ties), or format extremes (large step: saturation).
    ``branch`` forces VC's vc_noise."""
    style = str(rng.choice(["host", "random", "pow2", "max", "zero"], p=[0.3, 0.3, 0.2, 0.1, 0.1]))
    regs = None
    if style == "host" and family is not None:
        lr, temp, n, wd = _CASES[family][int(rng.integers(0, len(_CASES[family])))]
        try:
            regs = step_registers(cfg, HyperParams(lr, temp, n, wd if cfg.decay is not None else 0.0))
        except ValueError:
            regs = None  # the host rejects it for this custom config: use random words
        if regs is not None and branch is not None and cfg.variant is Variant.VC and regs.vc_noise != branch:
            regs = None
    if regs is None:
        s = "random" if style in ("host", "zero") else style
        step = _reg_value(cfg.step, rng, s)
        decay = _reg_value(cfg.decay, rng, s if rng.random() < 0.7 else "zero")
        noise = _reg_value(cfg.noise, rng, s if rng.random() < 0.8 else "zero") if cfg.variant.has_gaussian else 0
        vc_noise, vc_var = False, 0
        if cfg.variant is Variant.VC:
            vc_noise = bool(rng.integers(0, 2)) if branch is None else branch
            vmax = 1 << (2 * cfg.vc_frac_bits - 2)
            vc_var = int(rng.choice([0, vmax, int(rng.integers(0, vmax, endpoint=True))]))
            if not vc_noise:
                noise = 0 if rng.random() < 0.5 else noise  # branch B ignores the Gaussian
        regs = StepRegisters(step, decay, noise, vc_noise, vc_var)
    cfg.check_registers(regs)
    return regs


# ---- segments ---------------------------------------------------------------------------


@dataclass
class Segment:
    """Host actions then one stream of beats, with the expected output of every beat."""

    label: str
    reset_before: bool
    writes: list[tuple[int, int]]
    keep: np.ndarray  # (beats, L) bool
    theta: np.ndarray  # (beats, L) int64 state words
    grad: np.ndarray  # (beats, L) int64
    regs: StepRegisters
    engine_seed: str  # where the expected generator states come from, for messages
    state: np.ndarray  # (beats, L) expected state words (lanes with keep = 1)
    weight: np.ndarray  # (beats, L) expected weight words
    reset_after: int | None = None  # mid-stream reset once this many input beats were accepted
    sink_words: list[int] = field(default_factory=list)
    # corner cases (docs/hardware.md "Reset and seeds"): the first beat is offered while rst is
    # high (it must not be taken: sink__ready = 0 during reset), and generator seed words are
    # written on the edges that transfer given beats (the whole generator holds on such an edge)
    offer_in_reset: bool = False
    write_on_transfer: dict[int, tuple[int, int]] = field(default_factory=dict)  # beat -> (addr, data)

    @property
    def beats(self) -> int:
        return int(self.keep.shape[0])

    @property
    def elements(self) -> int:
        return int(self.keep.sum())


def step_lanes(engine: NumpyEngine, keep: np.ndarray, theta: np.ndarray, grad: np.ndarray,
               regs: StepRegisters) -> tuple[np.ndarray, np.ndarray]:
    """Beats with arbitrary keep masks, lane by lane; advances ``engine``'s generators."""
    cfg = engine.cfg
    one = replace(cfg, lanes=1)
    state = np.zeros_like(theta)
    weight = np.zeros_like(theta)
    for lane in range(cfg.lanes):
        sel = keep[:, lane]
        if not sel.any():
            continue
        sub = NumpyEngine(one, 0, rng=LaneRng(cfg.rng, engine.rng.s0[lane:lane + 1], engine.rng.s1[lane:lane + 1]))
        r = sub.step(theta[sel, lane], grad[sel, lane], regs)
        state[sel, lane] = r.state
        weight[sel, lane] = r.weight
        engine.rng.s0[lane] = sub.rng.s0[0]
        engine.rng.s1[lane] = sub.rng.s1[0]
    return state, weight


def call_beats(elements: int, lanes: int) -> np.ndarray:
    """Keep masks of a tensor call of ``elements`` elements (HW_CONTRACT), shape (beats, L)."""
    idx = np.arange(-(-elements // lanes) * lanes).reshape(-1, lanes)
    return idx < elements


@dataclass
class Plan:
    case: CosimCase
    cfg: DatapathConfig
    layout: BeatLayout
    segments: list[Segment]

    @property
    def elements(self) -> int:
        return sum(s.elements if s.reset_after is None else 0 for s in self.segments)


def _script(case: CosimCase, cfg: DatapathConfig, rng: np.random.Generator) -> list[dict]:
    """The host actions, segment by segment. The first segments are fixed so every short run
    covers: zero registers after reset, both VC branches, a sparse-keep stream, a seed load,
    a mid-stream reset and a reload, a beat offered during reset, a seed word written on a
    transfer edge; the rest are random."""
    vc = cfg.variant is Variant.VC
    fixed: list[dict] = [
        dict(kind="call"),  # registers 0 straight out of reset
        dict(kind="call", regs=True, branch=True if vc else None),
        dict(kind="call", regs=True, branch=False if vc else None),
        dict(kind="sparse", regs=True),
        dict(kind="call", seed=True),
        dict(kind="call", mid_reset=True, regs=True),
        dict(kind="call", regs=True),
        dict(kind="call", seed=True, regs=True, reset_before=True),
        dict(kind="call", regs=True, reset_before=True, offer_in_reset=True),
        dict(kind="call", regs=True, write_on_transfer=True),
    ]
    out = fixed[: case.segments]
    while len(out) < case.segments:
        out.append(_random_action(rng))
    return out


def _random_action(rng: np.random.Generator) -> dict:
    r = rng.random(5)
    return dict(kind="sparse" if r[0] < 0.2 else "call", regs=bool(r[1] < 0.7), seed=bool(r[2] < 0.15),
                mid_reset=bool(r[3] < 0.08), reset_before=bool(r[4] < 0.05))


def _throughput_plan(case: CosimCase, cfg: DatapathConfig, layout: BeatLayout) -> Plan:
    """One register load and one long tensor call of ``case.extra["elements"]`` elements."""
    rng = np.random.default_rng([case.stream_seed, 0x5EED])
    m = int(case.extra["elements"])
    regs = random_registers(cfg, case.design.family, rng, True if cfg.variant is Variant.VC else None)
    keep = call_beats(m, cfg.lanes)
    theta = random_words(cfg.state, rng, keep.shape)
    grad = random_words(cfg.grad, rng, keep.shape)
    r = NumpyEngine(cfg, case.design.reset_seed).step(theta.ravel()[:m], grad.ravel()[:m], regs)
    state = np.zeros(keep.size, np.int64)
    weight = np.zeros(keep.size, np.int64)
    state[:m], weight[:m] = r.state, r.weight
    seg = Segment(f"call of {m} elements", False, register_writes(cfg, regs, rng), keep, theta, grad, regs,
                  f"reset seed {case.design.reset_seed}", state.reshape(keep.shape), weight.reshape(keep.shape))
    seg.sink_words = layout.pack_sink(keep, theta, grad)
    return Plan(case, cfg, layout, [seg])


def make_plan(case: CosimCase) -> Plan:
    """The run's segments; with ``case.extra["elements"]`` one long call (throughput runs)."""
    cfg = case.design.config()
    if "elements" in case.extra:
        return _throughput_plan(case, cfg, BeatLayout.of(cfg))
    layout = BeatLayout.of(cfg)
    L = cfg.lanes
    rng = np.random.default_rng([case.stream_seed, 0x5EED])
    reset_seed = case.design.reset_seed
    engine = NumpyEngine(cfg, reset_seed)
    origin = f"reset seed {reset_seed}"
    regs = StepRegisters(0)
    tie_bits = cfg.state.frac - cfg.weight.frac  # lp_f / sgd_f: the weight is RN(state, tie_bits)
    segments: list[Segment] = []
    actions = _script(case, cfg, rng)
    verified = 0
    i = 0
    while i < len(actions) or verified < case.min_elements:
        act = actions[i] if i < len(actions) else _random_action(rng)
        writes: list[tuple[int, int]] = []
        notes = []
        if act.get("reset_before"):
            engine, regs, origin = NumpyEngine(cfg, reset_seed), StepRegisters(0), f"reset seed {reset_seed}"
            notes.append("reset, a beat offered during reset" if act.get("offer_in_reset") else "reset")
        if act.get("seed"):
            n = int(rng.integers(0, 1 << 64, dtype=np.uint64))
            writes += seed_writes(cfg, n)
            engine, origin = NumpyEngine(cfg, n), f"loaded seed {n}"
            notes.append(f"seed {n}")
        if act.get("regs"):
            regs = random_registers(cfg, case.design.family, rng, act.get("branch"))
            notes.append("regs")
        if act.get("regs") or act.get("seed"):
            writes += register_writes(cfg, regs, rng) if act.get("regs") else []
            writes += junk_writes(cfg, rng)
            order = rng.permutation(len(writes))  # registers, seeds and junk in any order
            writes = [writes[j] for j in order]
        # mostly several beats (every lane gets work), sometimes a single, possibly partial, beat
        beats = 1 if rng.random() < 0.15 else int(rng.integers(2, max(case.max_beats, 2), endpoint=True))
        if act.get("mid_reset"):
            beats = max(beats, 3)
        if act["kind"] == "call":
            m = int(rng.integers((beats - 1) * L + 1, beats * L, endpoint=True))
            keep = call_beats(m, L)
        else:
            keep = rng.random((beats, L)) < 0.6
            keep[rng.random(beats) < 0.15] = False  # whole empty beats
        theta = random_words(cfg.state, rng, keep.shape, tie_bits)
        grad = random_words(cfg.grad, rng, keep.shape)
        # lanes with keep = 0 carry arbitrary words: they must not matter
        wot: dict[int, tuple[int, int]] = {}
        if act.get("write_on_transfer"):
            # every generator gets both words written, each on the transfer edge of its own beat
            gens = [(lane, k, word) for lane in range(L) for k in range(cfg.rng_words) for word in (0, 1)]
            gens = [gens[j] for j in rng.permutation(len(gens))]
            beats = max(beats, len(gens) + 1)
            keep = call_beats(int(rng.integers((beats - 1) * L + 1, beats * L, endpoint=True)), L)
            theta = random_words(cfg.state, rng, keep.shape, tie_bits)
            grad = random_words(cfg.grad, rng, keep.shape)
            at = sorted(int(b) for b in rng.choice(beats - 1, size=len(gens), replace=False))
            parts_s, parts_w = [], []
            start = 0
            for b, (lane, k, word) in zip(at, gens, strict=True):
                data = int(rng.integers(1, 1 << 63)) * 2 + 1
                wot[b] = (ADDR_RNG + 2 * (lane * cfg.rng_words + k) + word, data)
                for lo, hi in ((start, b), (b, b + 1)):
                    if lo == b:
                        held = (int(engine.rng.s0[lane, k]), int(engine.rng.s1[lane, k]))
                    s_, w_ = step_lanes(engine, keep[lo:hi], theta[lo:hi], grad[lo:hi], regs)
                    parts_s.append(s_)
                    parts_w.append(w_)
                # the written word loads; the other word keeps its value from before the edge (no step)
                engine.rng.s0[lane, k] = data if word == 0 else held[0]
                engine.rng.s1[lane, k] = data if word == 1 else held[1]
                start = b + 1
            s_, w_ = step_lanes(engine, keep[start:], theta[start:], grad[start:], regs)
            state, weight = np.concatenate([*parts_s, s_]), np.concatenate([*parts_w, w_])
            notes.append(f"{len(gens)} seed words written on transfer edges")
        elif act["kind"] == "call":
            kf = keep.ravel()
            r = engine.step(theta.ravel()[kf], grad.ravel()[kf], regs)
            state = np.zeros(keep.size, np.int64)
            weight = np.zeros(keep.size, np.int64)
            state[kf], weight[kf] = r.state, r.weight
            state, weight = state.reshape(keep.shape), weight.reshape(keep.shape)
        else:
            state, weight = step_lanes(engine, keep, theta, grad, regs)
        seg = Segment(
            label=f"segment {i} ({act['kind']}, {keep.sum()} elements in {beats} beats{', ' if notes else ''}"
            f"{', '.join(notes)})",
            reset_before=bool(act.get("reset_before")), writes=writes, keep=keep, theta=theta, grad=grad,
            regs=regs, engine_seed=origin, state=state, weight=weight,
            offer_in_reset=bool(act.get("offer_in_reset")), write_on_transfer=wot,
        )
        if act.get("mid_reset"):
            seg.reset_after = int(rng.integers(1, beats))
            seg.label += f", reset after {seg.reset_after} input beats"
            engine, regs, origin = NumpyEngine(cfg, reset_seed), StepRegisters(0), f"reset seed {reset_seed}"
        else:
            verified += seg.elements
        seg.sink_words = layout.pack_sink(keep, theta, grad)
        segments.append(seg)
        i += 1
    return Plan(case, cfg, layout, segments)


def describe_registers(regs: StepRegisters) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(regs).items())


def first_mismatch(
    seg: Segment, keep: np.ndarray, state: np.ndarray, weight: np.ndarray
) -> tuple[int, str] | None:
    """Compare received beats (a prefix of the segment's beats) word by word: (beat, description)
    of the first error, or None."""
    n = keep.shape[0]
    if not np.array_equal(keep, seg.keep[:n]):
        b = int(np.argwhere((keep != seg.keep[:n]).any(axis=1))[0, 0])
        return b, f"beat {b}: keep echo {keep[b].astype(int).tolist()} != input keep {seg.keep[b].astype(int).tolist()}"
    k = seg.keep[:n]
    bad = k & ((state != seg.state[:n]) | (weight != seg.weight[:n]))
    if not bad.any():
        return None
    b, lane = (int(x) for x in np.argwhere(bad)[0])
    element = int(seg.keep[:b].sum() + seg.keep[b, :lane].sum())
    return b, (
        f"{int(bad.sum())} wrong words; first: beat {b} lane {lane} (element {element} of the stream): "
        f"theta={int(seg.theta[b, lane])} grad={int(seg.grad[b, lane])} -> expected state={int(seg.state[b, lane])} "
        f"weight={int(seg.weight[b, lane])}, got state={int(state[b, lane])} weight={int(weight[b, lane])}; "
        f"registers {describe_registers(seg.regs)}; generator states from {seg.engine_seed}"
    )
