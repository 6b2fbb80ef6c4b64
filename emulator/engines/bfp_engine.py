"""The BFP datapath (docs/spec.md section 10) run on numpy BFP tensors, with the fixed datapath's lanes."""

from __future__ import annotations

from typing import Any

from ..spec.bfp import BfpConfig, BfpRegisters, BfpTensor, BfpUpdateResult, check_registers, update
from ..spec.rng import LaneRng
from .numpy_engine import check_engine_state, check_rng_layout, engine_state, stream_words, transaction


class BfpEngine:
    """Runs a :class:`BfpConfig` on numpy BFP tensors, with the fixed datapath's lanes and word stream.

    Element ``i`` of the flattened tensor takes lane ``i mod L`` at cycle ``i div L``
    (:func:`emulator.engines.numpy_engine.stream_words`), exactly as :class:`emulator.engines.numpy_engine.NumpyEngine`.
    """

    def __init__(self, cfg: BfpConfig, seed: int, *, rng: LaneRng | None = None):
        if not isinstance(cfg, BfpConfig):
            raise TypeError(f"cfg must be a BfpConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        if rng is None:
            rng = LaneRng.seeded(cfg.rng, seed, cfg.lanes, cfg.rng_words)
        else:
            check_rng_layout(cfg, rng)
        self.rng = rng

    def step(self, theta: BfpTensor, grad: BfpTensor, regs: BfpRegisters) -> BfpUpdateResult:
        """One update of every element; returns the new state and the emitted weight."""
        cfg = self.cfg
        check_registers(cfg, regs)
        th = cfg.state.check(theta, "theta")
        g = cfg.grad.check(grad, "grad")
        if th.mant.shape != g.mant.shape:
            raise ValueError(f"theta shape {th.mant.shape} != grad shape {g.mant.shape}")
        with transaction(self.rng):  # a step that raises leaves the lanes as they were
            words = stream_words(self.rng, th.mant.size)
            return update(cfg, th, g, regs, words)

    def state_dict(self) -> dict[str, Any]:
        """The lane states, the configuration's identity (``repr``) and the state format version."""
        return engine_state(self.cfg, self.rng.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = LaneRng.from_state_dict(check_engine_state(self.cfg, state))
        check_rng_layout(self.cfg, rng, loaded=True)
        self.rng = rng
