"""The SGLD update datapath: configuration, random-bit layout and the integer update.

One lane updates one parameter per clock. All arithmetic is on integer words
(see ``docs/spec.md`` for the normative description). With ``S`` the state
format (the weight format for the ``-L`` variants, the accumulator format for
the ``-F`` variants) and ``X`` the fractional bits of the exact sum::

    mu = theta << (X - S.frac)
         - (step * g)      << (X - step.frac - grad.frac)
         - (decay * theta) << (X - decay.frac - S.frac)          # Gaussian prior
    naive, lp_f:   out = sat_S(SR_k(mu + (noise * z) << (X - noise.frac - z.frac)))
    sgd_l, sgd_f:  out = sat_S(SR_k(mu))
    vc:            out = sat_W(Q_vc(mu))                           # branch A or B
    lp_f, sgd_f also emit weight = sat_W(round_nearest(out, acc.frac - weight.frac))

``mu`` and the noise are exact integers at ``X`` fractional bits. The only
narrowing is the final one, except in VC branch A, which first rounds ``x`` to
``vc_frac_bits`` fractional bits of the weight LSB (so its mean is within
2^-(vc_frac_bits+1) LSB of ``x``, see docs/spec.md).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import numpy as np

from .formats import FixedFormat, round_nearest, round_stochastic, sr_split
from .gaussian import GaussianSpec
from .rng import XoroshiroSpec

WORD_BITS = 64  # bits per generator output word


class Variant(str, Enum):
    """Update rules. ``FP`` is the float64 reference and has no datapath."""

    FP = "fp"
    LP_F = "lp_f"
    NAIVE = "naive"
    VC = "vc"
    SGD_F = "sgd_f"
    SGD_L = "sgd_l"

    @property
    def has_accumulator(self) -> bool:
        return self in (Variant.LP_F, Variant.SGD_F)

    @property
    def has_gaussian(self) -> bool:
        return self in (Variant.LP_F, Variant.NAIVE, Variant.VC)

    @property
    def is_langevin(self) -> bool:
        return self in (Variant.FP, Variant.LP_F, Variant.NAIVE, Variant.VC)


class Field(NamedTuple):
    """A random field: ``width`` bits at bit ``offset`` of generator word ``word``."""

    word: int
    offset: int
    width: int


@dataclass(frozen=True)
class StepRegisters:
    """Per-step register values loaded by the host (integer words).

    ``step``: a (step format); ``decay``: a * weight_decay (decay format);
    ``noise``: the Gaussian scale (noise format); ``vc_noise``: VC branch A
    (True) or B (False); ``vc_var``: branch-B variance in units of
    2^-(2 vc_frac_bits) weight LSB^2.
    """

    step: int
    decay: int = 0
    noise: int = 0
    vc_noise: bool = False
    vc_var: int = 0

    def __post_init__(self) -> None:
        for name in ("step", "decay", "noise", "vc_var"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"register {name} must be an int, got {v!r}")
            if v < 0:
                raise ValueError(f"register {name} must be >= 0, got {v}")
            object.__setattr__(self, name, int(v))  # numpy scalars would change the arithmetic's dtypes
        if not isinstance(self.vc_noise, (bool, np.bool_)):
            raise TypeError(f"register vc_noise must be a bool, got {self.vc_noise!r}")
        object.__setattr__(self, "vc_noise", bool(self.vc_noise))


def _coerce_variant(v: Variant | str) -> Variant:
    try:
        return Variant(v)
    except ValueError:
        raise ValueError(f"unknown variant {v!r}; expected one of {[x.value for x in Variant]}") from None


@dataclass(frozen=True)
class DatapathConfig:
    """Everything that fixes the datapath's integers: formats, variant, random budget, lanes."""

    variant: Variant
    weight: FixedFormat = FixedFormat(8, 3)
    grad: FixedFormat = FixedFormat(8, 3)
    acc: FixedFormat | None = None
    step: FixedFormat = FixedFormat(16, 24, signed=False)
    noise: FixedFormat = FixedFormat(16, 19, signed=False)
    decay: FixedFormat | None = None
    gaussian: GaussianSpec = field(default_factory=GaussianSpec)
    sr_bits: int | None = None
    vc_frac_bits: int = 8
    rng: XoroshiroSpec = field(default_factory=XoroshiroSpec)
    rng_words: int = 1
    lanes: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", _coerce_variant(self.variant))
        v = self.variant
        if v is Variant.FP:
            raise ValueError("variant 'fp' is the float64 reference (emulator.analysis.reference), not a datapath")
        for name in ("weight", "grad", "step", "noise"):
            if not isinstance(getattr(self, name), FixedFormat):
                raise TypeError(f"{name} must be a FixedFormat, got {getattr(self, name)!r}")
        for name in ("weight", "grad"):
            if not getattr(self, name).signed:
                raise ValueError(f"{name} format must be signed, got {getattr(self, name)}")
        for name in ("step", "noise"):
            if getattr(self, name).signed:
                raise ValueError(f"{name} register format must be unsigned, got {getattr(self, name)}")
        if self.decay is not None and (not isinstance(self.decay, FixedFormat) or self.decay.signed):
            raise ValueError(f"decay register format must be an unsigned FixedFormat or None, got {self.decay!r}")
        if v.has_accumulator:
            if not isinstance(self.acc, FixedFormat) or not self.acc.signed:
                raise ValueError(f"variant {v.value!r} needs a signed accumulator format, got acc={self.acc!r}")
            if self.acc.frac < self.weight.frac:
                raise ValueError(
                    f"accumulator frac {self.acc.frac} must be >= weight frac {self.weight.frac}"
                )
            if self.acc.width - self.acc.frac < self.weight.width - self.weight.frac:
                raise ValueError(
                    f"accumulator {self.acc} has fewer integer bits than weight {self.weight}"
                )
        elif self.acc is not None:
            raise ValueError(f"variant {v.value!r} has no accumulator; got acc={self.acc}")
        if not isinstance(self.gaussian, GaussianSpec):
            raise TypeError(f"gaussian must be a GaussianSpec, got {self.gaussian!r}")
        if not isinstance(self.rng, XoroshiroSpec):
            raise TypeError(f"rng must be an XoroshiroSpec, got {self.rng!r}")
        if self.rng.word_bits != WORD_BITS:
            raise ValueError(f"the datapath draws {WORD_BITS}-bit generator words, got word_bits={self.rng.word_bits}")
        if self.sr_bits is not None:
            if isinstance(self.sr_bits, bool) or not isinstance(self.sr_bits, (int, np.integer)):
                raise TypeError(f"sr_bits must be an int or None, got {self.sr_bits!r}")
            object.__setattr__(self, "sr_bits", int(self.sr_bits))
            if self.sr_bits < 1:
                raise ValueError(f"sr_bits must be >= 1 or None (all discarded bits), got {self.sr_bits}")
        for name, lo, hi in (("vc_frac_bits", 1, 15), ("rng_words", 1, 8), ("lanes", 1, 1 << 24)):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {val!r}")
            object.__setattr__(self, name, int(val))
            if not lo <= val <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {val}")
        if self.sum_width > 62:
            raise ValueError(
                f"exact sum needs {self.sum_width} bits (frac {self.sum_frac}); at most 62: "
                "reduce register fractional bits or word widths"
            )
        _ = self.fields  # validates the random budget

    # ---- plain-dict form (manifests, JSON) -----------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field; ``DatapathConfig.from_dict(cfg.to_dict()) == cfg``."""
        def fmt(f: FixedFormat | None) -> dict[str, Any] | None:
            return None if f is None else {"width": f.width, "frac": f.frac, "signed": f.signed}

        g, r = self.gaussian, self.rng
        return {
            "variant": self.variant.value, "weight": fmt(self.weight), "grad": fmt(self.grad), "acc": fmt(self.acc),
            "step": fmt(self.step), "noise": fmt(self.noise), "decay": fmt(self.decay),
            "gaussian": {"kind": g.kind, "terms": g.terms, "index_bits": g.index_bits, "frac": g.frac},
            "sr_bits": self.sr_bits, "vc_frac_bits": self.vc_frac_bits,
            "rng": {"word_bits": r.word_bits, "a": r.a, "b": r.b, "c": r.c, "scrambler": r.scrambler},
            "rng_words": self.rng_words, "lanes": self.lanes,
        }

    @classmethod
    def from_dict(cls, d: Any) -> DatapathConfig:
        """The configuration of a :meth:`to_dict` dict (e.g. a manifest's ``config``); missing keys take
        the defaults, unknown keys are a ValueError naming them, wrong types a TypeError."""
        if not isinstance(d, dict):
            raise TypeError(f"configuration must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; expected some of {sorted(known)}")
        if "variant" not in d:
            raise ValueError("configuration dict has no 'variant'")

        def sub(name: str, kind: type, optional: bool = False) -> Any:
            v = d[name]
            if v is None and optional:
                return None
            if not isinstance(v, dict):
                raise TypeError(f"configuration {name!r} must be a dict{' or None' if optional else ''}, got {v!r}")
            try:
                return kind(**v)
            except TypeError as e:
                raise TypeError(f"configuration {name!r} = {v!r}: {e}") from None

        kw: dict[str, Any] = {}
        for name in d:
            if name in ("weight", "grad", "step", "noise"):
                kw[name] = sub(name, FixedFormat)
            elif name in ("acc", "decay"):
                kw[name] = sub(name, FixedFormat, optional=True)
            elif name == "gaussian":
                kw[name] = sub(name, GaussianSpec)
            elif name == "rng":
                kw[name] = sub(name, XoroshiroSpec)
            else:
                kw[name] = d[name]
        return cls(**kw)

    @classmethod
    def paper(
        cls,
        variant: Variant | str,
        *,
        width: int = 8,
        frac: int = 8,
        lanes: int = 1024,
        max_lr: float = 0.5,
        weight_decay: float = 5e-4,
        temperature: float = 1e-3,
        dataset_size: int = 50000,
        acc_width: int | None = None,
        acc_frac: int | None = None,
        register_width: int = 16,
        gaussian: GaussianSpec | None = None,
        sr_bits: int | None = None,
    ) -> DatapathConfig:
        """Fixed point sized from hyper-parameters, the counterpart of ``BfpConfig.paper``.

        Weights and gradients ``Q(width, frac)`` (default the paper's Q(8,8)); ``lp_f``/``sgd_f``
        keep a ``Q(acc_width, acc_frac)`` accumulator (default ``Q(width + 16, frac + 8)``).
        ``step``, ``decay`` (none when ``weight_decay == 0``) and ``noise`` are unsigned
        ``register_width``-bit formats with the most fractional bits that still hold their values
        at ``lr = max_lr`` (:func:`emulator.spec.host.sized_registers`); ``rng_words`` is the
        fewest generator words the resulting random layout needs. Defaults: the paper's CIFAR
        runs (lr 0.5, weight decay 5e-4, T = 1e-3, N = 50000).
        """
        from .host import HyperParams, sized_registers  # host builds on this module

        v = _coerce_variant(variant)
        hp = HyperParams(max_lr, temperature, dataset_size, weight_decay)  # validates the values
        if max_lr <= 0:
            raise ValueError(f"max_lr must be > 0 (the registers are sized for it), got {max_lr!r}")
        rw = register_width
        if isinstance(rw, bool) or not isinstance(rw, int) or not 2 <= rw <= 32:
            raise ValueError(f"register_width must be an int in [2, 32], got {rw!r}")
        gauss = gaussian if gaussian is not None else GaussianSpec()
        acc = None
        if v.has_accumulator:
            acc = FixedFormat(width + 16 if acc_width is None else acc_width,
                              frac + 8 if acc_frac is None else acc_frac)
        elif acc_width is not None or acc_frac is not None:
            raise ValueError(f"variant {v.value!r} has no accumulator; got acc_width={acc_width}, acc_frac={acc_frac}")
        kw: dict[str, Any] = dict(weight=FixedFormat(width, frac), grad=FixedFormat(width, frac), acc=acc,
                                  gaussian=gauss, sr_bits=sr_bits, lanes=lanes,
                                  **sized_registers(v, hp, width=rw, gaussian=gauss))
        # a small lr gets a step register with many fractional bits, so exact SR may drop more bits than
        # one 64-bit generator word holds next to the Gaussian's: give the lane the words its layout uses
        probe = cls(v, rng_words=8, **kw)
        return cls(v, rng_words=1 + max(f.word for f in probe.fields.values()), **kw)

    # ---- derived quantities ------------------------------------------------------

    @property
    def state(self) -> FixedFormat:
        """Format of the updated state: the accumulator for -F variants, else the weight."""
        return self.acc if self.acc is not None else self.weight

    @property
    def uses_noise(self) -> bool:
        return self.variant.has_gaussian

    @property
    def sum_frac(self) -> int:
        """X: fractional bits of the exact sum."""
        fr = [self.state.frac, self.step.frac + self.grad.frac]
        if self.uses_noise:
            fr.append(self.noise.frac + self.gaussian.frac)
        if self.decay is not None:
            fr.append(self.decay.frac + self.state.frac)
        return max(fr)

    @property
    def drop_bits(self) -> int:
        """s: bits dropped by the final narrowing (X - state.frac)."""
        return self.sum_frac - self.state.frac

    @property
    def sr_k(self) -> int:
        """Random bits used by stochastic rounding: min(sr_bits, s)."""
        s = self.drop_bits
        return s if self.sr_bits is None else min(self.sr_bits, s)

    @property
    def vc_uniform_bits(self) -> int:
        return 2 * self.vc_frac_bits + 1

    @property
    def sum_width(self) -> int:
        """Signed bits that hold every intermediate of the exact sum."""
        x = self.sum_frac
        st = self.state
        bound = (1 << (st.width - 1)) << (x - st.frac)
        bound += (self.step.max_word << (self.grad.width - 1)) << (x - self.step.frac - self.grad.frac)
        if self.decay is not None:
            bound += (self.decay.max_word << (st.width - 1)) << (x - self.decay.frac - st.frac)
        if self.uses_noise:
            bound += (self.noise.max_word * self.gaussian.max_abs) << (x - self.noise.frac - self.gaussian.frac)
        widen = max(0, self.vc_frac_bits - self.drop_bits) if self.variant is Variant.VC else 0
        return bound.bit_length() + 2 + widen  # VC branch A may shift x left to vc_frac_bits

    @functools.cached_property
    def fields(self) -> dict[str, Field]:
        """Random-bit layout of one update (normative; see docs/spec.md and :func:`field_layout`)."""
        return field_layout(self.variant, self.sr_k, self.vc_frac_bits, self.gaussian.bits, self.rng_words)

    @property
    def random_bits(self) -> int:
        """Fresh random bits drawn per update (the budget: 64 * rng_words)."""
        return WORD_BITS * self.rng_words

    def check_registers(self, regs: StepRegisters) -> None:
        if not isinstance(regs, StepRegisters):
            raise TypeError(f"registers must be StepRegisters, got {type(regs).__name__}")
        for name in ("step", "noise"):
            fmt: FixedFormat = getattr(self, name)
            if getattr(regs, name) > fmt.max_word:
                raise ValueError(f"register {name}={getattr(regs, name)} exceeds {fmt} max {fmt.max_word}")
        if regs.decay:
            if self.decay is None:
                raise ValueError(f"register decay={regs.decay} but the configuration has no decay register")
            if regs.decay > self.decay.max_word:
                raise ValueError(f"register decay={regs.decay} exceeds {self.decay} max {self.decay.max_word}")
        if self.variant is not Variant.VC and (regs.vc_noise or regs.vc_var):
            raise ValueError(
                f"registers vc_noise={regs.vc_noise}, vc_var={regs.vc_var} are VC-only; "
                f"variant is {self.variant.value!r}"
            )
        vmax = 1 << (2 * self.vc_frac_bits - 2)
        if regs.vc_var > vmax:
            raise ValueError(f"register vc_var={regs.vc_var} exceeds v0 = {vmax} (branch B needs v <= LSB^2/4)")


