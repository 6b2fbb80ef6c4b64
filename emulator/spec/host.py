"""Host side: float hyper-parameters to per-step register values, shared by every backend.

The noise variance follows the paper's reference code: ``v = 2 * lr * T / N``
(temperature ``T``, data-set size ``N``); the Gaussian prior enters as
``decay = lr * weight_decay``. Registers are rounded half up from float64.
The noise scale divides by the generator's *exact* standard deviation, so the
injected variance is right to the register's precision, not the table's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .datapath import DatapathConfig, StepRegisters, Variant
from .formats import FixedFormat
from .gaussian import GaussianSpec


def _finite(name: str, value: float, lo: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < lo:
        raise ValueError(f"{name} must be finite and >= {lo}, got {value!r}")
    return x


UNDERFLOW_POLICIES = ("raise", "flush")


def fit_frac(value: float, width: int) -> int:
    """The most fractional bits ``F`` (at most 64) with ``floor(value * 2**F + 1/2) < 2**width``."""
    _, e = math.frexp(value)  # value = m 2**e, m in [1/2, 1)
    f = min(width - e, 64)  # value * 2**f < 2**width
    while math.floor(math.ldexp(value, f) + 0.5) > (1 << width) - 1:
        f -= 1
    if f < -64:
        raise ValueError(f"{value:.6g} does not fit a {width}-bit register (frac >= -64)")
    return f


def sized_registers(variant: Variant, hp: HyperParams, *, width: int = 16,
                    gaussian: GaussianSpec | None = None) -> dict[str, FixedFormat]:
    """Unsigned ``width``-bit ``step``, ``decay`` and ``noise`` formats with the most fractional bits
    that still hold their values at ``hp`` (the largest step size a run uses).

    ``decay`` (``lr * weight_decay``) only with weight decay; ``noise`` (``sqrt(v) / sigma_z``, the
    largest naive/lp_f word and an upper bound of every VC noise word) only for Langevin variants
    with ``v > 0``; a missing key keeps the config's default. Smaller step sizes only lose
    relative precision; one below half a register LSB underflows.
    """
    def reg(value: float) -> FixedFormat:
        return FixedFormat(width, fit_frac(value, width), signed=False)

    out = {"step": reg(hp.lr)}
    if hp.weight_decay:
        out["decay"] = reg(hp.lr * hp.weight_decay)
    if variant.is_langevin and hp.noise_variance:
        out["noise"] = reg(math.sqrt(hp.noise_variance) / (gaussian or GaussianSpec()).std)
    return out


def _register(
    name: str, value: float, fmt: FixedFormat, *, allow_zero: bool = False, flushed: list[str] | None = None
) -> int:
    scaled = value * 2.0**fmt.frac + 0.5
    if not math.isfinite(scaled) or scaled > 2.0**62:
        raise ValueError(f"{name}={value:.6g} does not fit register format {fmt} (max {fmt.max_value:.6g})")
    word = math.floor(scaled)
    if word > fmt.max_word:
        raise ValueError(
            f"{name}={value:.6g} does not fit register format {fmt} (word {word} > {fmt.max_word}); "
            f"largest representable is {fmt.max_value:.6g}"
        )
    if value > 0 and word == 0 and not allow_zero:
        if flushed is not None:  # underflow='flush': the register is 0 and the caller is told
            flushed.append(name)
            return 0
        raise ValueError(
            f"{name}={value:.6g} underflows register format {fmt} (rounds to 0; LSB is {fmt.lsb:.3g})"
        )
    return word


@dataclass(frozen=True)
class HyperParams:
    lr: float
    temperature: float = 1.0
    dataset_size: int = 1
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _finite("lr", self.lr)
        _finite("temperature", self.temperature)
        _finite("weight_decay", self.weight_decay)
        if isinstance(self.dataset_size, bool) or not isinstance(self.dataset_size, (int, np.integer)):
            raise TypeError(f"dataset_size must be an int, got {self.dataset_size!r}")
        object.__setattr__(self, "dataset_size", int(self.dataset_size))
        if self.dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {self.dataset_size}")

    @property
    def noise_variance(self) -> float:
        """v = 2 lr T / N (real units)."""
        return 2.0 * self.lr * self.temperature / self.dataset_size


def step_registers(cfg: DatapathConfig, hp: HyperParams, *, underflow: str = "raise") -> StepRegisters:
    """The register values for one step of ``cfg`` under hyper-parameters ``hp``.

    Raises ValueError naming the value when a register overflows its format. A non-zero
    value that rounds to zero raises too with ``underflow='raise'`` (default); with
    ``underflow='flush'`` that register is 0 (see :func:`step_registers_flushed`, which also
    says which registers were flushed).
    """
    return step_registers_flushed(cfg, hp, underflow=underflow)[0]


def step_registers_flushed(
    cfg: DatapathConfig, hp: HyperParams, *, underflow: str = "flush"
) -> tuple[StepRegisters, tuple[str, ...]]:
    """:func:`step_registers` and the names of the registers flushed to 0 by underflow.

    Names: ``"lr"``, ``"lr*weight_decay"``, ``"noise scale"``, ``"vc_var"``. With
    ``underflow='raise'`` the tuple is always empty (underflow raises ValueError instead).
    A flushed ``lr`` means the step makes no gradient move; a flushed noise register means
    no injected noise beyond the rounding (VC branch B with ``vc_var = 0`` is plain SR).
    """
    if underflow not in UNDERFLOW_POLICIES:
        raise ValueError(f"underflow must be one of {UNDERFLOW_POLICIES}, got {underflow!r}")
    fl: list[str] | None = [] if underflow == "flush" else None
    regs = _step_registers(cfg, hp, fl)
    return regs, tuple(fl or ())


def shared_registers(cfg: Any, hp: HyperParams, fl: list[str] | None) -> tuple[int, int, int | None]:
    """The ``step`` and ``decay`` words, and the ``noise`` word of ``naive``/``lp_f`` (else None).

    Shared by the fixed-point host and the BFP host (:mod:`emulator.spec.bfp`), whose registers
    are in the same absolute units; ``cfg`` is either configuration (``step``, ``decay``,
    ``noise``, ``variant``, ``gaussian``). Flushed names go to ``fl`` (None: underflow raises).
    """
    step = _register("lr", hp.lr, cfg.step, flushed=fl)
    decay = 0
    if hp.weight_decay:
        if cfg.decay is None:
            raise ValueError(f"weight_decay={hp.weight_decay} but the configuration has no decay register")
        decay = _register("lr*weight_decay", hp.lr * hp.weight_decay, cfg.decay, flushed=fl)
    noise = None
    if cfg.variant in (Variant.NAIVE, Variant.LP_F):
        v = hp.noise_variance
        noise = _register("noise scale", math.sqrt(v) / cfg.gaussian.std, cfg.noise, flushed=fl) if v else 0
    return step, decay, noise


def _step_registers(cfg: DatapathConfig, hp: HyperParams, fl: list[str] | None) -> StepRegisters:
    step, decay, noise = shared_registers(cfg, hp, fl)
    if noise is not None:
        return StepRegisters(step, decay, noise)
    v = hp.noise_variance if cfg.variant.is_langevin else 0.0
    sigma_z = cfg.gaussian.std
    if cfg.variant is Variant.VC:
        fw = cfg.weight.frac
        v_lsb2 = math.ldexp(v, 2 * fw)  # exact scaling: variance in weight LSB^2
        if v_lsb2 > 0.25:
            extra = math.ldexp(math.sqrt(v_lsb2 - 0.25), -fw)  # sqrt(v - v0), real units
            noise = _register("noise scale", extra / sigma_z, cfg.noise, allow_zero=True)
            if noise:
                return StepRegisters(step, decay, noise, True, 0)
            # v - v0 is below the noise register's resolution: branch B with v = v0 is as close as it gets
            return StepRegisters(step, decay, 0, False, 1 << (2 * cfg.vc_frac_bits - 2))
        vc_var = math.floor(math.ldexp(v_lsb2, 2 * cfg.vc_frac_bits) + 0.5)
        if v > 0 and vc_var == 0:
            if fl is not None:
                fl.append("vc_var")
                return StepRegisters(step, decay, 0, False, 0)
            raise ValueError(
                f"noise variance {v:.6g} underflows the VC variance register "
                f"(vc_frac_bits={cfg.vc_frac_bits}); raise vc_frac_bits"
            )
        return StepRegisters(step, decay, 0, False, vc_var)
    return StepRegisters(step, decay)


def realized(cfg: DatapathConfig, regs: StepRegisters) -> dict[str, float]:
    """What the registers actually implement: lr and noise variance (real units)."""
    out = {"lr": regs.step * cfg.step.lsb}
    var_z = float(cfg.gaussian.variance)
    noise = regs.noise * cfg.noise.lsb
    if cfg.variant is Variant.VC:
        lsb2 = cfg.weight.lsb**2
        if regs.vc_noise:
            out["noise_variance"] = noise * noise * var_z + lsb2 / 4
        else:
            out["noise_variance"] = regs.vc_var * 2.0 ** (-2 * cfg.vc_frac_bits) * lsb2
        out["branch"] = 1.0 if regs.vc_noise else 0.0
    elif cfg.variant.has_gaussian:
        out["noise_variance"] = noise * noise * var_z
    return out


# ---- schedules ----------------------------------------------------------------------


class Schedule(Protocol):
    def lr(self, step: int) -> float: ...


@dataclass(frozen=True)
class ConstantLR:
    base_lr: float

    def __post_init__(self) -> None:
        _finite("base_lr", self.base_lr)

    def lr(self, step: int) -> float:
        return self.base_lr


@dataclass(frozen=True)
class CyclicalCosineLR:
    """The paper's cyclical schedule: lr_t = lr0/2 (cos(pi (t mod C) / C) + 1), C = ceil(total/cycles)."""

    base_lr: float
    total_steps: int
    cycles: int

    def __post_init__(self) -> None:
        _finite("base_lr", self.base_lr)
        for name in ("total_steps", "cycles"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {v!r}")
        if self.total_steps < 1 or self.cycles < 1:
            raise ValueError(f"total_steps and cycles must be >= 1, got {self.total_steps}, {self.cycles}")

    @property
    def cycle_len(self) -> int:
        return -(-self.total_steps // self.cycles)

    def lr(self, step: int) -> float:
        c = self.cycle_len
        return self.base_lr / 2 * (math.cos(math.pi * (step % c) / c) + 1)


def registers_at(
    cfg: DatapathConfig,
    schedule: Schedule,
    step: int,
    *,
    temperature: float = 1.0,
    dataset_size: int = 1,
    weight_decay: float = 0.0,
    underflow: str = "raise",
) -> StepRegisters:
    """Registers for schedule step ``step`` (``underflow`` as in :func:`step_registers`)."""
    hp = HyperParams(schedule.lr(step), temperature, dataset_size, weight_decay)
    return step_registers(cfg, hp, underflow=underflow)
