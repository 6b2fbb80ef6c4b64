"""Quantized layers: activations on the forward pass, errors on the backward pass (torch).

A :class:`QuantSpec` names a format (:class:`~emulator.spec.formats.FixedFormat` or
:class:`~emulator.spec.bfp.BfpFormat`; BFP blocks are rows of dim 0, i.e. one shared
exponent per example) and a rounding (``'nearest'`` or ``'stochastic'``).
:func:`quantize_tensor` is the same arithmetic as the host quantizers
(``FixedFormat.quantize``, ``BfpFormat.quantize``) given the same uniform integers,
in float64 on the tensor's device, and returns the dequantized values in the input
dtype (exact for float32 when the format's values are float32 values, e.g. W <= 24
and grids >= 2**-149).

Stochastic rounding draws its uniforms from a counter-based source in pure torch
int64, so CPU and CUDA give the same bits and torch's global RNG is never touched:
the ``k``-bit uniform of flat element ``j`` is the top ``k`` bits of output ``j`` of
a SplitMix64 generator started at counter ``key``, i.e. ``mix64(key + (j+1) * G)``
(``G = 0x9E3779B97F4A7C15``, ``mix64`` SplitMix64's output bijection, all mod 2**64),
with ``key = sm(sm(sm(seed) ^ layer) ^ (2 * call + direction))``, ``sm(x) = mix64(x + G)``,
``layer`` the quantizer's index in the model, ``call`` its forward-call counter and
``direction`` 0 for activations, 1 for errors (the backward of call ``c`` uses ``c``).

:func:`quantize_model` adds a quantizer module after every ``Linear`` / ``Conv2d`` (a
child of the layer, run by a forward hook; its counters and seed are buffers in the
model's ``state_dict``) and returns a handle whose ``remove()`` takes them out again.
Evaluation (``eval()`` or no gradients) rounds to nearest by default and never moves a
training stream (:class:`Quantizer`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..spec.bfp import TORCH_OPS, BfpFormat, block_shape, check_headroom, check_quantize_bits, pow2, quantize_core
from ..spec.formats import FixedFormat, check_int

GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_M64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 with the same bits."""
    x &= _M64
    return x - (1 << 64) if x >> 63 else x


def mix64(z: int) -> int:
    """SplitMix64's output function on a Python int (mod 2**64)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return z ^ (z >> 31)


def stream_key(seed: int, layer: int, call: int, direction: int) -> int:
    """The SplitMix64 counter of one quantization call (docs: module docstring)."""
    def sm(x: int) -> int:
        return mix64(x + GOLDEN)

    return sm(sm(sm(seed) ^ layer) ^ (2 * call + direction))


def _lsr(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def _mix64_t(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _lsr(z, 30)) * _signed(_MIX1)  # int64 products wrap mod 2**64
    z = (z ^ _lsr(z, 27)) * _signed(_MIX2)
    return z ^ _lsr(z, 31)


def uniform_bits(key: int, n: int, k: int, device: Any = None) -> torch.Tensor:
    """``k``-bit uniforms (int64, shape (n,)) for flat elements 0..n-1 of the call with counter ``key``."""
    if not 1 <= k <= 63:
        raise ValueError(f"uniform bits must be in [1, 63], got {k}")
    j = torch.arange(1, n + 1, dtype=torch.int64, device=device)
    z = _signed(key) + j * _signed(GOLDEN)
    return _lsr(_mix64_t(z), 64 - k)


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize to: a fixed or BFP format, rounding, and the SR uniform width ``sr_bits``."""

    fmt: FixedFormat | BfpFormat
    rounding: str = "nearest"
    sr_bits: int = 32
    headroom: int = 0  # BFP only: see emulator.spec.bfp.check_headroom

    def __post_init__(self) -> None:
        if not isinstance(self.fmt, (FixedFormat, BfpFormat)):
            raise TypeError(f"fmt must be a FixedFormat or BfpFormat, got {self.fmt!r}")
        if self.rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {self.rounding!r}")
        k = check_int("sr_bits", self.sr_bits)
        if isinstance(self.fmt, BfpFormat):
            check_quantize_bits(self.fmt, k)
            check_headroom(self.fmt, self.headroom)
        elif self.headroom:
            raise ValueError(f"headroom is a BFP option; got headroom={self.headroom} for {self.fmt}")
        elif not 1 <= k <= 52:
            raise ValueError(f"sr_bits must be in [1, 52] for {self.fmt}, got {k}")


