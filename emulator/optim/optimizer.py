"""Low-precision SGLD as a ``torch.optim.Optimizer``: functional cores and a thin class.

Update rule per parameter tensor, with ``a = group['lr']``, weight decay ``wd``, temperature
``T`` and data-set size ``N`` (noise variance ``v = 2 a T / N``)::

    fp (float SGLD):   p <- p - a (g + wd p) + sqrt(v) xi,          xi ~ N(0, I) from a seeded torch.Generator
    low precision:     g_w   = Q_G(g)                                gradient words, SR from the gradient stream
                       theta <- datapath(theta, g_w, registers(a, wd, T, N))
                       p     <- float(weight word)

where ``theta`` is the integer state held in ``optimizer.state[p]``: the weight for
``naive``/``vc``/``sgd_l``, the accumulator for ``lp_f``/``sgd_f``, initialized from ``p`` by
round-to-nearest into the state format on the first step. A group's ``config`` selects the
number format:

* fixed point (:class:`DatapathConfig` or a preset name): ``state[p]['words']`` (``p``'s shape, the
  narrowest integer dtype holding the state format: int8 for W <= 8, int16, int32, int64; int64 words
  of older checkpoints are narrowed on the next step); ``datapath`` is docs/spec.md section 6 run by
  :class:`emulator.engines.torch_engine.TorchEngine` (on CPU: one compiled call per tensor,
  :func:`emulator.engines.cpu_kernels.fixed_group_step`; ``path='reference'``: :func:`sgld_lp`'s engine calls):
  ``mu = theta - a g_w - (a wd) theta`` exactly (weight decay is the Gaussian prior, applied
  inside the exact sum), then ``naive``/``lp_f``: ``SR(mu + sqrt(v) z)``, ``vc``:
  ``Q_vc(mu, v)``, ``sgd_l``/``sgd_f``: ``SR(mu)``; the ``-F`` variants emit
  ``nearest(theta)`` in the weight format. Registers from
  :func:`emulator.spec.host.step_registers_flushed`.
* block floating point (:class:`emulator.spec.bfp.BfpConfig`): ``state[p]['mant']`` (narrowest integer dtype, ``p``'s
  shape) and ``state[p]['exp']`` (int64, one exponent per row of dim 0); ``-F`` variants also
  keep the emitted weight in ``state[p]['weight_mant']``, ``['weight_exp']``. ``Q_G`` is
  :func:`emulator.engines.torch_bfp_engine.quantize_torch` (``BfpFormat.quantize``'s definition, headroom
  ``grad_headroom``), ``datapath`` is docs/spec.md section 10.2 (:func:`emulator.spec.bfp.update`
  with words from :func:`emulator.engines.torch_engine.torch_stream_words`), registers from
  :func:`emulator.spec.bfp.bfp_registers_flushed`, ``p = mant * 2^(E + 2 - W)``.

Decisions (documented in docs/torch.md and docs/bfp.md):

* Lane mapping: one engine per parameter group; each parameter tensor that has a gradient
  is one engine call (flattened in C order, streamed through the lanes from lane 0), in the
  group's parameter order. The lanes' streams continue from call to call.
* Random streams: group ``i`` uses engine seed ``derive_seed(seed, 2 i)`` and gradient
  stream seed ``derive_seed(seed, 2 i + 1)``; the gradient stream is an xoroshiro128aox
  :class:`TorchLaneRng` with the group's lane count and one word per element (element order
  as the engine); the SR uniform is the low ``grad_sr_bits`` bits of that word. ``fp`` groups
  seed a ``torch.Generator`` with ``derive_seed(seed, 2 i)``.
* Underflow: a non-zero register that rounds to 0 (lr near the end of a cosine cycle) is
  flushed to 0 (``underflow='flush'``) and counted in ``optimizer.flush_counts()``.
* A NaN gradient in any low-precision group raises ValueError before any parameter, state
  or stream of the step changes.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from ..engines import cpu_kernels
from ..engines.torch_bfp_engine import TorchBfpEngine, exact_in, quantize_torch, to_float_torch
from ..engines.torch_engine import KERNEL_FLOATS, TorchEngine, TorchLaneRng, torch_quantize, torch_stream_words
from ..spec.bfp import (
    BfpConfig,
    BfpFormat,
    BfpRegisters,
    BfpTensor,
    bfp_registers_flushed,
    block_shape,
    check_headroom,
    check_quantize_bits,
)
from ..spec.datapath import DatapathConfig, StepRegisters, Variant
from ..spec.formats import FixedFormat
from ..spec.host import HyperParams, step_registers_flushed
from ..spec.presets import PRESETS, preset
from ..spec.rng import splitmix64
from ..spec.sizing import SIZED_NAMES, SizedConfig, sized_config

FP = "fp"
_MASK64 = (1 << 64) - 1
_BFP_KEYS = ("mant", "exp", "weight_mant", "weight_exp")


def word_dtype(width: int) -> torch.dtype:
    """The narrowest signed integer dtype holding ``width``-bit words (state words, BFP mantissas)."""
    for bits, dtype in ((8, torch.int8), (16, torch.int16), (32, torch.int32)):
        if width <= bits:
            return dtype
    return torch.int64


def derive_seed(seed: int, tag: int) -> int:
    """A 64-bit seed for sub-stream ``tag`` of ``seed``: SplitMix64 output of (SplitMix64(seed) + tag)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    _, a = splitmix64(seed)
    _, b = splitmix64((a + tag) & _MASK64)
    return b


def gradient_uniforms(rng: TorchLaneRng, n: int, sr_bits: int) -> Tensor:
    """``n`` uniforms on [0, 2^sr_bits) for gradient SR: the low bits of the stream's words."""
    return torch_stream_words(rng, n)[:, 0] & ((1 << sr_bits) - 1)