def field_layout(variant: Variant, sr_k: int, vc_frac_bits: int, gauss_bits: int, rng_words: int) -> dict[str, Field]:
    """Random-bit layout of one update (normative; shared by the fixed and the BFP datapath).

    Slots are packed LSB-first into 64-bit generator words; a slot never
    straddles two words. VC: slot 1 = ``vc`` uniform (2 vc_frac_bits + 1 bits);
    slot 2 is shared by ``sr`` (branch B) and ``gauss`` (branch A).
    naive / lp_f: ``sr`` then ``gauss``. sgd: ``sr``.
    """
    if variant is Variant.VC:
        slots = [[("vc", 2 * vc_frac_bits + 1)], [("sr", sr_k), ("gauss", gauss_bits)]]
    elif variant in (Variant.NAIVE, Variant.LP_F):
        slots = [[("sr", sr_k)], [("gauss", gauss_bits)]]
    else:
        slots = [[("sr", sr_k)]]
    out: dict[str, Field] = {}
    word, offset = 0, 0
    for slot in slots:
        width = max(w for _, w in slot)
        if offset + width > WORD_BITS:
            word, offset = word + 1, 0
        for name, w in slot:
            out[name] = Field(word, offset, w)
        offset += width
    needed = word + 1 if offset else word
    if needed > rng_words:
        desc = ", ".join(f"{n}={f.width}" for n, f in out.items())
        raise ValueError(
            f"random fields ({desc} bits) need {needed} generator words per update; "
            f"rng_words={rng_words}"
        )
    return out


