"""Low-precision SGLD as a ``torch.optim.Optimizer``: functional cores and a thin class.

Update rule per parameter tensor, with ``a = group['lr']``, weight decay ``wd``, temperature
``T`` and data-set size ``N`` (noise variance ``v = 2 a T / N``)::

    fp (float SGLD):   p <- p - a (g + wd p) + sqrt(v) xi,          xi ~ N(0, I) from a seeded torch.Generator
    low precision:     g_w   = Q_G(g)                                gradient words, SR from the gradient stream
                       theta <- datapath(theta, g_w, registers(a, wd, T, N))
                       p     <- float(weight word)

where ``theta`` are the integer state words held in ``optimizer.state[p]['words']`` (the
weight words for ``naive``/``vc``/``sgd_l``, the accumulator words for ``lp_f``/``sgd_f``),
initialized from ``p`` by round-to-nearest into the state format on the first step, and
``datapath`` is docs/spec.md section 6 run by :class:`emulator.torch_engine.TorchEngine`:
``mu = theta - a g_w - (a wd) theta`` exactly (weight decay is the Gaussian prior, applied
inside the exact sum), then ``naive``/``lp_f``: ``SR(mu + sqrt(v) z)``, ``vc``:
``Q_vc(mu, v)``, ``sgd_l``/``sgd_f``: ``SR(mu)``; the ``-F`` variants emit
``nearest(theta)`` in the weight format. Registers come from
:func:`emulator.host.step_registers_flushed` (shared by every backend).

Decisions (documented in docs/torch.md):

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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .datapath import DatapathConfig, StepRegisters
from .formats import FixedFormat
from .golden import PRESETS, preset
from .host import CyclicalCosineLR, HyperParams, step_registers_flushed
from .rng import splitmix64
from .torch_engine import TorchEngine, TorchLaneRng, torch_quantize, torch_stream_words

FP = "fp"
_MASK64 = (1 << 64) - 1


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
            grad_sr_bits: int = 32) -> None:
    """Low-precision step in place: ``words[i]`` (state words) and ``params[i]`` (emitted weight's value).

    One engine call per tensor, in list order. NaN gradients raise ValueError; +-Inf and
    out-of-range gradients saturate (as :meth:`FixedFormat.quantize`).
    """
    cfg = engine.cfg
    for p, g, w in zip(params, grads, words, strict=True):
        # = gradient_uniforms + torch_quantize + engine.step; the fused path never stores the gradient words
        r = engine.step_quantize(w, g, regs, grad_rng=grad_rng, rounding=grad_rounding, sr_bits=grad_sr_bits,
                                 check_words=False)  # state words are in range by construction
        w.copy_(r.state)
        p.copy_(weight_to_float(r.weight, cfg.weight, p.dtype))


class _GroupRuntime:
    """A group's engine, gradient stream (or float generator) and counters."""

    def __init__(self, cfg: DatapathConfig | None, seed: int, index: int, device: torch.device, path: str,
                 compile: bool):
        self.cfg = cfg
        self.steps = 0
        self.flushed_steps = 0
        self.flushed: dict[str, int] = {}
        self.engine: TorchEngine | None = None
        self.grad_rng: TorchLaneRng | None = None
        self.generator: torch.Generator | None = None
        if cfg is None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(derive_seed(seed, 2 * index))
        else:
            self.engine = TorchEngine(cfg, derive_seed(seed, 2 * index), device=device, path=path, compile=compile)
            self.grad_rng = TorchLaneRng.seeded(cfg.rng, derive_seed(seed, 2 * index + 1), cfg.lanes, 1, device)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps, "flushed_steps": self.flushed_steps, "flushed": dict(self.flushed)}
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
        if self.engine is not None and self.grad_rng is not None:
            self.engine.load_state_dict(state["engine"])
            self.grad_rng = TorchLaneRng.from_state_dict(state["grad_rng"], self.grad_rng.device)
        if self.generator is not None:
            self.generator.set_state(state["generator"])


def _config_key(cfg: DatapathConfig | str) -> str:
    return cfg if isinstance(cfg, str) else repr(cfg)