def weight_to_float(words: Tensor, fmt: FixedFormat, dtype: torch.dtype) -> Tensor:
    """Real value of weight words (exact in float32 for widths up to 24 bits)."""
    if dtype == torch.float32 and fmt.width <= 24 and -126 <= -fmt.frac <= 127 - fmt.width:
        return words.to(torch.float32).mul_(fmt.lsb)  # exact: <= 24-bit integer times a power of two
    return (words.to(torch.float64) * fmt.lsb).to(dtype)


def sgld_fp(params: list[Tensor], grads: list[Tensor], *, lr: float, weight_decay: float, noise_std: float,
            generator: torch.Generator) -> None:
    """Float SGLD in place: ``p <- p - lr (g + wd p) + noise_std * randn`` (plain torch ops)."""
    for p, g in zip(params, grads, strict=True):
        d = g.add(p, alpha=weight_decay) if weight_decay else g
        p.add_(d, alpha=-lr)
        if noise_std:
            p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=noise_std)


def sgld_lp(params: list[Tensor], grads: list[Tensor], words: list[Tensor], *, engine: TorchEngine,
            grad_rng: TorchLaneRng, regs: StepRegisters, grad_rounding: str = "stochastic",
            grad_sr_bits: int = 32) -> int | None:
    """Low-precision step in place: ``words[i]`` (state words) and ``params[i]`` (emitted weight's value).

    One engine call per tensor, in list order. NaN gradients raise ValueError; +-Inf and
    out-of-range gradients saturate (as :meth:`FixedFormat.quantize`). Returns the number of state
    words at the state format's limits when the compiled CPU step counted them (None otherwise).
    """
    cfg = engine.cfg
    if _group_kernel_ok(engine, params, grads, words):
        return _sgld_lp_kernel(params, grads, words, engine=engine, grad_rng=grad_rng, regs=regs,
                               grad_rounding=grad_rounding, grad_sr_bits=grad_sr_bits)
    for p, g, w in zip(params, grads, words, strict=True):
        # = gradient_uniforms + torch_quantize + engine.step; the fused path never stores the gradient words
        th = w if w.dtype == torch.int64 else w.to(torch.int64)  # the reference paths work on int64 words
        r = engine.step_quantize(th, g, regs, grad_rng=grad_rng, rounding=grad_rounding, sr_bits=grad_sr_bits,
                                 check_words=False)  # state words are in range by construction
        w.copy_(r.state)
        p.copy_(weight_to_float(r.weight, cfg.weight, p.dtype))
    return None


def _group_kernel_ok(engine: TorchEngine, params: list[Tensor], grads: list[Tensor], words: list[Tensor]) -> bool:
    """The group runs as one compiled CPU step: engine path 'kernel' on CPU, dense contiguous tensors."""
    if engine.path != "kernel" or engine.device.type != "cpu":
        return False
    return all(p.dtype in KERNEL_FLOATS and p.is_contiguous() and g.dtype in KERNEL_FLOATS
               and w.is_contiguous() for p, g, w in zip(params, grads, words, strict=True))


def _sgld_lp_kernel(params: list[Tensor], grads: list[Tensor], words: list[Tensor], *, engine: TorchEngine,
                    grad_rng: TorchLaneRng, regs: StepRegisters, grad_rounding: str, grad_sr_bits: int) -> int:
    """:func:`sgld_lp` as :func:`emulator.engines.cpu_kernels.fixed_group_step` (the same words, lanes and p);
    returns the number of state words at the state format's limits."""
    stochastic = grad_rounding == "stochastic"
    s0, s1 = engine.rng.s0.clone(), engine.rng.s1.clone()
    g0, g1 = (grad_rng.s0.clone(), grad_rng.s1.clone()) if stochastic else (s0, s1)
    saturated = cpu_kernels.fixed_group_step(engine.cfg, regs, s0.numpy(), s1.numpy(), g0.numpy(), g1.numpy(),
                                 [p.detach().view(-1).numpy() for p in params],
                                 [g.detach().contiguous().view(-1).numpy() for g in grads],
                                 [w.view(-1).numpy() for w in words], rounding=grad_rounding, sr_bits=grad_sr_bits)
    engine.rng.s0, engine.rng.s1 = s0, s1
    if stochastic:
        grad_rng.s0, grad_rng.s1 = g0, g1
    return saturated


def quantize_gradient_bfp(grad: Tensor, fmt: BfpFormat, grad_rng: TorchLaneRng, *, rounding: str = "stochastic",
                          sr_bits: int = 32, headroom: int = 0, fast: bool = False) -> BfpTensor:
    """``Q_G(g)`` of a BFP group: the gradient stream's next ``numel`` uniforms (stochastic; none drawn
    for nearest) and :func:`emulator.engines.torch_bfp_engine.quantize_torch` (``BfpFormat.quantize``'s definition)."""
    u: Any = None
    rows, cols = block_shape(tuple(grad.shape))
    if fast and grad_rng.device.type == "cpu" and cols and grad.dtype in KERNEL_FLOATS:
        # the compiled word stream and row quantizer: the same words (quantize_torch's checks done by the caller)
        h = check_headroom(fmt, headroom)
        k = check_quantize_bits(fmt, sr_bits) if rounding == "stochastic" else 1
        if rounding == "stochastic":
            words = cpu_kernels.stream_words(grad_rng.spec, grad_rng.s0.numpy(), grad_rng.s1.numpy(), grad.numel())
            u = words[:, 0].view(np.int64) & ((1 << sr_bits) - 1)
        mant = torch.empty(grad.shape, dtype=torch.int64)
        exp = torch.empty(rows, dtype=torch.int64)
        cpu_kernels.bfp_quantize(fmt, grad.detach().contiguous().view(-1).numpy(), rows, k, u, h, mant.numpy(),
                                 exp.numpy())
        return BfpTensor(mant, exp)
    if rounding == "stochastic":
        u = gradient_uniforms(grad_rng, grad.numel(), sr_bits)
    return quantize_torch(grad, fmt, rounding, u=u, sr_bits=sr_bits, headroom=headroom)