# ---- the update -----------------------------------------------------------------


def extract(words: np.ndarray, f: Field) -> np.ndarray:
    """Field ``f`` of per-element generator words (shape (n, rng_words)) as int64."""
    w = words[:, f.word]
    if f.offset:
        w = w >> np.uint64(f.offset)
    if f.width < WORD_BITS:
        return (w & np.uint64((1 << f.width) - 1)).view(np.int64)  # < 2^63: same value, no copy
    return w.astype(np.int64)


def exact_sum(cfg: DatapathConfig, theta: Any, grad: Any, regs: StepRegisters) -> Any:
    """mu, the noise-free exact sum at ``cfg.sum_frac`` fractional bits.

    Works on Python ints (exact enumeration) and on int64 arrays (the kernel) alike.
    """
    x = cfg.sum_frac
    st = cfg.state
    mu = (theta << (x - st.frac)) - ((regs.step * grad) << (x - cfg.step.frac - cfg.grad.frac))
    if regs.decay and cfg.decay is not None:
        mu = mu - ((regs.decay * theta) << (x - cfg.decay.frac - st.frac))
    return mu


class UpdateResult(NamedTuple):
    """New state words (the accumulator for -F variants) and the weight words the lane emits.

    For -L variants the state is the weight: both fields are the same array.
    """

    state: np.ndarray
    weight: np.ndarray