def quantize_tensor(x: torch.Tensor, spec: QuantSpec, u: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize ``x`` to ``spec`` and return the represented values in ``x.dtype``.

    ``u`` (int64, ``x``'s shape, values in ``[0, 2**sr_bits)``) are the uniforms for
    stochastic rounding, one per element in C order: with the uniforms
    ``rng.integers(0, 2**k, size=x.shape, dtype=np.int64)`` this equals the host's
    ``spec.fmt.quantize(x, 'stochastic', rng, k)`` word for word. NaN raises ValueError
    naming the flat index; +-Inf saturates.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    xd = x.detach().to(torch.float64)
    nan = torch.isnan(xd)
    if bool(nan.any()):
        idx = int(torch.nonzero(nan.reshape(-1))[0])
        raise ValueError(f"cannot quantize NaN (first at flat index {idx}) to {spec.fmt}")
    k = spec.sr_bits
    if spec.rounding == "stochastic":
        if u is None:
            raise ValueError("stochastic rounding needs uniforms u")
        if u.dtype != torch.int64 or tuple(u.shape) != tuple(x.shape):
            raise ValueError(f"u must be int64 of shape {tuple(x.shape)}, got {u.dtype} {tuple(u.shape)}")
        u = u.to(x.device)
    else:
        u = None
    fmt = spec.fmt
    if isinstance(fmt, FixedFormat):
        t = torch.clamp(xd * 2.0**fmt.frac, fmt.min_word - 1.0, fmt.max_word + 1.0)  # as FixedFormat.quantize
        fl = torch.floor(t)
        if u is None:
            q = fl + (t - fl >= 0.5).to(torch.float64)
        else:
            # f_k = floor(t 2^k) mod 2^k, exactly as FixedFormat.quantize: the scaling, the floors and
            # the difference of the two integers are exact; floor((t - fl) 2^k) is not (t - fl rounds
            # for negative t whose fraction has bits below 2^-53)
            fk = torch.floor(t * 2.0**k) - fl * 2.0**k
            q = fl + (u < fk).to(torch.float64)
        words = torch.clamp(q.to(torch.int64), fmt.min_word, fmt.max_word)
        out = words.to(torch.float64) * 2.0**-fmt.frac
    else:
        rows, cols = block_shape(tuple(x.shape))
        uu = None if u is None else u.reshape(rows, cols)
        mant, exp = quantize_core(TORCH_OPS, fmt, xd.reshape(rows, cols), k if uu is not None else 1, uu, spec.headroom)
        out = (mant.to(torch.float64) * pow2(TORCH_OPS, fmt.grid_exp(exp))[:, None]).reshape(x.shape)
    return out.to(x.dtype)


EVAL_ROUNDINGS = ("nearest", "stochastic", "train")
EVAL_SALT = 0x6C707367_6C646576  # separates the evaluation streams from the training streams


class _QuantizeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, q: Quantizer, stream: tuple[int, int, int] | None) -> torch.Tensor:
        ctx.q, ctx.stream = q, stream
        return q.quantize_stream(x, stream, 0) if q.act is not None else x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, None, None]:
        q: Quantizer = ctx.q
        return (q.quantize_stream(grad, ctx.stream, 1) if q.err is not None else grad), None, None


def _nearest(spec: QuantSpec | None) -> QuantSpec | None:
    return None if spec is None else dataclasses.replace(spec, rounding="nearest")


