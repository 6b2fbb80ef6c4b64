"""Shipped configurations (``w4-*``, ``w8-*``, ``w16-*``) and the hyper-parameter cases of the golden vectors.

The vectors themselves are computed by :mod:`emulator.engines.vectors`.
"""

from __future__ import annotations

from .datapath import DatapathConfig, Variant
from .formats import FixedFormat
from .gaussian import GaussianSpec

_U = dict(signed=False)


def _w4(variant: str, lanes: int) -> DatapathConfig:
    return DatapathConfig(
        Variant(variant),
        weight=FixedFormat(4, 1),
        grad=FixedFormat(4, 1),
        acc=FixedFormat(8, 4) if variant in ("lp_f", "sgd_f") else None,
        step=FixedFormat(4, 4, **_U),
        noise=FixedFormat(4, 3, **_U),
        decay=FixedFormat(4, 6, **_U),
        gaussian=GaussianSpec("table", 2, 3, 3),
        vc_frac_bits=3,
        lanes=lanes,
    )


def _w8(variant: str, lanes: int) -> DatapathConfig:
    return DatapathConfig(
        Variant(variant),
        weight=FixedFormat(8, 3),
        grad=FixedFormat(8, 3),
        acc=FixedFormat(24, 16) if variant in ("lp_f", "sgd_f") else None,
        step=FixedFormat(16, 24, **_U),
        noise=FixedFormat(16, 19, **_U),
        decay=FixedFormat(12, 24, **_U),
        lanes=lanes,
    )


def _w16(variant: str, lanes: int) -> DatapathConfig:
    return DatapathConfig(
        Variant(variant),
        weight=FixedFormat(16, 10),
        grad=FixedFormat(16, 10),
        acc=FixedFormat(32, 20) if variant in ("lp_f", "sgd_f") else None,
        step=FixedFormat(16, 20, **_U),
        noise=FixedFormat(16, 18, **_U),
        decay=FixedFormat(12, 24, **_U),
        gaussian=GaussianSpec("table", 4, 8, 10),
        sr_bits=12,
        vc_frac_bits=10,
        lanes=lanes,
    )


_FAMILIES = {"w4": _w4, "w8": _w8, "w16": _w16}
_VARIANTS = {"vc": "vc", "naive": "naive", "lpf": "lp_f", "sgd-l": "sgd_l", "sgd-f": "sgd_f"}
PRESETS = tuple(f"{f}-{v}" for f in _FAMILIES for v in _VARIANTS)


def preset(name: str, lanes: int = 1) -> DatapathConfig:
    """A shipped configuration, e.g. ``w8-vc``, ``w8-lpf``, ``w4-naive``, ``w16-sgd-f``."""
    family, _, variant = name.partition("-")
    if family not in _FAMILIES or variant not in _VARIANTS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(PRESETS)}")
    return _FAMILIES[family](_VARIANTS[variant], lanes)


# Hyper-parameter cases per family: (lr, temperature, dataset_size, weight_decay).
_CASES = {
    "w4": [(0.5, 1.0, 1, 0.0), (0.25, 0.02, 1, 0.25), (0.0625, 0.05, 1, 0.0)],
    "w8": [(2e-3, 1.0, 1, 0.0), (1e-4, 1.0, 1, 5e-2), (3e-3, 1.0, 1, 0.0)],
    "w16": [(1e-3, 1.0, 1, 0.0), (5e-4, 1e-4, 1, 1e-2), (1e-5, 1.0, 1, 0.0)],
}