def update(
    cfg: DatapathConfig,
    theta: np.ndarray,
    grad: np.ndarray,
    regs: StepRegisters,
    words: np.ndarray,
) -> UpdateResult:
    """Apply one update to flat int64 arrays ``theta`` (state words) and ``grad``.

    ``words`` holds each element's random draw, shape (n, rng_words) uint64.
    Word ranges are trusted here (the engine validates them); this is the bit-exact kernel.
    """
    for name, arr in (("theta", theta), ("grad", grad)):
        if getattr(arr, "dtype", None) != np.int64:
            raise TypeError(f"update() needs int64 {name} words, got {getattr(arr, 'dtype', type(arr).__name__)}")
    st = cfg.state
    mu = exact_sum(cfg, theta, grad, regs)
    v = cfg.variant
    if v is Variant.VC:
        out = _vc(cfg, mu, regs, words)
    else:
        x = mu + _noise(cfg, regs, words) if v.has_gaussian else mu
        u = extract(words, cfg.fields["sr"]) if cfg.drop_bits else 0
        out = round_stochastic(x, cfg.drop_bits, cfg.sr_k, u)
    out = st.saturate(out)
    if v.has_accumulator:
        return UpdateResult(out, cfg.weight.saturate(round_nearest(out, st.frac - cfg.weight.frac)))
    return UpdateResult(out, out)


