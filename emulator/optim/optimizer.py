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

* fixed point (:class:`DatapathConfig` or a preset name): ``state[p]['words']`` (int64, ``p``'s
  shape); ``datapath`` is docs/spec.md section 6 run by :class:`emulator.engines.torch_engine.TorchEngine`:
  ``mu = theta - a g_w - (a wd) theta`` exactly (weight decay is the Gaussian prior, applied
  inside the exact sum), then ``naive``/``lp_f``: ``SR(mu + sqrt(v) z)``, ``vc``:
  ``Q_vc(mu, v)``, ``sgd_l``/``sgd_f``: ``SR(mu)``; the ``-F`` variants emit
  ``nearest(theta)`` in the weight format. Registers from
  :func:`emulator.spec.host.step_registers_flushed`.
* block floating point (:class:`emulator.spec.bfp.BfpConfig`): ``state[p]['mant']`` (int64, ``p``'s
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

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..engines.torch_bfp_engine import TorchBfpEngine, quantize_torch, to_float_torch
from ..engines.torch_engine import TorchEngine, TorchLaneRng, torch_quantize, torch_stream_words
from ..spec.bfp import (
    BfpConfig,
    BfpFormat,
    BfpRegisters,
    BfpTensor,
    bfp_registers_flushed,
    check_headroom,
    check_quantize_bits,
)
from ..spec.datapath import DatapathConfig, StepRegisters
from ..spec.formats import FixedFormat
from ..spec.host import HyperParams, step_registers_flushed
from ..spec.presets import PRESETS, preset
from ..spec.rng import splitmix64

FP = "fp"
_MASK64 = (1 << 64) - 1
_BFP_KEYS = ("mant", "exp", "weight_mant", "weight_exp")


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


def quantize_gradient_bfp(grad: Tensor, fmt: BfpFormat, grad_rng: TorchLaneRng, *, rounding: str = "stochastic",
                          sr_bits: int = 32, headroom: int = 0) -> BfpTensor:
    """``Q_G(g)`` of a BFP group: the gradient stream's next ``numel`` uniforms (stochastic; none drawn
    for nearest) and :func:`emulator.engines.torch_bfp_engine.quantize_torch` (``BfpFormat.quantize``'s definition)."""
    u = gradient_uniforms(grad_rng, grad.numel(), sr_bits) if rounding == "stochastic" else None
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
    for p, g, st in zip(params, grads, states, strict=True):
        gq = quantize_gradient_bfp(g, cfg.grad, grad_rng, rounding=grad_rounding, sr_bits=grad_sr_bits,
                                   headroom=grad_headroom)
        r = engine.step(BfpTensor(st["mant"], st["exp"]), gq, regs, check_words=False)  # in range by construction
        st["mant"].copy_(r.state.mant)
        st["exp"].copy_(r.state.exp)
        if cfg.variant.has_accumulator:
            if "weight_mant" not in st:
                st["weight_mant"] = torch.empty_like(r.weight.mant)
                st["weight_exp"] = torch.empty_like(r.weight.exp)
            st["weight_mant"].copy_(r.weight.mant)
            st["weight_exp"].copy_(r.weight.exp)
        p.copy_(to_float_torch(r.weight, cfg.weight, p.dtype))


class _GroupRuntime:
    """A group's engine, gradient stream (or float generator) and counters."""

    def __init__(self, cfg: DatapathConfig | BfpConfig | None, seed: int, index: int, device: torch.device,
                 path: str, compile: bool):
        self.cfg = cfg
        self.device = device
        self.steps = 0
        self.flushed_steps = 0
        self.flushed: dict[str, int] = {}
        self.engine: TorchEngine | TorchBfpEngine | None = None
        self.grad_rng: TorchLaneRng | None = None
        self.generator: torch.Generator | None = None
        if cfg is None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(derive_seed(seed, 2 * index))
            return
        if isinstance(cfg, BfpConfig):
            self.engine = TorchBfpEngine(cfg, derive_seed(seed, 2 * index), device=device)
        else:
            self.engine = TorchEngine(cfg, derive_seed(seed, 2 * index), device=device, path=path, compile=compile)
        self.grad_rng = TorchLaneRng.seeded(cfg.rng, derive_seed(seed, 2 * index + 1), cfg.lanes, 1, device)

    def count_flushed(self, flushed: tuple[str, ...]) -> None:
        if flushed:
            self.flushed_steps += 1
            for name in flushed:
                self.flushed[name] = self.flushed.get(name, 0) + 1

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


def _config_key(cfg: DatapathConfig | BfpConfig | str) -> str:
    return cfg if isinstance(cfg, str) else repr(cfg)


def _first_nan(grads: list[Tensor]) -> tuple[int, int] | None:
    """(tensor index, flat index) of the first NaN among ``grads``, with one device sync per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    hits = []
    for idx in by_device.values():
        flags = torch.stack([torch.isnan(grads[i]).any() for i in idx]).cpu()
        hits += [i for i, f in zip(idx, flags.tolist(), strict=True) if f]
    if not hits:
        return None
    i = min(hits)
    return i, int(torch.nonzero(torch.isnan(grads[i]).reshape(-1))[0])


class LowPrecisionSGLD(Optimizer):
    """Bit-exact low-precision SGLD (and SGD) on the emulated datapath; see the module docstring.

    ``config``: a :class:`DatapathConfig` (its variant is the update rule), a
    :class:`emulator.spec.bfp.BfpConfig` (block floating point, e.g. ``BfpConfig.paper('vc')``),
    a preset name from :data:`emulator.spec.presets.PRESETS` (built with ``lanes`` lanes, default
    1024), or ``"fp"`` for float32 SGLD. Each parameter group may set its own ``lr``,
    ``weight_decay``, ``temperature``, ``dataset_size``, ``config``, ``grad_rounding``,
    ``grad_sr_bits`` and (BFP groups) ``grad_headroom``. ``path``/``compile`` select the
    fixed-point engine's path (see :class:`TorchEngine`).

    >>> opt = LowPrecisionSGLD(model.parameters(), lr=0.5, config="w8-vc", weight_decay=5e-4,  # doctest: +SKIP
    ...                        dataset_size=50000, temperature=1e-3, seed=1)
    """

    def __init__(self, params: Iterable[Any], lr: float, config: DatapathConfig | BfpConfig | str = "w8-vc", *,
                 lanes: int = 1024, temperature: float = 1.0, dataset_size: int = 1, weight_decay: float = 0.0,
                 grad_rounding: str = "stochastic", grad_sr_bits: int = 32, grad_headroom: int = 0, seed: int = 0,
                 path: str = "fused", compile: bool = False):
        derive_seed(seed, 0)  # validates the seed
        self.seed = seed
        self.lanes = lanes
        self.path = path
        self.compile = compile
        self._runtime: list[_GroupRuntime] = []
        HyperParams(lr, temperature, dataset_size, weight_decay)  # validates the defaults
        defaults = dict(lr=lr, config=config, temperature=temperature, dataset_size=dataset_size,
                        weight_decay=weight_decay, grad_rounding=grad_rounding, grad_sr_bits=grad_sr_bits,
                        grad_headroom=grad_headroom)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        cfg = group["config"]
        if isinstance(cfg, str):
            if cfg != FP and cfg not in PRESETS:
                raise ValueError(f"unknown config {cfg!r}; expected 'fp', a DatapathConfig, a BfpConfig or one of "
                                 f"{PRESETS}")
            cfg = group["config"] = cfg if cfg == FP else preset(cfg, self.lanes)
        elif not isinstance(cfg, (DatapathConfig, BfpConfig)):
            raise TypeError(f"config must be a DatapathConfig, a BfpConfig or a preset name, got {type(cfg).__name__}")
        if group["grad_rounding"] not in ("stochastic", "nearest"):
            raise ValueError(f"grad_rounding must be 'stochastic' or 'nearest', got {group['grad_rounding']!r}")
        k = group["grad_sr_bits"]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 52:
            raise ValueError(f"grad_sr_bits must be an int in [1, 52], got {k!r}")
        if isinstance(cfg, BfpConfig):
            check_quantize_bits(cfg.grad, k)
            check_headroom(cfg.grad, group["grad_headroom"])
        elif group["grad_headroom"] != 0:
            raise ValueError(f"grad_headroom is a BFP option; got grad_headroom={group['grad_headroom']!r} for "
                             f"config {_config_key(cfg)}")
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

    def _bfp_state(self, p: Tensor, cfg: BfpConfig) -> dict[str, Tensor]:
        """The BFP state of ``p``; on the first step ``p`` rounded to nearest (host rule, the config's headroom)."""
        st = self.state[p]
        if "mant" not in st:
            t = quantize_torch(p.detach(), cfg.state, "nearest", headroom=cfg.headroom)
            st["mant"], st["exp"] = t.mant, t.exp
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
                grads.append(p.grad)
            work.append((group, params, grads))
        self._check_gradients(work)
        for gi, ((_, params, _), rt) in enumerate(zip(work, self._runtime, strict=True)):
            moved = [str(p.device) for p in params if p.device != rt.device]
            if moved:
                raise ValueError(f"group {gi}: parameters on {moved[0]}, but the optimizer's engines were built "
                                 f"on {rt.device}; move the model before creating the optimizer")
        for (group, params, grads), rt in zip(work, self._runtime, strict=True):
            if not params:
                continue
            lr = float(group["lr"])
            hp = HyperParams(lr, group["temperature"], group["dataset_size"], group["weight_decay"])
            rt.steps += 1
            if rt.generator is not None:  # fp group
                sgld_fp(params, grads, lr=lr, weight_decay=hp.weight_decay,
                        noise_std=math.sqrt(hp.noise_variance), generator=rt.generator)
                continue
            if rt.cfg is None or rt.engine is None or rt.grad_rng is None:
                raise RuntimeError("low-precision group without an engine")  # unreachable: built together
            if isinstance(rt.cfg, BfpConfig) and isinstance(rt.engine, TorchBfpEngine):
                bregs, flushed = bfp_registers_flushed(rt.cfg, hp)
                rt.count_flushed(flushed)
                states = [self._bfp_state(p, rt.cfg) for p in params]
                sgld_bfp(params, grads, states, engine=rt.engine, grad_rng=rt.grad_rng, regs=bregs,
                         grad_rounding=group["grad_rounding"], grad_sr_bits=group["grad_sr_bits"],
                         grad_headroom=group["grad_headroom"])
            elif isinstance(rt.cfg, DatapathConfig) and isinstance(rt.engine, TorchEngine):
                regs, flushed = step_registers_flushed(rt.cfg, hp)
                rt.count_flushed(flushed)
                words = [self._words(p, rt.cfg) for p in params]
                sgld_lp(params, grads, words, engine=rt.engine, grad_rng=rt.grad_rng, regs=regs,
                        grad_rounding=group["grad_rounding"], grad_sr_bits=group["grad_sr_bits"])
            else:
                raise RuntimeError("group engine does not match its config")  # unreachable: built together
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
        # integer state (fixed words, BFP mantissas and exponents) must not go through torch's
        # cast-to-parameter-dtype: restore it directly
        ids = [i for g in saved for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        ints: dict[Any, dict[str, Tensor]] = {}
        state = {}
        for k, v in sd["state"].items():
            v = dict(v)
            ints[k] = {name: v.pop(name) for name in ("words", *_BFP_KEYS) if name in v}
            state[k] = v
        sd["state"] = state
        super().load_state_dict(sd)
        for pid, p in zip(ids, params, strict=True):
            for name, t in ints.get(pid, {}).items():
                self.state[p][name] = t.to(device=p.device, dtype=torch.int64).clone()
        for rt, s in zip(self._runtime, extra["groups"], strict=True):
            rt.load_state_dict(s)
        self.seed = int(extra["seed"])  # groups added later derive their streams from the saved seed