def sgld_bfp(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]], *, engine: TorchBfpEngine,
             grad_rng: TorchLaneRng, regs: BfpRegisters, grad_rounding: str = "stochastic", grad_sr_bits: int = 32,
             grad_headroom: int = 0) -> None:
    """BFP step in place: ``states[i]['mant'/'exp']`` (state), for -F also ``['weight_mant'/'weight_exp']``,
    and ``params[i]`` (the emitted weight's value, :func:`emulator.engines.torch_bfp_engine.to_float_torch`).

    One gradient conversion and one engine call per tensor, in list order. NaN gradients
    raise ValueError; +-Inf and out-of-range gradients saturate.
    """
    cfg = engine.cfg
    fast = engine.path == "kernel"
    for p, g, st in zip(params, grads, states, strict=True):
        gq = quantize_gradient_bfp(g, cfg.grad, grad_rng, rounding=grad_rounding, sr_bits=grad_sr_bits,
                                   headroom=grad_headroom, fast=fast)
        mant = st["mant"].to(torch.int64)  # narrow mantissas in the state, int64 in the engines
        r = engine.step(BfpTensor(mant, st["exp"]), gq, regs, check_words=False)  # in range by construction
        st["mant"].copy_(r.state.mant)
        st["exp"].copy_(r.state.exp)
        if cfg.variant.has_accumulator:
            if "weight_mant" not in st:
                st["weight_mant"] = torch.empty(r.weight.mant.shape, dtype=word_dtype(cfg.weight.width))
                st["weight_exp"] = torch.empty_like(r.weight.exp)
            st["weight_mant"].copy_(r.weight.mant)
            st["weight_exp"].copy_(r.weight.exp)
        p.copy_(to_float_torch(r.weight, cfg.weight, p.dtype))


def _device_group_step(rt: _GroupRuntime, params: list[Tensor], grads: list[Tensor], state: list[Any],
                       regs: StepRegisters | BfpRegisters, group: dict[str, Any]) -> bool:
    """The group's step by the Triton kernels (``gpu_kernels.fixed_group_step`` / ``bfp_group_step``) when its
    engine runs them (CUDA by default): the same integers as :func:`sgld_lp` / :func:`sgld_bfp`, the streams
    advanced in place, no host synchronization. False (nothing done) for other engines and for parameters the
    kernels do not write (non-contiguous, or not float32/float64)."""
    eng, grng = rt.engine, rt.grad_rng
    if eng is None or grng is None or not eng.uses_triton:
        return False
    if any(not p.is_contiguous() or p.dtype not in KERNEL_FLOATS for p in params):
        return False
    from ..engines import gpu_kernels  # triton is needed only here

    for r in (eng.rng, grng):
        r.s0, r.s1 = r.s0.contiguous(), r.s1.contiguous()
    opts = dict(rounding=group["grad_rounding"], sr_bits=group["grad_sr_bits"])
    if isinstance(rt.cfg, BfpConfig) and isinstance(regs, BfpRegisters):
        gpu_kernels.bfp_group_step(rt.cfg, regs, eng.rng.s0, eng.rng.s1, grng.s0, grng.s1, params, grads, state,
                                   headroom=group["grad_headroom"], **opts)
        return True
    if isinstance(rt.cfg, DatapathConfig) and isinstance(regs, StepRegisters):
        gpu_kernels.fixed_group_step(rt.cfg, regs, eng.rng.s0, eng.rng.s1, grng.s0, grng.s1, params, grads, state,
                                     **opts)
        return True
    return False


class LowPrecisionWarning(UserWarning):
    """A one-time notice from :class:`LowPrecisionSGLD`: a register flushed to 0, saturated weights,
    lr = 0 rounding, a parameter dtype that cannot hold the weight format exactly."""


def count_saturated(cfg: DatapathConfig | BfpConfig, states: list[Tensor] | list[dict[str, Tensor]]) -> Tensor:
    """Number of state words at the limits of the state format, as a 0-d int64 tensor (no device sync).

    Fixed point: ``states`` are the state words; a word equal to ``cfg.state``'s min or max word counts.
    BFP: ``states`` are the dicts with ``'mant'`` and ``'exp'``; a mantissa of magnitude ``max_mant``
    in a row at ``max_exp`` counts. Computed from the engine's outputs after a step, so any update
    path (per tensor or fused) can call it.
    """
    if not states:
        return torch.zeros((), dtype=torch.int64)
    total: Tensor | None = None
    for st in states:
        if isinstance(cfg, BfpConfig):
            if not isinstance(st, dict):
                raise TypeError("BFP states must be dicts with 'mant' and 'exp'")
            fmt = cfg.state
            mant, exp = st["mant"], st["exp"]
            top = (exp == fmt.max_exp).reshape((-1,) + (1,) * max(mant.dim() - 1, 0))
            n = ((mant.abs() == fmt.max_mant) & top).sum()
        else:
            if not isinstance(st, Tensor):
                raise TypeError("fixed-point states must be word tensors")
            f = cfg.state
            n = ((st == f.min_word) | (st == f.max_word)).sum()
        n = n.to(torch.int64)
        total = n if total is None else total + n.to(total.device)
    assert total is not None
    return total


