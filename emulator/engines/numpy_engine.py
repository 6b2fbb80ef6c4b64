"""The vectorized numpy engine: lanes, element order, random streams and the update.

Element order (normative): a call streams the flattened tensor through the
``L`` lanes starting at lane 0; element ``i`` goes to lane ``i mod L`` at cycle
``i div L``. A lane's generator advances exactly once per element it consumes,
so after ``M`` elements lane ``l`` has advanced ``ceil((M - l) / L)`` updates.

Speed: the generator is F2-linear, so the engine jumps each lane ahead to the
start of ``K`` chunks of cycles and steps all ``K * L`` chunk states together
(:func:`stream_words`); the output is identical to stepping each lane cycle by
cycle, which the tests check.

Paths: ``path="kernel"`` (default) runs the compiled lane kernel
(:func:`emulator.engines.cpu_kernels.fixed_update`: one loop per lane block, no stored
words); ``path="reference"`` is the readable code below (:func:`stream_words` and
:func:`emulator.spec.datapath.update`). Both give the same words and lane states.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..spec import gf2
from ..spec.datapath import DatapathConfig, StepRegisters, UpdateResult, update
from ..spec.rng import LaneRng, vec
from . import cpu_kernels

_VIRTUAL_LANES = 1 << 14  # parallel chunk states to aim for when lanes are few
_BLOCK = 1 << 13  # elements per kernel block: temporaries stay in L2 (measured best of 4K..128K)
PATHS = ("kernel", "reference")


def check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return path


def stream_words(rng: LaneRng, n: int) -> np.ndarray:
    """Random words for elements 0..n-1 in element order, shape (n, words); advances ``rng``.

    Equal to calling ``rng.next()`` once per cycle and keeping lanes
    ``0 .. min(L, n - c*L) - 1`` of cycle ``c``.
    """
    lanes, words = rng.lanes, rng.words
    if n < 0:
        raise ValueError(f"element count must be >= 0, got {n}")
    if n == 0:
        return np.empty((0, words), dtype=np.uint64)
    v = vec(rng.spec)
    cycles = -(-n // lanes)
    busy = n - (cycles - 1) * lanes  # lanes that take part in the last cycle
    start0, start1 = rng.s0, rng.s1
    if cycles == 1:
        out = v.output(start0[:n], start1[:n])
    else:
        chunks = max(1, min(cycles, _VIRTUAL_LANES // lanes))
        per = -(-cycles // chunks)
        chunks = -(-cycles // per)
        s0, s1 = _spread(rng, chunks, per)  # (chunks, lanes, words)
        buf = np.empty((chunks, per, lanes, words), dtype=np.uint64)
        for b in range(per):
            buf[:, b], s0, s1 = v.output_step(s0, s1)
        out = buf.reshape(-1, words)[:n]  # a view: element order is (chunk, cycle, lane)
    _advance(rng, slice(0, busy), cycles)
    _advance(rng, slice(busy, lanes), cycles - 1)
    return out


def _advance(rng: LaneRng, lanes: slice, n: int) -> None:
    if n == 0 or lanes.start == lanes.stop:
        return
    v = vec(rng.spec)
    s0, s1 = rng.s0[lanes], rng.s1[lanes]
    rng.s0[lanes], rng.s1[lanes] = v.step(s0, s1) if n == 1 else v.jump(s0, s1, n)


def _spread(rng: LaneRng, chunks: int, spacing: int) -> tuple[np.ndarray, np.ndarray]:
    """Lane states jumped by c*spacing for c in [0, chunks), shape (chunks, lanes, words)."""
    v = vec(rng.spec)
    p = rng.spec.charpoly
    poly = rng.spec.jump_poly(spacing)
    c0, c1 = rng.s0[None].copy(), rng.s1[None].copy()
    while c0.shape[0] < chunks:
        n0, n1 = v.apply_poly(c0, c1, poly)
        c0 = np.concatenate([c0, n0])
        c1 = np.concatenate([c1, n1])
        poly = gf2.mulmod(poly, poly, p)  # jump distance doubles with the stack
    return c0[:chunks], c1[:chunks]


def check_rng_layout(cfg: Any, rng: Any, *, loaded: bool = False) -> None:
    """Raise ValueError unless ``rng`` (a LaneRng or TorchLaneRng) has ``cfg``'s generator, lanes and words.

    Shared by every engine's constructor (``loaded=False``) and ``load_state_dict`` (``loaded=True``).
    """
    if (rng.spec, rng.lanes, rng.words) != (cfg.rng, cfg.lanes, cfg.rng_words):
        if loaded:
            raise ValueError("state_dict was saved for a different generator, lane count or rng_words")
        raise ValueError("rng does not match the configuration's generator, lanes or rng_words")


STATE_FORMAT = 1  # version of every engine's state dict layout


@contextlib.contextmanager
def transaction(*rngs: Any) -> Iterator[None]:
    """Restore the lane states of ``rngs`` (LaneRng or TorchLaneRng) when the body raises.

    A step that fails after drawing its random words (out of memory, a bad register found late,
    an interrupt) leaves the engine exactly as it was: the next step equals a fresh engine's.
    """
    saved = [(r.s0.copy() if isinstance(r.s0, np.ndarray) else r.s0.clone(),
              r.s1.copy() if isinstance(r.s1, np.ndarray) else r.s1.clone()) for r in rngs]
    try:
        yield
    except BaseException:
        for r, (s0, s1) in zip(rngs, saved, strict=True):
            r.s0, r.s1 = s0, s1
        raise


def engine_state(cfg: Any, rng_state: dict[str, Any]) -> dict[str, Any]:
    """An engine's state dict: the lane states plus the configuration's identity and the format version."""
    return {"format": STATE_FORMAT, "config": repr(cfg), "rng": rng_state}


def check_engine_state(cfg: Any, state: Any) -> dict[str, Any]:
    """The ``rng`` entry of ``state`` after checking it was saved by an engine of configuration ``cfg``.

    A state dict of format 0 (saved before format versions existed: ``{'rng': ...}`` only) still loads; it
    carries no configuration identity, so only the generator, lane count and words are checked."""
    if not isinstance(state, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    if set(state) == {"rng"}:  # format 0 (before format versions): lane states only; the caller checks their layout
        legacy: dict[str, Any] = state["rng"]
        return legacy
    missing = [k for k in ("format", "config", "rng") if k not in state]
    if missing:
        raise ValueError(f"state_dict lacks {missing} (keys present: {sorted(state)}); it was not saved by "
                         f"an engine of this version")
    if state["format"] != STATE_FORMAT:
        raise ValueError(f"state_dict format {state['format']!r}, this engine reads format {STATE_FORMAT}")
    if state["config"] != repr(cfg):
        raise ValueError(f"state_dict was saved for configuration {state['config']}, this engine runs {cfg!r}")
    rng_state: dict[str, Any] = state["rng"]
    return rng_state


class NumpyEngine:
    """Runs a :class:`DatapathConfig` on numpy arrays, bit-exact to the hardware.

    >>> eng = NumpyEngine(cfg, seed=1)                    # doctest: +SKIP
    >>> new = eng.step(theta_words, grad_words, regs)     # doctest: +SKIP

    ``path``: ``"kernel"`` (default, compiled) or ``"reference"`` (numpy); same words.
    """

    def __init__(self, cfg: DatapathConfig, seed: int, *, rng: LaneRng | None = None, path: str = "kernel"):
        if not isinstance(cfg, DatapathConfig):
            raise TypeError(f"cfg must be a DatapathConfig, got {type(cfg).__name__}")
        self.path = check_path(path)
        self.cfg = cfg
        if rng is None:
            rng = LaneRng.seeded(cfg.rng, seed, cfg.lanes, cfg.rng_words)
        else:
            check_rng_layout(cfg, rng)
        self.rng = rng

    def step(self, theta: np.ndarray, grad: np.ndarray, regs: StepRegisters) -> UpdateResult:
        """One SGLD update of every element; returns new state words and emitted weight words."""
        cfg = self.cfg
        cfg.check_registers(regs)
        th = cfg.state.check_words(theta, "theta")
        g = cfg.grad.check_words(grad, "grad")
        if th.shape != g.shape:
            raise ValueError(f"theta shape {th.shape} != grad shape {g.shape}")
        shape = th.shape
        th = th.ravel()
        g = g.ravel()
        if self.path == "kernel":
            state = np.empty_like(th)
            weight = state if not cfg.variant.has_accumulator else np.empty_like(th)
            s0, s1 = self.rng.s0.copy(), self.rng.s1.copy()
            cpu_kernels.fixed_update(cfg, regs, s0, s1, th, g, state, weight)
            self.rng.s0, self.rng.s1 = s0, s1  # only after the kernel finished: a failed call changes nothing
            return UpdateResult(state.reshape(shape), weight.reshape(shape))
        with transaction(self.rng):  # a step that raises leaves the lanes as they were
            words = stream_words(self.rng, th.size)
            state = np.empty_like(th)
            weight = state if not cfg.variant.has_accumulator else np.empty_like(th)
            for lo in range(0, th.size, _BLOCK):
                hi = min(lo + _BLOCK, th.size)
                r = update(cfg, th[lo:hi], g[lo:hi], regs, words[lo:hi])
                state[lo:hi] = r.state
                if weight is not state:
                    weight[lo:hi] = r.weight
        return UpdateResult(state.reshape(shape), weight.reshape(shape))

    def state_dict(self) -> dict[str, Any]:
        """The lane states, the configuration's identity (``repr``) and the state format version."""
        return engine_state(self.cfg, self.rng.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ValueError when it was saved for another configuration or format."""
        rng = LaneRng.from_state_dict(check_engine_state(self.cfg, state))
        check_rng_layout(self.cfg, rng, loaded=True)
        self.rng = rng
