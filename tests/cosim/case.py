"""What one co-simulation run is: the design (configuration, lanes, reset seed) and the stimulus.

A :class:`Design` names a preset plus ``dataclasses.replace`` overrides, so custom random
budgets (``sr_bits``, ``rng_words``, a wider Gaussian) are plain JSON. A :class:`CosimCase`
adds the stimulus parameters; it round-trips through JSON, which is how pytest hands it to
the cocotb module (environment variable ``LPSGLD_COSIM``) and how a failure is reproduced.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from emulator.spec.datapath import DatapathConfig
from emulator.spec.gaussian import GaussianSpec
from emulator.spec.presets import preset

ENV_VAR = "LPSGLD_COSIM"


def _override(name: str, value: Any) -> Any:
    if name == "gaussian":
        return GaussianSpec(**value)
    return value


@dataclass(frozen=True)
class Design:
    """A hardware build: preset name, lane count, overrides of DatapathConfig fields, reset seed,
    and the implementation choice (``target``, ``pipeline``: ``hw.options.HwOptions``)."""

    preset: str
    lanes: int
    overrides: tuple[tuple[str, Any], ...] = ()
    reset_seed: int = 0
    target: str = "ice40-hx"
    pipeline: int = 1

    @classmethod
    def of(cls, preset_name: str, lanes: int, reset_seed: int = 0, *, target: str = "ice40-hx", pipeline: int = 1,
           **overrides: Any) -> Design:
        return cls(preset_name, lanes, tuple(sorted(overrides.items())), reset_seed, target, pipeline)

    def config(self) -> DatapathConfig:
        cfg = preset(self.preset, self.lanes)
        if self.overrides:
            cfg = replace(cfg, **{k: _override(k, v) for k, v in self.overrides})
        return cfg

    @property
    def family(self) -> str:
        return self.preset.split("-")[0]

    @property
    def name(self) -> str:
        """Readable, unique, filesystem-safe: ``w8-vc_l8_sr3_rw2_s0``."""
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
        return "lpsgld_" + self.name.replace("-", "_")

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "lanes": self.lanes, "overrides": dict(self.overrides),
                "reset_seed": self.reset_seed, "target": self.target, "pipeline": self.pipeline}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Design:
        return cls.of(d["preset"], d["lanes"], d.get("reset_seed", 0), target=d.get("target", "ice40-hx"),
                      pipeline=d.get("pipeline", 1), **d.get("overrides", {}))


@dataclass(frozen=True)
class CosimCase:
    """One simulation run: a design plus the seeded stimulus.

    ``stream_seed`` seeds every random choice of the stimulus (calls, sizes, inputs, register
    sets, loaded seeds, gap/stall patterns); ``segments`` is the number of host actions
    (register/seed writes + one stream each); ``p_gap`` is the probability that the
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
