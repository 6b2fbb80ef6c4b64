"""Bit-exact golden model of a low-precision SGLD update datapath.

Formats and rounding (:mod:`emulator.formats`), the lane random source
(:mod:`emulator.rng`), Gaussian generators (:mod:`emulator.gaussian`), the datapath
(:mod:`emulator.datapath`), the host register function (:mod:`emulator.host`), the
numpy engine (:mod:`emulator.engine`) and exact enumeration (:mod:`emulator.exact`).
"""

from .datapath import DatapathConfig, StepRegisters, UpdateResult, Variant
from .engine import NumpyEngine
from .formats import FixedFormat
from .gaussian import GaussianSpec
from .host import ConstantLR, CyclicalCosineLR, HyperParams, registers_at, step_registers
from .rng import LaneRng, XoroshiroSpec

__all__ = [
    "ConstantLR",
    "CyclicalCosineLR",
    "DatapathConfig",
    "FixedFormat",
    "GaussianSpec",
    "HyperParams",
    "LaneRng",
    "NumpyEngine",
    "StepRegisters",
    "UpdateResult",
    "Variant",
    "XoroshiroSpec",
    "registers_at",
    "step_registers",
]
__version__ = "0.1.0"