class _GroupRuntime:
    """A group's engine, gradient stream (or float generator) and counters."""

    def __init__(self, cfg: DatapathConfig | BfpConfig | None, seed: int, index: int, device: torch.device,
                 path: str | None, compile: bool):
        self.cfg = cfg
        self.device = device
        self.steps = 0
        self.flushed_steps = 0
        self.flushed: dict[str, int] = {}
        self.saturated = torch.zeros((), dtype=torch.int64, device=device)  # after the latest step
        self.saturated_total = torch.zeros((), dtype=torch.int64, device=device)  # summed over steps
        self.vc_branch = {"A": 0, "B": 0}  # fixed-point VC groups: steps per branch (one branch per step)
        self.engine: TorchEngine | TorchBfpEngine | None = None
        self.grad_rng: TorchLaneRng | None = None
        self.generator: torch.Generator | None = None
        if cfg is None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(derive_seed(seed, 2 * index))
            return
        if isinstance(cfg, BfpConfig):
            bfp_path = path if path in ("reference", "triton") else "kernel"  # BFP has no fused path
            self.engine = TorchBfpEngine(cfg, derive_seed(seed, 2 * index), device=device, path=bfp_path)
        else:
            self.engine = TorchEngine(cfg, derive_seed(seed, 2 * index), device=device, path=path, compile=compile)
        self.grad_rng = TorchLaneRng.seeded(cfg.rng, derive_seed(seed, 2 * index + 1), cfg.lanes, 1, device)

    def count_flushed(self, flushed: tuple[str, ...]) -> None:
        if flushed:
            self.flushed_steps += 1
            for name in flushed:
                self.flushed[name] = self.flushed.get(name, 0) + 1

    def count_branch(self, regs: StepRegisters | BfpRegisters) -> None:
        """Fixed-point VC: the step's branch is a register (``vc_noise`` set: branch A, else B)."""
        if isinstance(regs, StepRegisters) and isinstance(self.cfg, DatapathConfig) and self.cfg.variant is Variant.VC:
            self.vc_branch["A" if regs.vc_noise else "B"] += 1

    def count_saturated(self, n: Tensor) -> None:
        self.saturated = n.to(self.saturated.device)
        self.saturated_total = self.saturated_total + self.saturated

    def telemetry(self) -> dict[str, Any]:
        out = {"steps": self.steps, "flushed_steps": self.flushed_steps, "flushed": dict(self.flushed),
               "saturated": int(self.saturated), "saturated_total": int(self.saturated_total)}
        if isinstance(self.cfg, DatapathConfig) and self.cfg.variant is Variant.VC:
            out["vc_branch_steps"] = dict(self.vc_branch)
        return out

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.telemetry()
        if self.engine is not None and self.grad_rng is not None:
            out["engine"] = self.engine.state_dict()
            out["grad_rng"] = self.grad_rng.state_dict()
        if self.generator is not None:
            out["generator"] = self.generator.get_state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.flushed_steps = int(state["flushed_steps"])
        self.flushed = {str(k): int(v) for k, v in state["flushed"].items()}
        self.saturated.fill_(int(state.get("saturated", 0)))  # absent in checkpoints from before telemetry
        self.saturated_total.fill_(int(state.get("saturated_total", 0)))
        self.vc_branch = {k: int(v) for k, v in state.get("vc_branch_steps", {"A": 0, "B": 0}).items()}
        if self.engine is not None and self.grad_rng is not None:
            self.engine.load_state_dict(state["engine"])
            self.grad_rng = TorchLaneRng.from_state_dict(state["grad_rng"], self.grad_rng.device)
        if self.generator is not None:
            self.generator.set_state(state["generator"])


def _config_key(cfg: DatapathConfig | BfpConfig | str) -> str:
    return cfg if isinstance(cfg, str) else repr(cfg)


def config_fields(cfg: DatapathConfig | BfpConfig | str) -> dict[str, str]:
    """A configuration as flat ``{field: str(value)}`` (plain strings: safe for ``weights_only`` loads)."""
    if isinstance(cfg, str):
        return {"config": cfg}
    out = {"type": type(cfg).__name__}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = v.value if isinstance(v, Variant) else str(v) if isinstance(v, FixedFormat) else repr(v)
    return out


def config_diff(saved: dict[str, str], current: dict[str, str]) -> str:
    """``field: saved -> current`` for the fields that differ, comma-separated."""
    keys = list(dict.fromkeys([*saved, *current]))
    return ", ".join(f"{k}: {saved.get(k, '(none)')} (saved) vs {current.get(k, '(none)')} (optimizer)"
                     for k in keys if saved.get(k) != current.get(k))


def _fixed_exact_in(fmt: FixedFormat, dtype: torch.dtype) -> bool:
    """True if every value of ``fmt`` is a value of the float ``dtype`` (the weight write is exact)."""
    fi = torch.finfo(dtype)
    nmant = -math.frexp(fi.eps)[1] + 1
    emin_sub = math.frexp(fi.tiny)[1] - 1 - nmant
    emax = math.frexp(fi.max)[1] - 1
    return fmt.width - 1 <= nmant + 1 and -fmt.frac >= emin_sub and fmt.width - 1 - fmt.frac <= emax


