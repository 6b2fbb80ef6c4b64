"""Bit-exact golden model of a low-precision SGLD update datapath.

The package is layered (docs/architecture.md); imports point down only:

* :mod:`emulator.spec`: what the hardware computes (formats, generator, Gaussian, datapath rules,
  host registers, shipped configurations);
* :mod:`emulator.engines`: the spec executed on arrays (numpy, torch, BFP);
* :mod:`emulator.analysis`: exact distributions, Markov-chain solver, float reference;
* :mod:`emulator.optim`, :mod:`emulator.nn`, :mod:`emulator.metrics`: what a PyTorch user imports;
* :mod:`emulator.studies`: data, models, training runner, studies, benchmarks;
* :mod:`emulator.cli`: the ``lpsgld`` command.

The names below are the stable public API of the numpy side.
"""

from .engines.bfp_engine import BfpEngine
from .engines.numpy_engine import NumpyEngine
from .spec.bfp import BfpConfig, BfpFormat, BfpRegisters, BfpTensor
from .spec.datapath import DatapathConfig, StepRegisters, UpdateResult, Variant
from .spec.formats import FixedFormat
from .spec.gaussian import GaussianSpec
from .spec.host import ConstantLR, CyclicalCosineLR, HyperParams, registers_at, step_registers
from .spec.presets import PRESETS, preset
from .spec.rng import LaneRng, XoroshiroSpec

__all__ = [
    "PRESETS",
    "BfpConfig",
    "BfpEngine",
    "BfpFormat",
    "BfpRegisters",
    "BfpTensor",
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
    "preset",
    "registers_at",
    "step_registers",
]
__version__ = "0.1.0"