class Quantizer(nn.Module):
    """Identity in value flow that quantizes activations (forward) and errors (backward).

    ``layer`` distinguishes quantizers of one model in the random streams. Buffers (in the model's
    ``state_dict``, copied by ``deepcopy``): ``calls`` counts training forward calls (the stream
    position), ``eval_calls`` stochastic evaluation calls, ``seed`` the stream seed (its 64-bit
    pattern as int64).

    Evaluation (``not self.training`` or gradients disabled) with ``eval_rounding``:
    ``'nearest'`` (default) rounds to nearest and touches no counter; ``'stochastic'`` rounds
    stochastically from a separate evaluation stream (seed ``seed ^ EVAL_SALT``, counter
    ``eval_calls``), so the training streams never move; ``'train'`` behaves as in training
    (training stream and counter; what the library did before, kept for the studies' recorded runs).
    ``forward`` is excluded from ``torch.compile`` (``torch.compiler.disable``): a compiled model runs
    the quantizers eagerly, between compiled graphs, so it equals the eager model bit for bit.
    """

    calls: torch.Tensor
    eval_calls: torch.Tensor
    seed_bits: torch.Tensor

    def __init__(self, act: QuantSpec | None, err: QuantSpec | None, seed: int = 0, layer: int = 0,
                 eval_rounding: str = "nearest"):
        super().__init__()
        for name, spec in (("act", act), ("err", err)):
            if spec is not None and not isinstance(spec, QuantSpec):
                raise TypeError(f"{name} must be a QuantSpec or None, got {spec!r}")
        if act is None and err is None:
            raise ValueError("a Quantizer needs act or err (both are None)")
        seed = check_int("seed", seed)
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        if eval_rounding not in EVAL_ROUNDINGS:
            raise ValueError(f"eval_rounding must be one of {EVAL_ROUNDINGS}, got {eval_rounding!r}")
        self.act, self.err, self.layer = act, err, check_int("layer", layer)
        self.eval_rounding = eval_rounding
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("eval_calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("seed_bits", torch.tensor(_signed(seed), dtype=torch.int64))

    @property
    def seed(self) -> int:
        return int(self.seed_bits) & _M64

    def quantize(self, x: torch.Tensor, call: int, direction: int) -> torch.Tensor:
        """``x`` quantized with the training stream of forward call ``call`` (direction 0 act, 1 err)."""
        return self.quantize_stream(x, (self.seed, self.layer, call), direction)

    def quantize_stream(self, x: torch.Tensor, stream: tuple[int, int, int] | None, direction: int) -> torch.Tensor:
        """``x`` quantized with the stream ``(seed, layer, call)``; None rounds to nearest."""
        spec = self.act if direction == 0 else self.err
        if spec is None:
            raise ValueError(f"quantizer {self.layer} has no {'act' if direction == 0 else 'err'} spec")
        u = None
        if stream is None:
            spec = _nearest(spec)
        elif spec.rounding == "stochastic":
            key = stream_key(stream[0], stream[1], stream[2], direction)
            u = uniform_bits(key, x.numel(), spec.sr_bits, x.device).reshape(x.shape)
        assert spec is not None
        return quantize_tensor(x, spec, u)

    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evaluating = not self.training or not torch.is_grad_enabled()
        stream: tuple[int, int, int] | None
        if not evaluating or self.eval_rounding == "train":
            stream = (self.seed, self.layer, int(self.calls))
            self.calls += 1
        elif self.eval_rounding == "stochastic":
            stream = (self.seed ^ EVAL_SALT, self.layer, int(self.eval_calls))
            self.eval_calls += 1
        else:
            stream = None
        out: torch.Tensor = _QuantizeFn.apply(x, self, stream)
        return out

    def extra_repr(self) -> str:
        return f"act={self.act}, err={self.err}, seed={self.seed}, layer={self.layer}, eval={self.eval_rounding}"


CHILD = "lpsgld_quantizer"


@torch.compiler.disable
def _quantize_output(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """The forward hook: the layer's output through its quantizer child (a module-level function, so the
    model pickles, and a deepcopy's hook uses the copy's own quantizer)."""
    out: torch.Tensor = getattr(module, CHILD)(output)
    return out


def _quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: mod for name, mod in model.named_modules() if isinstance(getattr(mod, CHILD, None), Quantizer)}


class QuantizedModel:
    """Handle returned by :func:`quantize_model`: the quantizers by layer name, and ``remove()``.

    Everything lives in the model (quantizer children ``<layer>.lpsgld_quantizer`` and a forward hook
    on each layer); the handle only looks it up, so a deepcopy or a loaded ``torch.save(model)``
    is quantized without it (``QuantizedModel(model)`` makes a handle for such a model).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def quantizers(self) -> dict[str, Quantizer]:
        return {name: getattr(mod, CHILD) for name, mod in _quantized_layers(self.model).items()}

    def remove(self) -> None:
        """Take every quantizer out of the model (idempotent)."""
        remove_quantization(self.model)

    def state_dict(self) -> dict[str, int]:
        """Forward-call counters per quantized layer name (also in ``model.state_dict()`` as buffers)."""
        return {name: int(q.calls) for name, q in self.quantizers.items()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        qs = self.quantizers
        if set(state) != set(qs):
            raise ValueError(f"state has layers {sorted(state)}, expected {sorted(qs)}")
        for name, n in state.items():
            qs[name].calls.fill_(check_int(f"calls of {name}", n))


def quantize_model(
    model: nn.Module,
    act: QuantSpec | None = None,
    err: QuantSpec | None = None,
    seed: int = 0,
    layer_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    *,
    quantize_output: bool = True,
    eval_rounding: str = "nearest",
) -> QuantizedModel:
    """Quantize the output of every ``layer_types`` module (activations) and the error flowing into it.

    Layers are numbered in ``model.named_modules()`` order. Each gets a :class:`Quantizer` child
    ``lpsgld_quantizer`` (its counters and seed are buffers, so ``model.state_dict()`` gains
    ``<layer>.lpsgld_quantizer.{calls,eval_calls,seed_bits}``; parameters are unchanged) and a forward
    hook. ``quantize_output=False`` leaves the last such layer (a classifier's logits) unquantized.
    ``eval_rounding``: see :class:`Quantizer`. Raises ValueError if the model is already quantized
    or has no such layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(quantize_output, bool):
        raise TypeError(f"quantize_output must be a bool, got {quantize_output!r}")
    if _quantized_layers(model):
        raise ValueError("model is already quantized; call remove_quantization(model) first")
    layers = [mod for mod in model.modules() if isinstance(mod, layer_types)]
    if not layers:
        raise ValueError(f"model has no {', '.join(t.__name__ for t in layer_types)} layer to quantize")
    if not quantize_output:
        layers = layers[:-1]
    quantizers = [Quantizer(act, err, seed, i, eval_rounding) for i in range(len(layers))]  # validates first
    for mod, q in zip(layers, quantizers, strict=True):
        mod.add_module(CHILD, q)
        mod.register_forward_hook(_quantize_output)
    return QuantizedModel(model)


def remove_quantization(model: nn.Module) -> None:
    """Undo :func:`quantize_model` (no-op if the model is not quantized)."""
    for mod in _quantized_layers(model).values():
        delattr(mod, CHILD)
        for key in [k for k, h in mod._forward_hooks.items() if h is _quantize_output]:
            del mod._forward_hooks[key]
            mod._forward_hooks_with_kwargs.pop(key, None)
            mod._forward_hooks_always_called.pop(key, None)


def host_uniforms(key: int, shape: tuple[int, ...], k: int) -> np.ndarray:
    """The same uniforms as :func:`uniform_bits`, from Python ints (a reference for tests and the host)."""
    n = int(np.prod(shape))
    out = np.empty(n, dtype=np.int64)
    for j in range(n):
        out[j] = mix64(key + (j + 1) * GOLDEN) >> (64 - k)
    return out.reshape(shape)
