"""Float64 full-precision SGLD: the reference the low-precision variants are judged against."""

from __future__ import annotations

import math

import numpy as np


def sgld_step(
    theta: np.ndarray,
    grad: np.ndarray,
    lr: float,
    noise_variance: float,
    rng: np.random.Generator,
    weight_decay: float = 0.0,
) -> np.ndarray:
    """theta - lr * (grad + weight_decay * theta) + sqrt(v) * xi, xi ~ N(0, I) from ``rng``.

    With ``noise_variance = 0`` this is plain SGD. ``rng`` is an explicit, seeded
    ``numpy.random.Generator``.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {rng!r}")
    theta = np.asarray(theta, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    if theta.shape != grad.shape:
        raise ValueError(f"theta shape {theta.shape} != grad shape {grad.shape}")
    if not np.isfinite(grad).all():
        raise ValueError("gradient contains NaN or Inf")
    if noise_variance < 0 or not math.isfinite(noise_variance):
        raise ValueError(f"noise_variance must be finite and >= 0, got {noise_variance}")
    out = theta - lr * (grad + weight_decay * theta)
    if noise_variance:
        out += math.sqrt(noise_variance) * rng.standard_normal(theta.shape)
    return out
