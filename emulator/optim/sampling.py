"""The paper's cyclical schedule with sample collection (cSGLD)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..spec.host import CyclicalCosineLR


@dataclass(frozen=True)
class CyclicalSampling:
    """Cyclical cosine learning rate and when to collect samples (cSGLD, as in the paper).

    Time ``t`` counts units (epochs or steps, the caller's choice): ``C = ceil(total / cycles)``,
    ``lr(t) = base_lr / 2 (cos(pi (t mod C) / C) + 1)`` (:class:`emulator.spec.host.CyclicalCosineLR`),
    and a sample is collected after unit ``t`` iff it is one of the last ``samples_per_cycle``
    units of its cycle and ``t >= burnin`` (burn-in: the first ``burnin`` units collect nothing,
    e.g. ``burnin=cycle_len`` skips the first cycle). The paper's CIFAR runs: 7 cycles of 35
    epochs, 5 samples per cycle, no burn-in.
    """

    base_lr: float
    total: int
    cycles: int
    samples_per_cycle: int
    burnin: int = 0

    def __post_init__(self) -> None:
        sched = self.schedule  # validates base_lr, total, cycles
        k = self.samples_per_cycle
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= sched.cycle_len:
            raise ValueError(f"samples_per_cycle must be an int in [1, {sched.cycle_len}], got {k!r}")
        b = self.burnin
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < self.total:
            raise ValueError(f"burnin must be an int in [0, {self.total}) (units before the first sample), got {b!r}")
        if not self.sample_units():
            raise ValueError(f"burnin={b} leaves no unit to collect a sample in (total {self.total}, cycle length "
                             f"{sched.cycle_len}, last {k} units of each cycle)")

    @property
    def schedule(self) -> CyclicalCosineLR:
        return CyclicalCosineLR(self.base_lr, self.total, self.cycles)

    @property
    def cycle_len(self) -> int:
        return self.schedule.cycle_len

    def lr(self, t: int) -> float:
        return self.schedule.lr(t)

    def collect(self, t: int) -> bool:
        """True if the state after unit ``t`` is a sample."""
        c = self.cycle_len
        return t % c >= c - self.samples_per_cycle and self.burnin <= t < self.total

    def sample_units(self) -> list[int]:
        return [t for t in range(self.total) if self.collect(t)]

    def scheduler(self, optimizer: Optimizer) -> CyclicalScheduler:
        """An ``lr_scheduler`` that follows ``lr(t)`` (t = scheduler steps), keeping the groups' lr ratios."""
        return CyclicalScheduler(optimizer, self)

    def state_dict(self) -> dict[str, Any]:
        """The fields as plain numbers (``torch.load(weights_only=True)`` reads them)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CyclicalSampling:
        return cls(**state)


class CyclicalScheduler(LRScheduler):
    """Sets ``group['lr'] = sampling.lr(last_epoch) * r_g`` with ``r_g = initial_lr_g / max_h initial_lr_h``.

    A group with the largest initial lr (every group, when they start equal) gets ``sampling.lr(t)``
    exactly (no float drift from chained factors); the others keep their ratio to it. The state dict
    holds plain numbers only (``torch.load(weights_only=True)``).
    """

    def __init__(self, optimizer: Optimizer, sampling: CyclicalSampling, last_epoch: int = -1):
        if not isinstance(sampling, CyclicalSampling):
            raise TypeError(f"sampling must be a CyclicalSampling, got {type(sampling).__name__}")
        self.sampling = sampling
        super().__init__(optimizer, last_epoch)

    def ratios(self) -> list[float]:
        base = [float(b) for b in self.base_lrs]
        top = max(base)
        return [b / top if top > 0 else 1.0 for b in base]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        lr = self.sampling.lr(self.last_epoch)
        return [lr * r for r in self.ratios()]

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["sampling"] = self.sampling.state_dict()
        sd["base_lrs"] = [float(b) for b in self.base_lrs]
        sd["_last_lr"] = [float(x) for x in sd.get("_last_lr", [])]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        sampling = sd.pop("sampling")
        saved = sampling if isinstance(sampling, CyclicalSampling) else CyclicalSampling.from_state_dict(sampling)
        if saved != self.sampling:
            diff = ", ".join(f"{f.name}: {getattr(saved, f.name)} (saved) vs {getattr(self.sampling, f.name)} "
                             "(scheduler)" for f in dataclasses.fields(saved)
                             if getattr(saved, f.name) != getattr(self.sampling, f.name))
            raise ValueError(f"the state_dict was saved for a different CyclicalSampling; {diff}")
        super().load_state_dict(sd)