def _lr_value(lr: Any, where: str) -> float:
    """A float lr from a number or a one-element tensor (as torch.optim accepts), validated."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{where}: a tensor lr must have one element, got shape {tuple(lr.shape)}")
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"{where}: lr must be a real number or a 0-d tensor, got {lr!r}")
    x = float(lr)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{where}: lr={lr!r} is invalid; lr must be finite and >= 0")
    return x


# torch.optim.SGD keywords: (value that means "off", why anything else is refused)
_SGD_OFF: dict[str, tuple[Any, str]] = {
    "momentum": (0, "the SGLD datapath has no velocity register: each step is theta <- datapath(theta, "
                    "Q_G(g), registers), so there is no momentum buffer to emulate bit-exactly"),
    "dampening": (0, "dampening only scales momentum, which the SGLD datapath does not have"),
    "nesterov": (False, "Nesterov momentum needs a velocity register the SGLD datapath does not have"),
    "foreach": (None, "it selects torch's multi-tensor kernels, and the emulated datapath runs its own "
                      "engine (one call per tensor), so there is no foreach implementation to choose"),
    "fused": (None, "it selects torch's fused SGD kernel; the emulated datapath is its own kernel"),
    "differentiable": (False, "the update is integer arithmetic on the optimizer's words; it cannot be "
                              "differentiated through"),
}


def _check_sgd_keyword(name: str, value: Any, where: str) -> None:
    off, why = _SGD_OFF[name]
    if value is None or value == off or (off is None and value is False):
        return
    raise ValueError(f"{where}: {name}={value!r} is not supported by LowPrecisionSGLD: {why}; leave {name} unset")


def _first_nan(grads: list[Tensor]) -> tuple[int, int] | None:
    """(tensor index, flat index) of the first NaN among ``grads``, with one device sync per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    hits = []
    for idx in by_device.values():
        # a NaN anywhere makes its tensor's sum NaN: one read of each gradient, no temporaries; only when a
        # sum is NaN (a NaN, or +inf and -inf together) does the exact per-element test run
        if not bool(torch.stack([grads[i].sum() for i in idx]).isnan().any()):
            continue
        flags = torch.stack([torch.isnan(grads[i]).any() for i in idx]).cpu()
        hits += [i for i, f in zip(idx, flags.tolist(), strict=True) if f]
    if not hits:
        return None
    i = min(hits)
    return i, int(torch.nonzero(torch.isnan(grads[i]).reshape(-1))[0])


DEFAULT_CONFIG = "bfp8-vc"