def _noise(cfg: DatapathConfig, regs: StepRegisters, words: np.ndarray) -> np.ndarray | int:
    """noise * z aligned to the exact sum's X fractional bits (0 when the noise register is 0)."""
    if not regs.noise:
        return 0
    g = cfg.fields["gauss"]
    z = cfg.gaussian.sample(words[:, g.word] >> np.uint64(g.offset))
    return (regs.noise * z) << (cfg.sum_frac - cfg.noise.frac - cfg.gaussian.frac)


def sr_variance(fk: np.ndarray, k: int, pm: int) -> np.ndarray:
    """f(1-f) in units of 2^-(2 pm) LSB^2 from the SR fraction ``fk`` (k bits).

    f is taken at h = 2 pm bits (truncated or zero-extended), the product
    f_h (2^h - f_h) is exact at 2h bits and is rounded half up to h bits, so the
    error is below 1.5 * 2^-h LSB^2 however small f is.
    """
    h = 2 * pm
    fh = fk >> (k - h) if k >= h else fk << (h - k)
    return (fh * ((1 << h) - fh) + (1 << (h - 1))) >> h


def _vc(cfg: DatapathConfig, mu: np.ndarray, regs: StepRegisters, words: np.ndarray) -> np.ndarray:
    f = cfg.fields
    pm = cfg.vc_frac_bits
    s = cfg.drop_bits
    u = extract(words, f["vc"])
    if regs.vc_noise:
        # Branch A: x = mu + sqrt(v - v0) xi; q = nearest(x), r = x - q; theta = q + sign(r) Cat(|r|, v0).
        # With y = x + 1/2 = q + l (l = r + 1/2 in [0, 1)) that is: +1 with probability l^2 / 2,
        # -1 with probability (1 - l)^2 / 2, whatever the sign of r (sign(0) = +1 included).
        x = mu + _noise(cfg, regs, words)
        y = round_nearest(x, s - pm) + (1 << (pm - 1))  # x + 1/2 at pm fractional bits of the LSB
        low = y & ((1 << pm) - 1)
        up = low * low  # thresholds against the (2 pm + 1)-bit uniform, strict '<'
        high = (1 << pm) - low
        down = up + high * high
        step_up = u < up
        step_down = (u < down) ^ step_up
        return (y >> pm) + (step_up.view(np.int8) - step_down.view(np.int8))
    # Branch B: q = SR(mu); top up the variance to v with Cat(0, max(v - f(1-f), 0))
    k = cfg.sr_k
    if s == 0:
        q = mu
        vs = np.zeros_like(mu)
    else:
        fl, fk = sr_split(mu, s, k)
        q = fl + ((fk + extract(words, f["sr"])) >> k)
        vs = sr_variance(fk, k, pm)
    w = np.maximum(regs.vc_var - vs, 0)
    up = u < w
    down = (u < 2 * w) ^ up
    return q + (up.view(np.int8) - down.view(np.int8))
