"""Control register map and the host-side write sequences (HW_CONTRACT / docs/hardware.md).

A write is ``(addr, data)`` on ``ctl__addr`` / ``ctl__data`` with ``ctl__we`` high for
one clock; writes are only meaningful while the top is ``idle``.
"""

from __future__ import annotations

from emulator.spec.datapath import DatapathConfig, StepRegisters
from emulator.spec.formats import check_int
from emulator.spec.rng import LaneRng

from .datapath import register_ports

ADDR_WIDTH = 16
DATA_WIDTH = 64
STEP = 0x0000
DECAY = 0x0001
NOISE = 0x0002
VC_VAR = 0x0003
VC_NOISE = 0x0004
SEED_BASE = 0x0100  # s0 of stream j at SEED_BASE + 2j, s1 at SEED_BASE + 2j + 1
MAX_STREAMS = ((1 << ADDR_WIDTH) - SEED_BASE) // 2


def _check_cfg(cfg: object) -> DatapathConfig:
    if not isinstance(cfg, DatapathConfig):
        raise TypeError(f"cfg must be an emulator.spec.datapath.DatapathConfig, got {type(cfg).__name__}")
    return cfg


def streams(cfg: DatapathConfig) -> int:
    """Generator streams in the top: ``lanes * rng_words`` (stream ``j = lane * rng_words + k``)."""
    return cfg.lanes * cfg.rng_words


ADDRESSES = {"step": STEP, "decay": DECAY, "noise": NOISE, "vc_var": VC_VAR, "vc_noise": VC_NOISE}


def register_map(cfg: DatapathConfig) -> dict[str, dict[str, int]]:
    """The per-step registers present in ``cfg``'s hardware: name -> {addr, width}."""
    cfg = _check_cfg(cfg)
    return {name: {"addr": ADDRESSES[name], "width": w} for name, w in register_ports(cfg).items()}


def register_writes(cfg: DatapathConfig, regs: StepRegisters) -> list[tuple[int, int]]:
    """Writes that load ``regs`` (checked with ``cfg.check_registers``) into the registers ``cfg`` has.

    Registers absent from the hardware (e.g. ``noise`` for ``sgd_*``) are not written;
    ``check_registers`` guarantees their value is 0.
    """
    cfg = _check_cfg(cfg)
    cfg.check_registers(regs)
    values = {"step": regs.step, "decay": regs.decay, "noise": regs.noise,
              "vc_var": regs.vc_var, "vc_noise": int(regs.vc_noise)}
    return [(r["addr"], values[name]) for name, r in register_map(cfg).items()]


def seed_writes(cfg: DatapathConfig, seed: int) -> list[tuple[int, int]]:
    """Writes that load every generator with ``LaneRng.seeded(cfg.rng, seed, lanes, rng_words)``.

    Afterwards the hardware's random streams equal ``NumpyEngine(cfg, seed)``'s.
    """
    cfg = _check_cfg(cfg)
    seed = check_int("seed", seed)
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    rng = LaneRng.seeded(cfg.rng, seed, cfg.lanes, cfg.rng_words)
    out = []
    for lane in range(cfg.lanes):
        for k in range(cfg.rng_words):
            j = lane * cfg.rng_words + k
            out.append((SEED_BASE + 2 * j, int(rng.s0[lane, k])))
            out.append((SEED_BASE + 2 * j + 1, int(rng.s1[lane, k])))
    return out
