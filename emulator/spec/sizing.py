"""Configurations given by their number formats only; the register formats come from hyper-parameters.

A :class:`SizedConfig` names the weight/gradient format and the variant; :meth:`SizedConfig.build`
turns it into a :class:`~emulator.spec.datapath.DatapathConfig` (``DatapathConfig.paper``) or a
:class:`~emulator.spec.bfp.BfpConfig` (``BfpConfig.paper``) whose ``step``, ``decay`` and ``noise``
registers are sized for given hyper-parameters (:func:`emulator.spec.host.sized_registers`). The
optimizer builds it from its own groups' ``lr`` (or ``max_lr``), ``temperature``, ``dataset_size``
and ``weight_decay``, so those are typed once. Names: ``bfp8-<variant>`` (8-bit BFP, the paper's
``BfpFormat(8, 8)``) and ``fixed8-<variant>`` (the paper's Q(8,8)), variants as in the presets
(``vc``, ``naive``, ``lpf``, ``sgd-l``, ``sgd-f``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .bfp import BfpConfig
from .datapath import DatapathConfig, Variant, _coerce_variant
from .host import HyperParams
from .presets import _VARIANTS

NUMBER_FORMATS = ("fixed", "bfp")
SIZED_NAMES = tuple(f"{f}8-{v}" for f in ("bfp", "fixed") for v in _VARIANTS)


@dataclass(frozen=True)
class SizedConfig:
    """Weight/gradient format and variant; registers ``register_width`` bits, sized by :meth:`build`.

    ``number_format`` ``'fixed'``: ``Q(width, frac)`` weights and gradients; ``'bfp'``:
    ``BfpFormat(width, exp_bits)`` (``frac`` unused).
    """

    number_format: str
    variant: Variant | str
    width: int = 8
    frac: int = 8
    exp_bits: int = 8
    register_width: int = 16

    def __post_init__(self) -> None:
        if self.number_format not in NUMBER_FORMATS:
            raise ValueError(f"number_format must be one of {NUMBER_FORMATS}, got {self.number_format!r}")
        object.__setattr__(self, "variant", _coerce_variant(self.variant))
        if self.variant is Variant.FP:
            raise ValueError("variant 'fp' has no formats to size; use config='fp'")

    def build(self, hp: HyperParams, lanes: int) -> DatapathConfig | BfpConfig:
        """The configuration with registers sized for ``hp`` (``hp.lr``: the largest lr it will run)."""
        if not hp.lr > 0:
            raise ValueError(f"registers are sized for the largest lr, which must be > 0, got lr={hp.lr!r}; "
                             "pass max_lr= (the largest lr your schedule reaches)")
        kw = dict(lanes=lanes, max_lr=hp.lr, weight_decay=hp.weight_decay, temperature=hp.temperature,
                  dataset_size=hp.dataset_size, register_width=self.register_width, width=self.width)
        if self.number_format == "fixed":
            return DatapathConfig.paper(self.variant, frac=self.frac, **kw)  # type: ignore[arg-type]
        return BfpConfig.paper(self.variant, exp_bits=self.exp_bits, **kw)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        short = {v: k for k, v in _VARIANTS.items()}[self.variant.value]  # type: ignore[union-attr]
        if self.number_format == "bfp":
            return f"bfp{self.width}-{short}" + (f"-e{self.exp_bits}" if self.exp_bits != 8 else "")
        return f"fixed{self.width}-{short}" + (f"-f{self.frac}" if self.frac != self.width else "")


def sized_config(name: str) -> SizedConfig:
    """``'bfp8-vc'``, ``'fixed8-lpf'``, ...: a :class:`SizedConfig` by name (see :data:`SIZED_NAMES`)."""
    if name not in SIZED_NAMES:
        raise ValueError(f"unknown sized configuration {name!r}; choose from {', '.join(SIZED_NAMES)}")
    family, _, variant = name.partition("-")
    return SizedConfig("bfp" if family.startswith("bfp") else "fixed", _VARIANTS[variant])
