"""The paper's cyclical schedule with sample collection (cSGLD)."""

from __future__ import annotations

from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..spec.host import CyclicalCosineLR


@dataclass(frozen=True)
class CyclicalSampling:
    """Cyclical cosine learning rate and when to collect samples (cSGLD, as in the paper).

    Time ``t`` counts units (epochs or steps, the caller's choice): ``C = ceil(total / cycles)``,
    ``lr(t) = base_lr / 2 (cos(pi (t mod C) / C) + 1)`` (:class:`emulator.spec.host.CyclicalCosineLR`),
    and a sample is collected after unit ``t`` iff it is one of the last ``samples_per_cycle``
    units of its cycle. The paper's CIFAR runs: 7 cycles of 35 epochs, 5 samples per cycle.
    """

    base_lr: float
    total: int
    cycles: int
    samples_per_cycle: int

    def __post_init__(self) -> None:
        sched = self.schedule  # validates base_lr, total, cycles
        k = self.samples_per_cycle
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= sched.cycle_len:
            raise ValueError(f"samples_per_cycle must be an int in [1, {sched.cycle_len}], got {k!r}")

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
        return t % c >= c - self.samples_per_cycle and t < self.total

    def sample_units(self) -> list[int]:
        return [t for t in range(self.total) if self.collect(t)]

    def scheduler(self, optimizer: Optimizer) -> CyclicalScheduler:
        """An ``lr_scheduler`` that sets every group's lr to ``lr(t)`` exactly (t = scheduler steps)."""
        return CyclicalScheduler(optimizer, self)


class CyclicalScheduler(LRScheduler):
    """Sets ``group['lr'] = sampling.lr(last_epoch)`` for every group (no float drift from factors)."""

    def __init__(self, optimizer: Optimizer, sampling: CyclicalSampling, last_epoch: int = -1):
        self.sampling = sampling
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [self.sampling.lr(self.last_epoch) for _ in self.optimizer.param_groups]
