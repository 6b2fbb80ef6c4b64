"""The manifest as the contract: load a design's JSON manifest into what a testbench needs.

:func:`load_manifest` reads ``<design>.json`` (written by ``lpsgld rtl`` / ``hw.flows.export``, or by
hand for anyone's implementation) and returns a :class:`Manifest`: the ``DatapathConfig``, the
lane count, latency, payload layout, register map, seed addresses and reset seed, each checked
against the others (the configuration's widths must equal the ports'). Needs neither amaranth
nor a simulator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.spec.datapath import DatapathConfig

from .beats import BeatLayout
from .case import Design
from .plan import ADDR_RNG, register_widths

SUPPORTED_VERSIONS = (1, 2)
PORTS = ("clk", "rst", "sink__valid", "sink__ready", "sink__payload", "source__valid", "source__ready",
         "source__payload", "ctl__addr", "ctl__data", "ctl__we", "idle")


@dataclass(frozen=True)
class Manifest:
    """A design's contract, from its manifest."""

    module: str
    config: DatapathConfig
    latency: int
    reset_seed: int
    layout: BeatLayout
    registers: dict[str, dict[str, Any]]  # name -> {addr, width, ...}
    seed_addresses: list[tuple[int, int]]  # stream j -> (s0 addr, s1 addr)
    raw: dict[str, Any]

    @property
    def lanes(self) -> int:
        return self.config.lanes

    def design(self) -> Design:
        """The :class:`Design` the co-verification runs (configuration and module from the manifest)."""
        return Design.from_config(self.config, self.module, self.reset_seed)


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ValueError(f"manifest {where}has no {key!r}")  # where: '' or 'name ' (as in the TypeError)
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise TypeError(f"manifest {where}{key!r} must be {getattr(kind, '__name__', kind)}, got {v!r}")
    return v


def parse_manifest(d: Any) -> Manifest:
    """:class:`Manifest` of a manifest dict (see :func:`load_manifest`)."""
    if not isinstance(d, dict):
        raise TypeError(f"manifest must be a JSON object, got {type(d).__name__}")
    version = d.get("version", d.get("format"))
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"manifest version {version!r} is not supported (expected one of {SUPPORTED_VERSIONS})")
    module = _get(d, "module", str, "")
    if not module.isidentifier():
        raise ValueError(f"manifest module {module!r} is not a Verilog identifier")
    cfg = DatapathConfig.from_dict(_get(d, "config", dict, ""))
    lanes = _get(d, "lanes", int, "")
    if lanes != cfg.lanes:
        raise ValueError(f"manifest lanes {lanes} != config lanes {cfg.lanes}")
    latency = _get(d, "latency", int, "")
    if latency < 1:
        raise ValueError(f"manifest latency must be >= 1, got {latency}")
    reset_seed = d.get("reset_seed", 0)
    if isinstance(reset_seed, bool) or not isinstance(reset_seed, int) or not 0 <= reset_seed < 1 << 64:
        raise ValueError(f"manifest reset_seed must be an int in [0, 2**64), got {reset_seed!r}")
    layout = BeatLayout.of(cfg)
    ports = {p.get("name"): p for p in _get(d, "ports", list, "")}
    missing = [p for p in PORTS if p not in ports]
    if missing:
        raise ValueError(f"manifest ports lack {missing}")
    for name, width in (("sink__payload", layout.sink_width), ("source__payload", layout.source_width)):
        if ports[name].get("width") != width:
            raise ValueError(f"manifest port {name} width {ports[name].get('width')} != {width} from the config")
    registers = _get(d, "registers", dict, "")
    expected = register_widths(cfg)
    got = {}
    for name, r in registers.items():
        if not isinstance(r, dict) or not isinstance(r.get("addr"), int) or not isinstance(r.get("width"), int):
            raise ValueError(f"manifest register {name!r} needs int addr and width, got {r!r}")
        got[r["addr"]] = r["width"]
    if got != expected:
        raise ValueError(f"manifest registers {registers} differ from the contract's map for this configuration "
                         f"(addr -> width {expected})")
    seeds = _get(d, "seed_registers", dict, "")
    base = _get(seeds, "base", int, "seed_registers ")
    if base != ADDR_RNG:  # the contract's map (the plan writes seeds there)
        raise ValueError(f"manifest seed_registers.base {base:#x} is not the contract's {ADDR_RNG:#x}")
    n = cfg.lanes * cfg.rng_words
    addrs = [(base + 2 * j, base + 2 * j + 1) for j in range(n)]
    if "addresses" in seeds:
        entries = _get(seeds, "addresses", list, "seed_registers ")
        listed = [(_get(a, "s0_addr", int, "seed_registers.addresses "), _get(a, "s1_addr", int,
                   "seed_registers.addresses ")) if isinstance(a, dict) else None for a in entries]
        if listed != addrs:
            raise ValueError("manifest seed_registers.addresses disagree with base + 2*j, base + 2*j + 1")
    return Manifest(module, cfg, latency, reset_seed, layout, registers, addrs, d)


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and check a manifest JSON file: ValueError / TypeError name what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"manifest {p} does not exist")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"manifest {p} is not JSON: {e}") from None
    return parse_manifest(d)