class LowPrecisionSGLD(Optimizer):
    """Bit-exact low-precision SGLD (and SGD) on the emulated datapath; see the module docstring.

    ``config``: a :class:`DatapathConfig` (its variant is the update rule), a preset name from
    :data:`emulator.golden.PRESETS` (built with ``lanes`` lanes, default 1024), or ``"fp"``
    for float32 SGLD. Each parameter group may set its own ``lr``, ``weight_decay``,
    ``temperature``, ``dataset_size``, ``config``, ``grad_rounding``, ``grad_sr_bits``.
    ``path``/``compile`` select the engine's path (see :class:`TorchEngine`).

    >>> opt = LowPrecisionSGLD(model.parameters(), lr=0.5, config="w8-vc", weight_decay=5e-4,  # doctest: +SKIP
    ...                        dataset_size=50000, temperature=1e-3, seed=1)
    """

    def __init__(self, params: Iterable[Any], lr: float, config: DatapathConfig | str = "w8-vc", *,
                 lanes: int = 1024, temperature: float = 1.0, dataset_size: int = 1, weight_decay: float = 0.0,
                 grad_rounding: str = "stochastic", grad_sr_bits: int = 32, seed: int = 0, path: str = "fused",
                 compile: bool = False):
        derive_seed(seed, 0)  # validates the seed
        self.seed = seed
        self.lanes = lanes
        self.path = path
        self.compile = compile
        self._runtime: list[_GroupRuntime] = []
        HyperParams(lr, temperature, dataset_size, weight_decay)  # validates the defaults
        defaults = dict(lr=lr, config=config, temperature=temperature, dataset_size=dataset_size,
                        weight_decay=weight_decay, grad_rounding=grad_rounding, grad_sr_bits=grad_sr_bits)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        cfg = group["config"]
        if isinstance(cfg, str):
            if cfg != FP and cfg not in PRESETS:
                raise ValueError(f"unknown config {cfg!r}; expected 'fp', a DatapathConfig or one of {PRESETS}")
            cfg = group["config"] = cfg if cfg == FP else preset(cfg, self.lanes)
        elif not isinstance(cfg, DatapathConfig):
            raise TypeError(f"config must be a DatapathConfig or a preset name, got {type(cfg).__name__}")
        if group["grad_rounding"] not in ("stochastic", "nearest"):
            raise ValueError(f"grad_rounding must be 'stochastic' or 'nearest', got {group['grad_rounding']!r}")
        k = group["grad_sr_bits"]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 52:
            raise ValueError(f"grad_sr_bits must be an int in [1, 52], got {k!r}")
        HyperParams(float(group["lr"]), group["temperature"], group["dataset_size"], group["weight_decay"])
        devices = {p.device for p in group["params"]}
        if len(devices) != 1:
            raise ValueError(f"a parameter group must live on one device, got {sorted(map(str, devices))}")
        for p in group["params"]:
            if not p.is_floating_point():
                raise TypeError(f"parameters must be floating point, got {p.dtype}")
        self._runtime.append(_GroupRuntime(None if cfg == FP else cfg, self.seed, len(self._runtime),
                                           devices.pop(), self.path, self.compile))

    def flush_counts(self) -> list[dict[str, Any]]:
        """Per group: steps taken, steps with at least one register flushed to 0, and counts per register."""
        return [{"steps": rt.steps, "flushed_steps": rt.flushed_steps, "flushed": dict(rt.flushed)}
                for rt in self._runtime]

    def _words(self, p: Tensor, cfg: DatapathConfig) -> Tensor:
        st = self.state[p]
        if "words" not in st:
            st["words"] = torch_quantize(p.detach(), cfg.state, "nearest")
        words: Tensor = st["words"]
        return words

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, rt in zip(self.param_groups, self._runtime, strict=True):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = []
            for p in params:
                if p.grad.is_sparse:
                    raise TypeError("LowPrecisionSGLD does not support sparse gradients")
                grads.append(p.grad)
            lr = float(group["lr"])
            hp = HyperParams(lr, group["temperature"], group["dataset_size"], group["weight_decay"])
            rt.steps += 1
            if rt.generator is not None:  # fp group
                sgld_fp(params, grads, lr=lr, weight_decay=hp.weight_decay,
                        noise_std=math.sqrt(hp.noise_variance), generator=rt.generator)
                continue
            if rt.cfg is None or rt.engine is None or rt.grad_rng is None:
                raise RuntimeError("low-precision group without an engine")  # unreachable: built together
            regs, flushed = step_registers_flushed(rt.cfg, hp)
            if flushed:
                rt.flushed_steps += 1
                for name in flushed:
                    rt.flushed[name] = rt.flushed.get(name, 0) + 1
            words = [self._words(p, rt.cfg) for p in params]
            sgld_lp(params, grads, words, engine=rt.engine, grad_rng=rt.grad_rng, regs=regs,
                    grad_rounding=group["grad_rounding"], grad_sr_bits=group["grad_sr_bits"])
        return loss

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            g["config"] = _config_key(g["config"])
        sd["lpsgld"] = {"seed": self.seed, "groups": [rt.state_dict() for rt in self._runtime]}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("lpsgld", None)
        if extra is None:
            raise ValueError("state_dict has no 'lpsgld' entry (not saved by LowPrecisionSGLD)")
        saved = sd["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved)} parameter groups, the optimizer {len(self.param_groups)}")
        for i, (g, cur) in enumerate(zip(saved, self.param_groups, strict=True)):
            if g["config"] != _config_key(cur["config"]):
                raise ValueError(f"group {i}: state_dict was saved for config {g['config']}, "
                                 f"the optimizer has {_config_key(cur['config'])}")
        sd["param_groups"] = [dict(g, config=cur["config"]) for g, cur in zip(saved, self.param_groups, strict=True)]
        # int64 words must not go through torch's cast-to-parameter-dtype: restore them directly
        ids = [i for g in saved for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        words = {}
        state = {}
        for k, v in sd["state"].items():
            v = dict(v)
            if "words" in v:
                words[k] = v.pop("words")
            state[k] = v
        sd["state"] = state
        super().load_state_dict(sd)
        for pid, p in zip(ids, params, strict=True):
            if pid in words:
                self.state[p]["words"] = words[pid].to(device=p.device, dtype=torch.int64).clone()
        for rt, s in zip(self._runtime, extra["groups"], strict=True):
            rt.load_state_dict(s)


# ---- the paper's cyclical schedule with sample collection --------------------------------


@dataclass(frozen=True)
class CyclicalSampling:
    """Cyclical cosine learning rate and when to collect samples (cSGLD, as in the paper).

    Time ``t`` counts units (epochs or steps, the caller's choice): ``C = ceil(total / cycles)``,
    ``lr(t) = base_lr / 2 (cos(pi (t mod C) / C) + 1)`` (:class:`emulator.host.CyclicalCosineLR`),
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
