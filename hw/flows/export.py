"""Verilog export of :class:`hw.top.UpdateTop` plus a JSON manifest (ports, latency, registers).

``export(cfg, out_dir)`` writes ``<name>.v`` (:func:`to_verilog`: Amaranth's RTLIL with
``emit_src=False``, deterministic, no machine paths, the kept registers marked on their flip-flops
by :func:`keep_registers`, through Amaranth's own Yosys conversion) and ``<name>.json``. The shipped
modules in ``rtl/`` are :data:`SHIPPED` (``lpsgld rtl --shipped -o rtl/``); a test
regenerates them and compares byte for byte.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from amaranth.back import rtlil, verilog
from amaranth.lib import data

from emulator.spec.datapath import DatapathConfig, Variant
from emulator.spec.formats import FixedFormat
from emulator.spec.presets import PRESETS, preset

from .. import control
from ..datapath import pipeline_stages
from ..options import HwOptions, check_options
from ..top import UpdateTop, sink_layout, source_layout

SHIPPED = (tuple((name, lanes) for name in ("w8-vc", "w8-lpf", "w8-naive") for lanes in (1, 8))
           + tuple((name, lanes) for name in ("w4-vc", "w4-lpf", "w4-naive") for lanes in (1, 4)))
MANIFEST_VERSION = 2  # 2: reset, ready rule, idle, register formats/resets, numeric seed addresses, host ranges
# Verilator warnings of Amaranth's (Yosys') Verilog style, waived in the .vlt shipped beside each
# design (docs/hardware.md "Lint waivers" gives the reasons)
LINT_WAIVERS = ("WIDTHEXPAND", "UNUSEDSIGNAL", "PROCASSINIT", "CASEINCOMPLETE", "DECLFILENAME")


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
    """``cfg.to_dict()``: ``DatapathConfig.from_dict`` of it gives ``cfg`` back."""
    return cfg.to_dict()


def _fmt(f: FixedFormat) -> dict[str, Any]:
    return {"width": f.width, "frac": f.frac, "signed": f.signed}


def _registers(cfg: DatapathConfig) -> dict[str, dict[str, Any]]:
    """Register map with reset values, formats (fraction bits) and meaning."""
    p = cfg.vc_frac_bits
    info: dict[str, dict[str, Any]] = {
        "step": {"format": _fmt(cfg.step), "meaning": "lr: the gradient's multiplier, step * 2^-step.frac"},
        "decay": {"format": _fmt(cfg.decay) if cfg.decay is not None else None,
                  "meaning": "lr * weight_decay: theta's multiplier (Gaussian prior)"},
        "noise": {"format": _fmt(cfg.noise),
                  "meaning": "noise scale: multiplier of the Gaussian sample z (z has gaussian.frac fraction bits)"},
        "vc_var": {"format": {"width": 2 * p - 1, "frac": 2 * p, "signed": False, "unit": "weight LSB^2"},
                   "meaning": f"VC branch B target variance in weight LSB^2 * 2^-{2 * p} "
                              f"(0 .. 2^{2 * p - 2} = 1/4 LSB^2)"},
        "vc_noise": {"format": {"width": 1, "frac": 0, "signed": False},
                     "meaning": "VC branch: 1 = A (add noise * z, then Cat), 0 = B (SR, then Cat top-up)"},
    }
    out = {}
    for name, r in control.register_map(cfg).items():
        out[name] = {"addr": r["addr"], "width": r["width"], "reset": 0, **info[name]}
    return out


def host_ranges(cfg: DatapathConfig) -> dict[str, Any]:
    """Upper bounds of the host hyper-parameters the registers hold: lr, lr * weight_decay and the
    noise variance v (= 2 lr T / N). The host rounds to nearest, so a value below ``max`` fits and
    ``emulator.spec.host.step_registers`` raises ValueError from ``max`` on; ``lsb`` is the resolution."""
    def bound(f: FixedFormat) -> float:
        return (f.max_word + 0.5) * f.lsb

    out: dict[str, Any] = {"lr": {"max": bound(cfg.step), "lsb": cfg.step.lsb}}
    if cfg.decay is not None:
        out["lr_times_weight_decay"] = {"max": bound(cfg.decay), "lsb": cfg.decay.lsb}
    sigma = float(cfg.gaussian.std)
    if cfg.variant is Variant.VC:
        v0 = cfg.weight.lsb ** 2 / 4
        out["noise_variance"] = {"max": (bound(cfg.noise) * sigma) ** 2 + v0, "branch_a_above": v0}
    elif cfg.variant.has_gaussian:
        out["noise_variance"] = {"max": (bound(cfg.noise) * sigma) ** 2}
    return out


def _seeds(cfg: DatapathConfig, reset_seed: int) -> dict[str, Any]:
    writes = control.seed_writes(cfg, reset_seed)  # (s0 addr, word), (s1 addr, word) per stream j
    streams = [{"stream": j, "lane": j // cfg.rng_words, "word": j % cfg.rng_words, "s0_addr": a0, "s1_addr": a1,
                "reset_s0": f"{w0:#018x}", "reset_s1": f"{w1:#018x}"}
               for j, ((a0, w0), (a1, w1)) in enumerate(zip(writes[::2], writes[1::2], strict=True))]
    return {"base": control.SEED_BASE, "streams": control.streams(cfg),
            "s0_addr": "base + 2*j", "s1_addr": "base + 2*j + 1", "stream": "j = lane * rng_words + k",
            "addresses": streams,
            "write_rule": "a write to either word of a generator holds the whole generator on that edge: the written "
                          "word loads, the other keeps its value; a beat transferred on that edge uses the output "
                          "read before it"}


PROTOCOL = {
    "clock": "clk, rising edge; every input is sampled and every register changes on it",
    "reset": {"port": "rst", "active": "high", "synchronous": True, "min_cycles": 1, "required_before_use": True,
              "effect": "empties the pipeline (source__valid = 0, idle = 1 after the edge), sets every per-step "
                        "register to its reset value (0) and every generator to its reset state (seed_registers); "
                        "the datapath registers have no reset (don't-care while not valid)",
              "during_reset": "sink__ready = 0: a beat offered while rst is high is not taken"},
    "ready_rule": "sink__ready = (~source__valid | source__ready) & ~rst (combinational from source__ready); "
                  "a beat transfers on a rising edge with valid & ready on that port",
    "order": "one output beat per input beat, in input order, also for keep = 0 beats; element i of a call goes to "
             "lane i mod L at beat i div L; lane l steps its generators once per transferred beat with keep[l] = 1",
    "idle": "idle = 1 exactly when no transferred beat is still inside the pipeline (all output beats delivered)",
    "control": "write (ctl__addr, ctl__data) with ctl__we high for one clock; a register takes the low bits it "
               "needs; other addresses are ignored; register writes are meant for idle periods; a write "
               "strobed on edge w is seen by every beat transferred on edge w + 1 or later",
    "latency": "a beat transferred on edge t is valid on source after edge t + latency - 1 (taken at edge "
               "t + latency at the earliest); one beat per clock at full rate",
}


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
        "version": MANIFEST_VERSION,
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
        "protocol": PROTOCOL,
        "registers": _registers(cfg),
        "seed_registers": _seeds(cfg, reset_seed),
        "host_ranges": host_ranges(cfg),
        "reset_seed": reset_seed,
        "vc": cfg.variant is Variant.VC,
    }


def strip_init_values(text: str) -> str:
    """The Verilog without declaration initial values (``reg [7:0] x = 8'h00;`` -> ``reg [7:0] x;``):
    state is then defined by ``rst`` alone, as ASIC flows (which drop initial values) see it."""
    return _INIT.sub(r"\1;", text)


# a reg declaration with an initial value; plain or escaped (``\\name$12 ``) names, except the
# back-end's ``\\$auto$verilog_backend...`` regs (not state: they start `always @*` blocks at time 0)
_INIT = re.compile(r"^(\s*reg (?:signed )?(?:\[\d+:\d+\] )?(?:\\(?!\$auto\$)\S+ |[A-Za-z_][\w$]*)) = [^;]+;$", re.M)


def vlt_text(name: str) -> str:
    """Verilator configuration waiving :data:`LINT_WAIVERS` in ``<name>.v`` (any directory)."""
    lines = ["`verilator_config", f"// lint waivers for {name}.v: Amaranth's Verilog style (docs/hardware.md)"]
    lines += [f'lint_off -rule {w} -file "*{name}.v"' for w in LINT_WAIVERS]
    return "\n".join(lines) + "\n"


# RTLIL: a wire's attributes and declaration; a flip-flop cell and the wire its Q drives
_KEPT_WIRE = re.compile(r"^((?:[ \t]*attribute .*\n)+)[ \t]*wire (?:width \d+ )?(?:signed )?(\S+)$", re.M)
_FF_CELL = re.compile(r"^([ \t]*)(attribute \\keep 1\n[ \t]*)?"
                      r"(cell \$a?dff \S+\n(?:(?!\s*end\n).*\n)*?\s*connect \\Q (\S+)\n)", re.M)


def keep_registers(rtlil_text: str) -> str:
    """Copy the ``keep`` attribute of register signals (``Signal(attrs={"keep": 1})``) onto the flip-flop
    cells that drive them. Amaranth puts a register's attributes on its output wire only; Yosys merges
    flip-flops with the same inputs unless the *cell* is kept, which would fold the per-lane copies of
    the broadcast registers into one. In the Verilog the cell's attribute becomes ``(* keep *)`` on its
    ``always`` block, which Yosys (and vendor tools' keep) honour when they read it back."""
    kept = {m.group(2) for m in _KEPT_WIRE.finditer(rtlil_text) if re.search(r"attribute \\keep 1$", m.group(1), re.M)}
    return _FF_CELL.sub(lambda m: (f"{m.group(1)}attribute \\keep 1\n{m.group(1)}{m.group(3)}"
                                   if m.group(4) in kept and not m.group(2) else m.group(0)), rtlil_text)


def to_verilog(elaboratable: Any, name: str) -> str:
    """Verilog of an Amaranth component: ``emit_src=False`` (no machine paths), kept registers kept.
    ``verilog.convert`` is ``rtlil.convert`` then ``_convert_rtlil_text`` (amaranth 0.5.10, pinned in
    pyproject.toml); the RTLIL is edited in between."""
    return verilog._convert_rtlil_text(keep_registers(rtlil.convert(elaboratable, name=name, emit_src=False)))


def export(cfg: DatapathConfig, out_dir: str | os.PathLike[str], *, name: str | None = None,
           reset_seed: int = 0, init_values: bool = True, opts: HwOptions | None = None) -> dict[str, Any]:
    """Write ``<name>.v``, ``<name>.vlt`` (Verilator lint waivers) and ``<name>.json`` into
    ``out_dir``; return the manifest. ``init_values=False`` leaves out the declaration initial
    values (reset-only state, for ASIC flows): the design then needs ``rst`` before use, and
    behaves identically after it. ``opts`` (:class:`hw.options.HwOptions`): target and pipeline
    depth (default: ice40-hx, 1)."""
    if not isinstance(cfg, DatapathConfig):
        raise TypeError(f"cfg must be an emulator.spec.datapath.DatapathConfig, got {type(cfg).__name__}")
    opts = check_options(opts)
    if name is None:
        name = default_name(cfg, opts)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"module name must be a Verilog identifier, got {name!r}")
    top = UpdateTop(cfg, reset_seed=reset_seed, opts=opts)  # checks reset_seed
    if not isinstance(init_values, bool):
        raise TypeError(f"init_values must be a bool, got {init_values!r}")
    text = to_verilog(top, name)
    if not init_values:
        text = strip_init_values(text)
    man = manifest(cfg, name, top.reset_seed, top.latency, opts)
    man["init_values"] = init_values
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.v"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{name}.vlt"), "w") as f:
        f.write(vlt_text(name))
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
