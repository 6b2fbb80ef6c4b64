"""What one co-simulation run is: the design (configuration, lanes, reset seed) and the stimulus.

A :class:`Design` names a preset plus ``dataclasses.replace`` overrides, so custom random
budgets (``sr_bits``, ``rng_words``, a wider Gaussian) are plain JSON; or it carries a whole
configuration dict and a module name (:meth:`Design.from_config`, :meth:`Manifest.design`: anyone's RTL described by a
manifest). A :class:`CosimCase` adds the stimulus parameters; it round-trips through JSON,
which is how the runner hands it to the cocotb module (environment variable ``LPSGLD_COSIM``)
and how a failure is reproduced.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from emulator.spec.datapath import DatapathConfig
from emulator.spec.gaussian import GaussianSpec
from emulator.spec.presets import _CASES, preset

ENV_VAR = "LPSGLD_COSIM"


def _override(name: str, value: Any) -> Any:
    if name == "gaussian":
        return GaussianSpec(**value)
    return value


@dataclass(frozen=True)
class Design:
    """A hardware build: preset name, lane count, overrides of DatapathConfig fields, reset seed;
    or (``preset`` None) a whole configuration as sorted JSON in ``config_json`` and the
    top-level ``module`` name, as read from a manifest. ``target`` / ``pipeline``: the
    implementation choice (``hw.options.HwOptions``) the build is exported with."""

    preset: str | None
    lanes: int
    overrides: tuple[tuple[str, Any], ...] = ()
    reset_seed: int = 0
    config_json: str | None = None
    module: str | None = None
    target: str = "ice40-hx"
    pipeline: int = 1

    @classmethod
    def of(cls, preset_name: str, lanes: int, reset_seed: int = 0, *, target: str = "ice40-hx", pipeline: int = 1,
           **overrides: Any) -> Design:
        return cls(preset_name, lanes, tuple(sorted(overrides.items())), reset_seed, target=target, pipeline=pipeline)

    @classmethod
    def from_config(cls, cfg: DatapathConfig, module: str, reset_seed: int = 0) -> Design:
        """A design given by its whole configuration (e.g. from a manifest) and module name."""
        return cls(None, cfg.lanes, (), reset_seed, json.dumps(cfg.to_dict(), sort_keys=True), module)

    def config(self) -> DatapathConfig:
        if self.config_json is not None:
            return DatapathConfig.from_dict(json.loads(self.config_json))
        if self.preset is None:
            raise ValueError("a Design needs a preset or a configuration")
        cfg = preset(self.preset, self.lanes)
        if self.overrides:
            cfg = replace(cfg, **{k: _override(k, v) for k, v in self.overrides})
        return cfg

    @property
    def family(self) -> str | None:
        """The golden hyper-parameter family (``w8``) whose host cases fit, or None."""
        fam = self.preset.split("-")[0] if self.preset else f"w{self.config().weight.width}"
        return fam if fam in _CASES else None

    @property
    def name(self) -> str:
        """Readable, unique, filesystem-safe: ``w8-vc_l8_sr3_rw2_s0`` (or the module name)."""
        if self.preset is None:
            h = hashlib.sha1((self.config_json or "").encode()).hexdigest()[:6]
            return f"{self.module or 'custom'}_{h}" + (f"_rs{self.reset_seed}" if self.reset_seed else "")
        parts = [self.preset, f"l{self.lanes}"]
        for k, v in self.overrides:
            if k == "gaussian":
                parts.append(f"g{v['terms']}x{v['index_bits']}")
            elif k == "sr_bits":
                parts.append(f"sr{v if v is not None else 'all'}")
            elif k == "rng_words":
                parts.append(f"rw{v}")
            else:
                parts.append(f"{k}{hashlib.sha1(repr(v).encode()).hexdigest()[:6]}")
        if self.reset_seed:
            parts.append(f"rs{self.reset_seed}")
        if (self.target, self.pipeline) != ("ice40-hx", 1):
            parts.append(f"{self.target.replace('-', '')}_p{self.pipeline}")
        return "_".join(parts)

    @property
    def module_name(self) -> str:
        """Verilog top-level name of this build."""
        return self.module or "lpsgld_" + self.name.replace("-", "_")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"preset": self.preset, "lanes": self.lanes, "overrides": dict(self.overrides),
                             "reset_seed": self.reset_seed, "target": self.target, "pipeline": self.pipeline}
        if self.config_json is not None:
            d["config"] = json.loads(self.config_json)
        if self.module is not None:
            d["module"] = self.module
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Design:
        hw = {"target": d.get("target", "ice40-hx"), "pipeline": d.get("pipeline", 1)}
        if d.get("config") is not None:
            cfg = DatapathConfig.from_dict(d["config"])
            return cls(d.get("preset"), cfg.lanes, (), d.get("reset_seed", 0),
                       json.dumps(cfg.to_dict(), sort_keys=True), d.get("module"), **hw)
        base = cls.of(d["preset"], d["lanes"], d.get("reset_seed", 0), **hw, **d.get("overrides", {}))
        return replace(base, module=d.get("module"))


@dataclass(frozen=True)
class CosimCase:
    """One simulation run: a design plus the seeded stimulus.

    ``stream_seed`` seeds every random choice of the stimulus (calls, sizes, inputs, register
    sets, loaded seeds, gap/stall patterns); ``segments`` is the number of host actions
    (register/seed writes + one stream each), at least (``min_elements`` adds random segments
    until that many elements are verified); ``p_gap`` is the probability that the
    testbench withholds sink valid for a cycle between beats, ``p_stall`` that it lowers
    source ready; ``max_beats`` bounds a call's length.
    """

    design: Design
    stream_seed: int
    segments: int = 10
    max_beats: int = 24
    p_gap: float = 0.25
    p_stall: float = 0.25
    waves: bool = False
    summary_file: str = ""
    min_elements: int = 0  # random segments are added until this many elements are verified
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["design"] = self.design.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CosimCase:
        d = json.loads(text)
        d["design"] = Design.from_dict(d["design"])
        return cls(**d)


def ci_case(design: Design, latency: int, *, k: int = 0, soak: bool = False, waves: bool = False) -> CosimCase:
    """The CI run of ``design`` (stimulus seed ``k``): 12 segments of up to 24 beats, or with
    ``soak`` 200 segments of up to 64 beats. The seed is derived from the design's name."""
    return CosimCase(design, stream_seed=zlib.crc32(f"{design.name}/{k}".encode()), segments=200 if soak else 12,
                     max_beats=64 if soak else 24, waves=waves, extra={"latency": latency})
