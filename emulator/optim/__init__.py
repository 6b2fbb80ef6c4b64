"""Low-precision SGLD for torch: the functional cores, the ``torch.optim.Optimizer`` and the
cyclical sampling schedule. The update rule is written out in :mod:`emulator.optim.optimizer`."""

from .optimizer import (
    LowPrecisionSGLD,
    derive_seed,
    gradient_uniforms,
    quantize_gradient_bfp,
    sgld_bfp,
    sgld_fp,
    sgld_lp,
    weight_to_float,
)
from .sampling import CyclicalSampling, CyclicalScheduler

__all__ = [
    "CyclicalSampling",
    "CyclicalScheduler",
    "LowPrecisionSGLD",
    "derive_seed",
    "gradient_uniforms",
    "quantize_gradient_bfp",
    "sgld_bfp",
    "sgld_fp",
    "sgld_lp",
    "weight_to_float",
]
