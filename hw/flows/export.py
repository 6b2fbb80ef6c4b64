"""Verilog export of :class:`hw.top.UpdateTop` plus a JSON manifest (ports, latency, registers).

``export(cfg, out_dir)`` writes ``<name>.v`` (``amaranth.back.verilog.convert`` with
``emit_src=False``: deterministic, no machine paths) and ``<name>.json``. The shipped
modules in ``rtl/`` are :data:`SHIPPED` (``lpsgld rtl --shipped -o rtl/``); a test
regenerates them and compares byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from amaranth.back import verilog
from amaranth.lib import data

from emulator.spec.datapath import DatapathConfig, Variant
from emulator.spec.presets import PRESETS, preset

from .. import control
from ..datapath import pipeline_stages
from ..options import HwOptions, check_options
from ..top import UpdateTop, sink_layout, source_layout

SHIPPED = tuple((name, lanes) for name in ("w8-vc", "w8-lpf", "w8-naive") for lanes in (1, 8))
MANIFEST_FORMAT = 1


def preset_name(cfg: DatapathConfig) -> str | None:
    """The shipped preset ``cfg`` equals (at its lane count), or None."""
    for name in PRESETS:
        if preset(name, cfg.lanes) == cfg:
            return name
    return None


def default_name(cfg: DatapathConfig, opts: HwOptions | None = None) -> str:
    """``lpsgld_<preset>_l<L>`` (dashes to underscores), ``lpsgld_custom_<variant>_l<L>`` otherwise;
    non-default options append ``_<target>_p<k>`` (``HwOptions.suffix``)."""
    p = preset_name(cfg)
    stem = p.replace("-", "_") if p else f"custom_{cfg.variant.value}"
    return f"lpsgld_{stem}_l{cfg.lanes}{check_options(opts).suffix}"


def config_dict(cfg: DatapathConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["variant"] = cfg.variant.value
    return d


def _layout_fields(layout: data.StructLayout) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, f in layout:
        entry: dict[str, Any] = {"offset": f.offset, "width": f.width}
        if isinstance(f.shape, data.ArrayLayout):
            elem = f.shape.elem_shape
            entry.update(count=f.shape.length, element_width=elem.width, signed=elem.signed)
        out[name] = entry
    return out


def manifest(cfg: DatapathConfig, name: str, reset_seed: int, latency: int,
             opts: HwOptions | None = None) -> dict[str, Any]:
    opts = check_options(opts)
    sink, source = sink_layout(cfg), source_layout(cfg)
    ports = [
        {"name": "clk", "dir": "in", "width": 1},
        {"name": "rst", "dir": "in", "width": 1},
        {"name": "sink__valid", "dir": "in", "width": 1},
        {"name": "sink__ready", "dir": "out", "width": 1},
        {"name": "sink__payload", "dir": "in", "width": sink.size, "fields": _layout_fields(sink)},
        {"name": "source__valid", "dir": "out", "width": 1},
        {"name": "source__ready", "dir": "in", "width": 1},
        {"name": "source__payload", "dir": "out", "width": source.size, "fields": _layout_fields(source)},
        {"name": "ctl__addr", "dir": "in", "width": control.ADDR_WIDTH},
        {"name": "ctl__data", "dir": "in", "width": control.DATA_WIDTH},
        {"name": "ctl__we", "dir": "in", "width": 1},
        {"name": "idle", "dir": "out", "width": 1},
    ]
    return {
        "format": MANIFEST_FORMAT,
        "module": name,
        "preset": preset_name(cfg),
        "lanes": cfg.lanes,
        "variant": cfg.variant.value,
        "config": config_dict(cfg),
        "state_format": {"width": cfg.state.width, "frac": cfg.state.frac},
        "weight_format": {"width": cfg.weight.width, "frac": cfg.weight.frac},
        "latency": latency,
        "target": opts.target,
        "pipeline_depth": opts.pipeline,
        "throughput_beats_per_clock": 1,
        "pipeline": [{"unit": u, "stages": n, "does": d} for u, n, d in pipeline_stages(cfg, opts)],
        "ports": ports,
        "registers": control.register_map(cfg),
        "seed_registers": {"base": control.SEED_BASE, "streams": control.streams(cfg),
                           "s0_addr": "base + 2*j", "s1_addr": "base + 2*j + 1",
                           "stream": "j = lane * rng_words + k"},
        "reset_seed": reset_seed,
        "vc": cfg.variant is Variant.VC,
    }


def export(cfg: DatapathConfig, out_dir: str | os.PathLike[str], *, name: str | None = None,
           reset_seed: int = 0, opts: HwOptions | None = None) -> dict[str, Any]:
    """Write ``<name>.v`` and ``<name>.json`` into ``out_dir``; return the manifest.

    ``opts`` (:class:`hw.options.HwOptions`): target and pipeline depth (default: ice40-hx, 1).
    """
    if not isinstance(cfg, DatapathConfig):
        raise TypeError(f"cfg must be an emulator.spec.datapath.DatapathConfig, got {type(cfg).__name__}")
    opts = check_options(opts)
    if name is None:
        name = default_name(cfg, opts)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"module name must be a Verilog identifier, got {name!r}")
    top = UpdateTop(cfg, reset_seed=reset_seed, opts=opts)  # checks reset_seed
    text = verilog.convert(top, name=name, emit_src=False)
    man = manifest(cfg, name, top.reset_seed, top.latency, opts)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.v"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(man, f, indent=1)
        f.write("\n")
    return man


def _export_preset(job: tuple[str, int, str]) -> dict[str, Any]:
    name, lanes, out_dir = job
    return export(preset(name, lanes), out_dir)


def export_shipped(out_dir: str | os.PathLike[str], *, jobs: int = 1) -> list[dict[str, Any]]:
    """Every configuration in :data:`SHIPPED`, reset seed 0, on ``jobs`` processes."""
    todo = [(name, lanes, os.fspath(out_dir)) for name, lanes in SHIPPED]
    if jobs <= 1:
        return [_export_preset(j) for j in todo]
    # spawn, not fork: the Yosys back-end runs in a WebAssembly runtime that must not be forked
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_export_preset, sorted(todo, key=lambda j: -j[1])))
