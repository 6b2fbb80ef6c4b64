"""BFP on torch tensors: host quantization, float values, and the engine (CPU or CUDA).

Everything here computes the same integers as :mod:`emulator.spec.bfp` (the kernel is shared:
:func:`emulator.spec.bfp.update` runs on numpy arrays and torch tensors alike).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..spec.bfp import (
    TORCH_OPS,
    BfpConfig,
    BfpFormat,
    BfpRegisters,
    BfpTensor,
    BfpUpdateResult,
    block_shape,
    check_headroom,
    check_quantize_bits,
    check_registers,
    pow2,
    quantize_core,
    update,
)
from .numpy_engine import check_engine_state, check_rng_layout, engine_state, transaction
from .torch_engine import TorchLaneRng, torch_stream_words


def quantize_torch(
    x: Any, fmt: BfpFormat, rounding: str = "nearest", *, u: Any = None, sr_bits: int = 32, headroom: int = 0
) -> BfpTensor:
    """:meth:`BfpFormat.quantize` on a torch tensor (CPU or CUDA), with the SR uniforms given explicitly.

    Same definition and the same integer kernel (:func:`quantize_core`): ``u`` is an int64
    tensor of ``x.numel()`` values in ``[0, 2**sr_bits)``, one per element in C order (with
    ``rng.integers(0, 2**k, size=x.shape, dtype=np.int64)`` this equals the host's
    ``fmt.quantize(x, 'stochastic', rng, k, headroom)`` word for word; the range of ``u`` is
    trusted). NaN raises ValueError naming the first flat index; +-Inf saturates. Returns a
    :class:`BfpTensor` of int64 tensors on ``x``'s device.
    """
    if not isinstance(fmt, BfpFormat):
        raise TypeError(f"fmt must be a BfpFormat, got {type(fmt).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    h = check_headroom(fmt, headroom)
    xd = x.detach().to(torch.float64)
    nan = torch.isnan(xd)
    if bool(nan.any()):
        idx = int(torch.nonzero(nan.reshape(-1))[0])
        raise ValueError(f"cannot quantize NaN (first at flat index {idx}) to {fmt}")
    rows, cols = block_shape(tuple(x.shape))
    if rounding == "stochastic":
        k = check_quantize_bits(fmt, sr_bits)
        if not isinstance(u, torch.Tensor) or u.dtype != torch.int64 or u.numel() != x.numel():
            raise TypeError(f"stochastic rounding needs u: an int64 tensor of {x.numel()} uniforms, got "
                            f"{getattr(u, 'dtype', type(u).__name__)}")
        uu = u.to(x.device).reshape(rows, cols)
    elif rounding == "nearest":
        k, uu = 1, None
    else:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    mant, exp = quantize_core(TORCH_OPS, fmt, xd.reshape(rows, cols), k, uu, h)
    return BfpTensor(mant.reshape(x.shape), exp)


def exact_in(fmt: BfpFormat, dtype: Any) -> bool:
    """True if every value of ``fmt`` is a value of the torch float ``dtype`` (so the cast is exact).

    Needs ``W - 1`` mantissa magnitude bits within the dtype's significand, the finest grid
    ``2**(E_min + 2 - W)`` at or above its smallest subnormal, and ``2**(E_max + 1)`` at most
    ``2**(emax + 1)``. ``BfpFormat(W, 8)`` in float32: ``W <= 23`` (``W = 24`` loses the last bit of
    ``E_min`` rows).
    """
    fi = torch.finfo(dtype)
    nmant = -math.frexp(fi.eps)[1] + 1  # eps = 2**-nmant
    emin_sub = math.frexp(fi.tiny)[1] - 1 - nmant
    emax = math.frexp(fi.max)[1] - 1
    return fmt.width - 1 <= nmant + 1 and fmt.grid_exp(fmt.min_exp) >= emin_sub and fmt.max_exp <= emax


def to_float_torch(t: BfpTensor, fmt: BfpFormat, dtype: Any = None) -> Any:
    """Values ``mant * 2**(E + 2 - W)`` of torch BFP words in ``dtype`` (default float32).

    Computed exactly in float64 (every BFP value is one) and cast, so the result is exact
    whenever :func:`exact_in` holds and round-to-nearest-even of the exact value otherwise.
    """
    dtype = torch.float32 if dtype is None else dtype
    rows, cols = block_shape(tuple(t.mant.shape))
    g = pow2(TORCH_OPS, fmt.grid_exp(t.exp.reshape(rows, 1)))
    return (t.mant.reshape(rows, cols).to(torch.float64) * g).reshape(t.mant.shape).to(dtype)


_BFP_PATHS = ("kernel", "reference", "triton")


class TorchBfpEngine:
    """:class:`BfpEngine` on torch int64 tensors (CPU or CUDA): the same lanes, streams and kernel.

    Words come from :func:`emulator.engines.torch_engine.torch_stream_words` (element ``i``: lane
    ``i mod L``, cycle ``i div L``); the update is :func:`update`. Equal to :class:`BfpEngine`
    word for word given the same seed and inputs.

    ``path``: ``"kernel"`` (default: the Triton lane kernels of :mod:`emulator.engines.gpu_kernels` on
    CUDA, the reference path elsewhere), ``"reference"`` (stream words + :func:`update`) or ``"triton"``
    (the Triton kernels on any device; on CPU only under ``TRITON_INTERPRET=1``).
    """

    def __init__(self, cfg: BfpConfig, seed: int, *, device: Any = "cpu", rng: Any = None, path: str = "kernel"):
        if not isinstance(cfg, BfpConfig):
            raise TypeError(f"cfg must be a BfpConfig, got {type(cfg).__name__}")
        if path not in _BFP_PATHS:
            raise ValueError(f"path must be one of {_BFP_PATHS}, got {path!r}")
        self.path = path
        self.cfg = cfg
        self.device = torch.device(device)
        if rng is None:
            rng = TorchLaneRng.seeded(cfg.rng, seed, cfg.lanes, cfg.rng_words, self.device)
        else:
            check_rng_layout(cfg, rng)
        self.rng = rng

    def _check(self, t: BfpTensor, fmt: BfpFormat, name: str, check_words: bool) -> BfpTensor:
        if not isinstance(t, tuple) or len(t) != 2:
            raise TypeError(f"{name} must be a BfpTensor(mant, exp), got {type(t).__name__}")
        mant, exp = t
        for part, arr in (("mantissas", mant), ("exponents", exp)):
            if not isinstance(arr, torch.Tensor) or arr.dtype != torch.int64:
                got = getattr(arr, "dtype", type(arr).__name__)
                raise TypeError(f"{name} {part} must be an int64 tensor, got {got}")
            if arr.device != self.device:
                raise ValueError(f"{name} {part} are on {arr.device}, the engine on {self.device}")
        rows, _ = block_shape(tuple(mant.shape))
        if tuple(exp.shape) != (rows,):
            raise ValueError(f"{name} exponents must have shape ({rows},) for mantissas {tuple(mant.shape)}, "
                             f"got {tuple(exp.shape)}")
        if check_words:
            for part, arr, lo, hi in (("mantissa", mant, -fmt.max_mant, fmt.max_mant),
                                      ("exponent", exp, fmt.min_exp, fmt.max_exp)):
                if arr.numel():
                    amin, amax = int(arr.min()), int(arr.max())
                    if amin < lo or amax > hi:
                        raise ValueError(f"{name} {part} {amin if amin < lo else amax} outside {fmt} range "
                                         f"[{lo}, {hi}]")
        return BfpTensor(mant, exp)

    def step(self, theta: BfpTensor, grad: BfpTensor, regs: BfpRegisters, *,
             check_words: bool = True) -> BfpUpdateResult:
        """One update of every element; a rejected call leaves the lanes untouched.

        ``check_words=False`` skips the range checks (one device sync each) for callers whose
        words are in range by construction.
        """
        cfg = self.cfg
        check_registers(cfg, regs)
        th = self._check(theta, cfg.state, "theta", check_words)
        g = self._check(grad, cfg.grad, "grad", check_words)
        if tuple(th.mant.shape) != tuple(g.mant.shape):
            raise ValueError(f"theta shape {tuple(th.mant.shape)} != grad shape {tuple(g.mant.shape)}")
        with transaction(self.rng):  # a step that raises leaves the lanes as they were
            if self.uses_triton:
                return self._triton(th, g, regs)
            words = torch_stream_words(self.rng, th.mant.numel())
            return update(cfg, th, g, regs, words)

    @property
    def uses_triton(self) -> bool:
        """True when steps run the Triton lane kernels (path ``"triton"``, or ``"kernel"`` on CUDA)."""
        return self.path == "triton" or (self.path == "kernel" and self.device.type == "cuda")

    def _triton(self, th: BfpTensor, g: BfpTensor, regs: BfpRegisters) -> BfpUpdateResult:
        from . import gpu_kernels  # triton is needed only here

        cfg = self.cfg
        rng = self.rng
        rng.s0, rng.s1 = rng.s0.contiguous(), rng.s1.contiguous()
        out = BfpTensor(torch.empty_like(th.mant), torch.empty_like(th.exp))
        weight = BfpTensor(torch.empty_like(th.mant), torch.empty_like(th.exp)) if cfg.variant.has_accumulator \
            else None
        gpu_kernels.bfp_update(cfg, regs, rng.s0, rng.s1, BfpTensor(th.mant.contiguous(), th.exp.contiguous()),
                               BfpTensor(g.mant.contiguous(), g.exp.contiguous()), out, weight)
        return BfpUpdateResult(out, weight if weight is not None else out)

    def state_dict(self) -> dict[str, Any]:
        """The lane states, the configuration's identity (``repr``) and the state format version."""
        return engine_state(self.cfg, self.rng.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also reads a :class:`BfpEngine` state dict (numpy lane states) of the same configuration."""
        rng = TorchLaneRng.from_state_dict(check_engine_state(self.cfg, state), self.device)
        check_rng_layout(self.cfg, rng, loaded=True)
        self.rng = rng