class LowPrecisionSGLD(Optimizer):
    """Bit-exact low-precision SGLD (and SGD) on the emulated datapath; see the module docstring.

    ``config`` (default ``'bfp8-vc'``: 8-bit BFP VC with registers sized from the group's
    hyper-parameters):

    * a format-only configuration, sized from the group's ``max(lr, max_lr)``, ``temperature``,
      ``dataset_size`` and ``weight_decay`` (:mod:`emulator.spec.sizing`): a name from
      :data:`emulator.spec.sizing.SIZED_NAMES` (``'bfp8-vc'``, ``'fixed8-lpf'``, ...) or a
      :class:`emulator.spec.sizing.SizedConfig`;
    * a complete :class:`DatapathConfig` (e.g. ``DatapathConfig.paper('vc', max_lr=0.5)``) or
      :class:`emulator.spec.bfp.BfpConfig` (e.g. ``BfpConfig.paper('vc')``);
    * a toy preset name from :data:`emulator.spec.presets.PRESETS` (built with ``lanes`` lanes,
      default 1024; the ``w8-*`` step register holds lr up to 0.0039);
    * ``"fp"`` for float32 SGLD.

    Each parameter group may set its own ``lr``, ``max_lr``, ``weight_decay``, ``temperature``,
    ``dataset_size``, ``config``, ``maximize``, ``grad_rounding``, ``grad_sr_bits`` and (BFP groups)
    ``grad_headroom``. ``path``/``compile`` select the fixed-point engine's path (see
    :class:`TorchEngine`; default: the Triton kernels on CUDA; ``path="reference"`` / ``"triton"`` also
    select the BFP engine's path; on CUDA a group's step is one call of
    :func:`emulator.engines.gpu_kernels.fixed_group_step` / ``bfp_group_step``). ``lr`` and ``max_lr``
    that the registers cannot hold are refused here;
    an lr a scheduler sets later is checked at the step that uses it. ``momentum``, ``dampening``,
    ``nesterov``, ``foreach``, ``fused`` and ``differentiable`` are accepted only at their off
    values (the message says why); ``maximize=True`` ascends (the gradient is negated before
    quantization).

    >>> opt = LowPrecisionSGLD(model.parameters(), lr=0.5, weight_decay=5e-4,  # doctest: +SKIP
    ...                        dataset_size=50000, temperature=1e-3, seed=1)
    """

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-3,
                 config: DatapathConfig | BfpConfig | SizedConfig | str = DEFAULT_CONFIG, *,
                 lanes: int = 1024, temperature: float = 1.0, dataset_size: int | None = None,
                 weight_decay: float = 0.0, max_lr: float | None = None, maximize: bool = False,
                 grad_rounding: str = "stochastic", grad_sr_bits: int = 32, grad_headroom: int = 0, seed: int = 0,
                 path: str | None = None, compile: bool = False, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, foreach: bool | None = None, fused: bool | None = None,
                 differentiable: bool = False):
        for name, value in (("momentum", momentum), ("dampening", dampening), ("nesterov", nesterov),
                            ("foreach", foreach), ("fused", fused), ("differentiable", differentiable)):
            _check_sgd_keyword(name, value, "LowPrecisionSGLD")
        derive_seed(seed, 0)  # validates the seed
        self.seed = seed
        self.lanes = lanes
        self.path = path
        self.compile = compile
        self._runtime: list[_GroupRuntime] = []
        self._warned: set[str] = set()
        HyperParams(_lr_value(lr, "LowPrecisionSGLD"), temperature, 1 if dataset_size is None else dataset_size,
                    weight_decay)  # validates
        defaults = dict(lr=lr, config=config, temperature=temperature, dataset_size=dataset_size,
                        weight_decay=weight_decay, max_lr=max_lr, maximize=maximize, grad_rounding=grad_rounding,
                        grad_sr_bits=grad_sr_bits, grad_headroom=grad_headroom)
        super().__init__(params, defaults)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, LowPrecisionWarning, stacklevel=3)

    def _resolve_config(self, group: dict[str, Any], where: str) -> DatapathConfig | BfpConfig | str:
        """The group's complete configuration: names resolved, format-only configurations sized."""
        cfg = group["config"]
        if isinstance(cfg, str):
            if cfg == FP:
                return cfg
            if cfg in PRESETS:
                return preset(cfg, self.lanes)
            if cfg in SIZED_NAMES:
                cfg = sized_config(cfg)
            else:
                raise ValueError(f"{where}: unknown config {cfg!r}; expected 'fp', a DatapathConfig, a BfpConfig, "
                                 f"a SizedConfig, one of {SIZED_NAMES} (registers sized from lr) or a toy preset "
                                 f"{PRESETS}")
        if isinstance(cfg, SizedConfig):
            lr = _lr_value(group["lr"], where)
            ml = group["max_lr"]
            top = max(lr, 0.0 if ml is None else _lr_value(ml, f"{where} (max_lr)"))
            hp = HyperParams(top, group["temperature"], group["dataset_size"], group["weight_decay"])
            if not top > 0:
                raise ValueError(f"{where}: config {cfg.name!r} sizes its registers for the largest lr, but lr=0 "
                                 "and max_lr is not set; pass max_lr= (the largest lr your schedule reaches)")
            return cfg.build(hp, self.lanes)
        if not isinstance(cfg, (DatapathConfig, BfpConfig)):
            raise TypeError(f"{where}: config must be a DatapathConfig, a BfpConfig, a SizedConfig or a name, "
                            f"got {type(cfg).__name__}")
        return cfg

    def _registers(self, cfg: DatapathConfig | BfpConfig, hp: HyperParams,
                   ) -> tuple[StepRegisters | BfpRegisters, tuple[str, ...]]:
        if isinstance(cfg, BfpConfig):
            return bfp_registers_flushed(cfg, hp)
        return step_registers_flushed(cfg, hp)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        where = f"parameter group {len(self.param_groups)}"
        for name in _SGD_OFF:
            if name in param_group:
                _check_sgd_keyword(name, param_group[name], where)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        n_unset = group["dataset_size"] is None
        if n_unset:
            group["dataset_size"] = 1
        given = group["config"]
        cfg = group["config"] = self._resolve_config(group, where)
        langevin = cfg == FP or (isinstance(cfg, (DatapathConfig, BfpConfig)) and cfg.variant.is_langevin)
        if n_unset and langevin and group["temperature"] > 0:
            self._warn_once("dataset_size", f"{where}: dataset_size not given, so N = 1 and the injected noise "
                                            "variance is 2 lr T / N = 2 lr T (std sqrt(2 lr T) per step), far too "
                                            "much for a network: pass dataset_size=len(train_set) (temperature=0 or an "
                                            "sgd variant for SGD)")
        if group["grad_rounding"] not in ("stochastic", "nearest"):
            raise ValueError(f"grad_rounding must be 'stochastic' or 'nearest', got {group['grad_rounding']!r}")
        k = group["grad_sr_bits"]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 52:
            raise ValueError(f"grad_sr_bits must be an int in [1, 52], got {k!r}")
        if not isinstance(group["maximize"], bool):
            raise TypeError(f"{where}: maximize must be a bool, got {group['maximize']!r}")
        if isinstance(cfg, BfpConfig):
            check_quantize_bits(cfg.grad, k)
            check_headroom(cfg.grad, group["grad_headroom"])
        elif group["grad_headroom"] != 0:
            raise ValueError(f"grad_headroom is a BFP option; got grad_headroom={group['grad_headroom']!r} for "
                             f"config {_config_key(cfg)}")
        lr = _lr_value(group["lr"], where)
        max_lr = group["max_lr"]
        if max_lr is not None:
            _lr_value(max_lr, f"{where} (max_lr)")
        for name, value in (("lr", lr), ("max_lr", max_lr)):
            if value is None:
                continue
            hp = HyperParams(float(value), group["temperature"], group["dataset_size"], group["weight_decay"])
            if isinstance(cfg, (DatapathConfig, BfpConfig)):
                try:
                    self._registers(cfg, hp)
                except ValueError as e:
                    what = f"preset {given!r}" if isinstance(given, str) else type(cfg).__name__
                    raise ValueError(
                        f"{where}: {name}={value:g} does not fit the registers of config {what}: {e}. Use a "
                        f"config sized for it (config='bfp8-vc' or 'fixed8-vc' size the registers from lr and "
                        f"max_lr; DatapathConfig.paper / BfpConfig.paper take max_lr=) or lower {name}") from None
        devices = {p.device for p in group["params"]}
        if len(devices) != 1:
            raise ValueError(f"a parameter group must live on one device, got {sorted(map(str, devices))}")
        for p in group["params"]:
            if not p.is_floating_point():
                raise TypeError(f"parameters must be floating point, got {p.dtype}")
        if isinstance(cfg, (DatapathConfig, BfpConfig)):
            inexact = sorted({str(p.dtype) for p in group["params"]
                              if not (exact_in(cfg.weight, p.dtype) if isinstance(cfg, BfpConfig)
                                      else _fixed_exact_in(cfg.weight, p.dtype))})
            if inexact:
                self._warn_once("dtype", f"{where}: parameters of dtype {', '.join(inexact)} cannot hold every "
                                         f"value of the weight format {cfg.weight} exactly; the weights the model "
                                         "sees are rounded (the optimizer's words stay exact). Use float32.")
        self._runtime.append(_GroupRuntime(cfg if isinstance(cfg, (DatapathConfig, BfpConfig)) else None, self.seed,
                                           len(self._runtime), devices.pop(), self.path, self.compile))

    def flush_counts(self) -> list[dict[str, Any]]:
        """Per group: steps taken, steps with at least one register flushed to 0, and counts per register."""
        return [{"steps": rt.steps, "flushed_steps": rt.flushed_steps, "flushed": dict(rt.flushed)}
                for rt in self._runtime]

    def telemetry(self) -> list[dict[str, Any]]:
        """Per group: :meth:`flush_counts`' entries, ``saturated`` (state words at the format's limits
        after the latest step), ``saturated_total`` (summed over steps) and, for fixed-point VC groups,
        ``vc_branch_steps`` (steps taken in VC branch A and B). Also in :meth:`state_dict`."""
        return [rt.telemetry() for rt in self._runtime]

    def _words(self, p: Tensor, cfg: DatapathConfig) -> Tensor:
        st = self.state[p]
        dtype = word_dtype(cfg.state.width)
        if "words" not in st:
            st["words"] = torch_quantize(p.detach(), cfg.state, "nearest").to(dtype)
        elif st["words"].dtype != dtype:  # e.g. int64 words of an older checkpoint: same values, narrowed
            st["words"] = st["words"].to(dtype)
        words: Tensor = st["words"]
        return words

    def _bfp_state(self, p: Tensor, cfg: BfpConfig) -> dict[str, Tensor]:
        """The BFP state of ``p``; on the first step ``p`` rounded to nearest (host rule, the config's headroom)."""
        st = self.state[p]
        if "mant" not in st:
            t = quantize_torch(p.detach(), cfg.state, "nearest", headroom=cfg.headroom)
            st["mant"], st["exp"] = t.mant, t.exp
        for key, fmt in (("mant", cfg.state), ("weight_mant", cfg.weight)):  # narrowest dtype (old checkpoints: int64)
            if key in st and st[key].dtype != word_dtype(fmt.width):
                st[key] = st[key].to(word_dtype(fmt.width))
        return st

    def _check_gradients(self, groups: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]) -> None:
        """NaN in a low-precision group's gradient raises before anything of the step changes."""
        grads = [g for group, _, gs in groups if group["config"] != FP for g in gs]
        hit = _first_nan(grads)
        if hit is not None:
            names = [(gi, pi) for gi, (group, ps, _) in enumerate(groups) if group["config"] != FP
                     for pi in range(len(ps))]
            gi, pi = names[hit[0]]
            raise ValueError(f"cannot quantize NaN (first at flat index {hit[1]}) in the gradient of parameter {pi} "
                             f"of group {gi}; the step was not applied")

    def _group_registers(self, gi: int, rt: _GroupRuntime, hp: HyperParams,
                         ) -> tuple[StepRegisters | BfpRegisters, tuple[str, ...]]:
        """The step's registers; an lr the registers cannot hold names the step and the lr."""
        assert rt.cfg is not None
        try:
            return self._registers(rt.cfg, hp)
        except ValueError as e:
            raise ValueError(f"step {rt.steps + 1} of parameter group {gi}: lr={hp.lr:g} does not fit the group's "
                             f"registers ({e}); the step was not applied. Size the configuration for the largest "
                             "lr the schedule reaches (max_lr=)") from None

    def _before_group(self, gi: int, rt: _GroupRuntime, params: list[Tensor], lr: float) -> None:
        if lr == 0 and any(not self.state[p] for p in params):
            self._warn_once("lr0", f"parameter group {gi}: lr=0 at the first step still moves the weights: they "
                                   "are rounded onto the format's grid when the optimizer's words are created")

    def _after_group(self, gi: int, rt: _GroupRuntime, params: list[Tensor], flushed: tuple[str, ...],
                     saturated: int | None = None) -> None:
        """Telemetry from the engine's outputs (the state words after the step; ``saturated`` when the step's
        kernel counted them already) and one-time warnings."""
        assert rt.cfg is not None
        if saturated is not None:
            rt.count_saturated(torch.tensor(saturated, dtype=torch.int64))
        elif isinstance(rt.cfg, BfpConfig):
            rt.count_saturated(count_saturated(rt.cfg, [self.state[p] for p in params]))
        else:
            rt.count_saturated(count_saturated(rt.cfg, [self.state[p]["words"] for p in params]))
        if flushed:
            self._warn_once("flush", f"parameter group {gi}: register(s) {', '.join(flushed)} flushed to 0 at step "
                                     f"{rt.steps} (the value is below half a register LSB; e.g. the end of a "
                                     "cosine cycle); counted in optimizer.telemetry()")
        if rt.steps == 1 and "saturation" not in self._warned:
            n = int(rt.saturated)
            if n:
                self._warn_once("saturation", f"parameter group {gi}: {n} state word(s) are at the limits of "
                                              f"{rt.cfg.state} after the first step (weights outside the format's "
                                              "range saturate); counted in optimizer.telemetry()")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for group in self.param_groups:
            params, grads = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("LowPrecisionSGLD does not support sparse gradients")
                params.append(p)
                grads.append(-p.grad if group["maximize"] else p.grad)
            work.append((group, params, grads))
        self._check_gradients(work)
        for gi, ((_, params, _), rt) in enumerate(zip(work, self._runtime, strict=True)):
            moved = [str(p.device) for p in params if p.device != rt.device]
            if moved:
                raise ValueError(f"group {gi}: parameters on {moved[0]}, but the optimizer's engines were built "
                                 f"on {rt.device}; move the model before creating the optimizer")
        for gi, ((group, params, grads), rt) in enumerate(zip(work, self._runtime, strict=True)):
            if not params:
                continue
            lr = _lr_value(group["lr"], f"step {rt.steps + 1} of parameter group {gi}")
            hp = HyperParams(lr, group["temperature"], group["dataset_size"], group["weight_decay"])
            if rt.generator is not None:  # fp group
                rt.steps += 1
                sgld_fp(params, grads, lr=lr, weight_decay=hp.weight_decay,
                        noise_std=math.sqrt(hp.noise_variance), generator=rt.generator)
                continue
            if rt.cfg is None or rt.engine is None or rt.grad_rng is None:
                raise RuntimeError("low-precision group without an engine")  # unreachable: built together
            regs, flushed = self._group_registers(gi, rt, hp)
            saturated = None
            rt.count_branch(regs)
            self._before_group(gi, rt, params, lr)
            rt.steps += 1
            rt.count_flushed(flushed)
            if isinstance(rt.cfg, BfpConfig) and isinstance(rt.engine, TorchBfpEngine):
                assert isinstance(regs, BfpRegisters)
                states = [self._bfp_state(p, rt.cfg) for p in params]
                if not _device_group_step(rt, params, grads, states, regs, group):
                    sgld_bfp(params, grads, states, engine=rt.engine, grad_rng=rt.grad_rng, regs=regs,
                             grad_rounding=group["grad_rounding"], grad_sr_bits=group["grad_sr_bits"],
                             grad_headroom=group["grad_headroom"])
            elif isinstance(rt.cfg, DatapathConfig) and isinstance(rt.engine, TorchEngine):
                assert isinstance(regs, StepRegisters)
                words = [self._words(p, rt.cfg) for p in params]
                if not _device_group_step(rt, params, grads, words, regs, group):
                    saturated = sgld_lp(params, grads, words, engine=rt.engine, grad_rng=rt.grad_rng, regs=regs,
                                        grad_rounding=group["grad_rounding"], grad_sr_bits=group["grad_sr_bits"])
            else:
                raise RuntimeError("group engine does not match its config")  # unreachable: built together
            self._after_group(gi, rt, params, flushed, saturated)
        return loss

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            g["config"] = _config_key(g["config"])
        sd["lpsgld"] = {"seed": self.seed, "groups": [rt.state_dict() for rt in self._runtime],
                        "configs": [config_fields(g["config"]) for g in self.param_groups]}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("lpsgld", None)
        if extra is None:
            raise ValueError("state_dict has no 'lpsgld' entry (not saved by LowPrecisionSGLD)")
        saved = sd["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved)} parameter groups, the optimizer {len(self.param_groups)}")
        saved_fields = extra.get("configs")
        for i, (g, cur) in enumerate(zip(saved, self.param_groups, strict=True)):
            if g["config"] != _config_key(cur["config"]):
                if saved_fields is not None:
                    diff = config_diff(saved_fields[i], config_fields(cur["config"]))
                    raise ValueError(f"group {i}: the state_dict was saved for a different config; {diff}")
                raise ValueError(f"group {i}: state_dict was saved for config {g['config']}, "
                                 f"the optimizer has {_config_key(cur['config'])}")
            if len(g["params"]) != len(cur["params"]):
                raise ValueError(f"group {i}: the state_dict has {len(g['params'])} parameters, the optimizer "
                                 f"{len(cur['params'])}")
        sd["param_groups"] = [dict(g, config=cur["config"]) for g, cur in zip(saved, self.param_groups, strict=True)]
        # integer state (fixed words, BFP mantissas and exponents) must not go through torch's
        # cast-to-parameter-dtype: restore it directly
        ids = [i for g in saved for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        where = {pid: (gi, pi) for gi, g in enumerate(saved) for pi, pid in enumerate(g["params"])}
        by_id = dict(zip(ids, params, strict=True))
        ints: dict[Any, dict[str, Tensor]] = {}
        state = {}
        for k, v in sd["state"].items():
            v = dict(v)
            ints[k] = {name: v.pop(name) for name in ("words", *_BFP_KEYS) if name in v}
            p = by_id.get(k)
            if p is not None:
                for name, t in ints[k].items():
                    want = tuple(p.shape) if name in ("words", "mant", "weight_mant") else (_rows(p),)
                    if tuple(t.shape) != want:
                        gi, pi = where[k]
                        raise ValueError(f"group {gi}, parameter {pi}: the saved state {name!r} has shape "
                                         f"{tuple(t.shape)}, the parameter needs {want} (parameter shape "
                                         f"{tuple(p.shape)}); the state_dict is for a different model")
            state[k] = v
        sd["state"] = state
        super().load_state_dict(sd)
        for pid, p in zip(ids, params, strict=True):
            for name, t in ints.get(pid, {}).items():
                self.state[p][name] = t.to(device=p.device).clone()  # the saved integer dtype (int64 if old)
        for rt, s in zip(self._runtime, extra["groups"], strict=True):
            rt.load_state_dict(s)
        self.seed = int(extra["seed"])  # groups added later derive their streams from the saved seed

    # copy.deepcopy and pickle: the engines and streams are rebuilt from their state dicts
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state = dict(state)
        state["_lpsgld"] = {"seed": self.seed, "lanes": self.lanes, "path": self.path, "compile": self.compile,
                            "warned": sorted(self._warned), "groups": [rt.state_dict() for rt in self._runtime]}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        extra = state.pop("_lpsgld", None)
        super().__setstate__(state)
        if extra is None:
            return
        self.seed, self.lanes, self.path, self.compile = extra["seed"], extra["lanes"], extra["path"], extra["compile"]
        self._warned = set(extra["warned"])
        self._runtime = []
        for i, (group, s) in enumerate(zip(self.param_groups, extra["groups"], strict=True)):
            cfg = group["config"]
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            rt = _GroupRuntime(None if cfg == FP else cfg, self.seed, i, device, self.path, self.compile)
            rt.load_state_dict(s)
            self._runtime.append(rt)


def _rows(p: Tensor) -> int:
    """BFP rows of a parameter: dim 0 (one row per element of a 1-D tensor, one row for a scalar)."""
    return int(p.shape[0]) if p.dim() else 1
