"""The verification IP as a user meets it: manifests as the contract (DatapathConfig round trip,
the facts a testbench needs), ``lpsgld verify`` on the shipped RTL, the hand-written example,
mutants of the two corner cases (a beat offered during reset, a seed word written on a transfer
edge) on both simulators, the export without initial values, and the shipped .vlt lint files."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

from emulator.cli import main
from emulator.spec.datapath import DatapathConfig, Variant
from emulator.spec.formats import FixedFormat
from emulator.spec.gaussian import GaussianSpec
from emulator.spec.presets import PRESETS, preset
from hw.verify.manifest import load_manifest, parse_manifest
from hw.verify.runner import missing_tool

ROOT = pathlib.Path(__file__).resolve().parents[2]
RTL = ROOT / "rtl"
EXAMPLE = ROOT / "examples" / "handwritten"


# ---- DatapathConfig <-> dict -------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_config_dict_round_trip_presets(name):
    for lanes in (1, 3, 8):
        cfg = preset(name, lanes)
        d = cfg.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert DatapathConfig.from_dict(json.loads(json.dumps(d))) == cfg


def _random_config(rng):
    variant = Variant(str(rng.choice(["vc", "naive", "lp_f", "sgd_l", "sgd_f"])))
    w = int(rng.integers(3, 12))
    weight = FixedFormat(w, int(rng.integers(0, w)))
    acc = FixedFormat(w + int(rng.integers(0, 8)), weight.frac + int(rng.integers(0, 6))) \
        if variant in (Variant.LP_F, Variant.SGD_F) else None
    if acc is not None and acc.width - acc.frac < weight.width - weight.frac:
        acc = FixedFormat(acc.frac + weight.width - weight.frac, acc.frac)
    g = GaussianSpec("table", int(rng.integers(1, 4)), int(rng.integers(2, 7)), int(rng.integers(2, 8)))
    return DatapathConfig(
        variant, weight=weight, grad=FixedFormat(int(rng.integers(3, 10)), int(rng.integers(0, 6))), acc=acc,
        step=FixedFormat(int(rng.integers(2, 12)), int(rng.integers(4, 16)), signed=False),
        noise=FixedFormat(int(rng.integers(2, 12)), int(rng.integers(4, 14)), signed=False),
        decay=None if rng.random() < 0.5 else FixedFormat(int(rng.integers(2, 8)), int(rng.integers(4, 12)),
                                                           signed=False),
        gaussian=g, sr_bits=None if rng.random() < 0.5 else int(rng.integers(1, 8)),
        vc_frac_bits=int(rng.integers(2, 8)), rng_words=int(rng.integers(1, 3)), lanes=int(rng.integers(1, 9)))


def test_config_dict_round_trip_random():
    rng = np.random.default_rng(14)
    made = 0
    for _ in range(400):
        try:
            cfg = _random_config(rng)
        except ValueError:
            continue  # an impossible combination (e.g. sum too wide): the constructor says so
        made += 1
        assert DatapathConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert made >= 100


def test_config_from_dict_errors():
    d = preset("w8-vc").to_dict()
    with pytest.raises(ValueError, match=r"unknown configuration keys \['colour'\]"):
        DatapathConfig.from_dict({**d, "colour": 1})
    with pytest.raises(TypeError, match=r"configuration 'weight' must be a dict, got 8"):
        DatapathConfig.from_dict({**d, "weight": 8})
    with pytest.raises(TypeError, match="configuration must be a dict, got list"):
        DatapathConfig.from_dict([])
    with pytest.raises(ValueError, match="no 'variant'"):
        DatapathConfig.from_dict({"lanes": 1})
    with pytest.raises(ValueError, match="unknown variant 'vcx'"):
        DatapathConfig.from_dict({**d, "variant": "vcx"})


# ---- manifests -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*sorted(RTL.glob("*.json")), EXAMPLE / "lpsgld_w4_sgd_l_l1.json"],
                         ids=lambda p: p.stem)
def test_shipped_manifests_load(path):
    man = load_manifest(path)
    raw = json.loads(path.read_text())
    assert man.config == preset(raw["preset"], raw["lanes"])
    assert man.lanes == raw["lanes"] and man.latency == raw["latency"] and man.module == path.stem
    assert man.layout.sink_width == next(p["width"] for p in raw["ports"] if p["name"] == "sink__payload")
    assert raw["version"] == 2


def test_manifest_states_the_contract():
    raw = json.loads((RTL / "lpsgld_w8_vc_l8.json").read_text())
    proto = raw["protocol"]
    assert proto["reset"]["active"] == "high" and proto["reset"]["synchronous"] is True
    assert proto["reset"]["required_before_use"] is True and "sink__ready = 0" in proto["reset"]["during_reset"]
    assert "& ~rst" in proto["ready_rule"] and "idle = 1" in proto["idle"]
    regs = raw["registers"]
    assert regs["step"] == {"addr": 0, "width": 16, "reset": 0, "format": {"width": 16, "frac": 24, "signed": False},
                            "meaning": regs["step"]["meaning"]}
    assert all(r["reset"] == 0 for r in regs.values())
    seeds = raw["seed_registers"]
    assert [(a["s0_addr"], a["s1_addr"]) for a in seeds["addresses"]] == [(256 + 2 * j, 257 + 2 * j) for j in range(8)]
    assert "holds the whole generator" in seeds["write_rule"]
    from emulator.spec.rng import LaneRng
    init = LaneRng.seeded(preset("w8-vc").rng, 0, 8, 1)
    assert int(seeds["addresses"][3]["reset_s1"], 16) == int(init.s1[3, 0])
    hr = raw["host_ranges"]
    assert abs(hr["lr"]["max"] - 0.0039) < 1e-5 and abs(hr["noise_variance"]["max"] - 0.0195) < 1e-4


def test_manifest_host_ranges_are_the_hosts_limits():
    from emulator.spec.host import HyperParams, step_registers
    cfg = preset("w8-vc")
    hr = json.loads((RTL / "lpsgld_w8_vc_l1.json").read_text())["host_ranges"]
    step_registers(cfg, HyperParams(hr["lr"]["max"] * 0.9999, 1.0, 1, 0.0))
    with pytest.raises(ValueError, match="does not fit"):
        step_registers(cfg, HyperParams(hr["lr"]["max"], 1.0, 1, 0.0))
    v = hr["noise_variance"]["max"]  # v = 2 lr T / N with lr = 1e-3, N = 1
    step_registers(cfg, HyperParams(1e-3, v / 2e-3 * 0.9999, 1, 0.0))
    with pytest.raises(ValueError, match="does not fit"):
        step_registers(cfg, HyperParams(1e-3, v / 2e-3 * 1.0001, 1, 0.0))


def test_manifest_errors(tmp_path):
    raw = json.loads((RTL / "lpsgld_w4_vc_l1.json").read_text())
    with pytest.raises(ValueError, match="version 9 is not supported"):
        parse_manifest({**raw, "version": 9})
    with pytest.raises(ValueError, match="lanes 2 != config lanes 1"):
        parse_manifest({**raw, "lanes": 2})
    bad_ports = [dict(p, width=3) if p["name"] == "sink__payload" else p for p in raw["ports"]]
    with pytest.raises(ValueError, match="sink__payload width 3"):
        parse_manifest({**raw, "ports": bad_ports})
    with pytest.raises(ValueError, match="differ from the contract"):
        parse_manifest({**raw, "registers": {**raw["registers"], "step": {"addr": 7, "width": 4}}})
    seeds = raw["seed_registers"]
    moved = [{"s0_addr": a["s0_addr"] + 0x100, "s1_addr": a["s1_addr"] + 0x100} for a in seeds["addresses"]]
    with pytest.raises(ValueError, match=r"^manifest seed_registers.base 0x200 is not the contract's 0x100$"):
        parse_manifest({**raw, "seed_registers": {**seeds, "base": 0x200, "addresses": moved}})
    with pytest.raises(ValueError, match=r"^manifest seed_registers.addresses has no 's0_addr'$"):
        parse_manifest({**raw, "seed_registers": {**seeds, "addresses": [{"s1_addr": 0x101}]}})
    with pytest.raises(ValueError, match="does not exist"):
        load_manifest(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON"):
        load_manifest(tmp_path / "x.json")


def test_example_manifest_is_fresh(tmp_path):
    pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")
    from hw.flows.export import export
    export(preset("w4-sgd-l", 1), tmp_path)
    name = "lpsgld_w4_sgd_l_l1.json"
    assert (tmp_path / name).read_text() == (EXAMPLE / name).read_text(), \
        "lpsgld rtl --config w4-sgd-l --lanes 1 -o DIR, then copy the .json to examples/handwritten/"


# ---- lpsgld verify -------------------------------------------------------------------------


def _need(sim):
    reason = missing_tool(sim)
    if reason:
        pytest.skip(reason)


SIMS = ("icarus", "verilator")


@pytest.mark.parametrize("sim", SIMS)
def test_verify_shipped_and_handwritten(sim, tmp_path, capsys):
    _need(sim)
    build = ["--build", str(tmp_path)]
    assert main(["verify", str(RTL / "lpsgld_w4_vc_l4.v"), "--manifest", str(RTL / "lpsgld_w4_vc_l4.json"),
                 "--sim", sim, "--elements", "400", *build]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS lpsgld_w4_vc_l4 on " + sim)
    assert main(["verify", str(EXAMPLE / "sgd_w4_l1.v"), "--top", "sgd_w4_l1", "--manifest",
                 str(EXAMPLE / "lpsgld_w4_sgd_l_l1.json"), "--sim", sim, "--elements", "600", *build]) == 0
    assert capsys.readouterr().out.startswith("PASS sgd_w4_l1")


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("mutant", ["M38", "M39"])
def test_verify_fails_corner_case_mutants(sim, mutant, tmp_path, capsys):
    """The two corner cases, on both simulators: the shipped rule passes (above), its violation fails."""
    _need(sim)
    pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")
    from hw.verify.mutate import MUTANTS, apply
    from hw.verify.runner import export_design
    m = next(m for m in MUTANTS if m.id == mutant)
    src, _ = export_design(m.design, tmp_path)
    src.write_text(apply(m, src.read_text(), m.design.module_name))
    man = tmp_path / f"{m.design.module_name}.json"
    assert main(["verify", str(src), "--manifest", str(man), "--sim", sim, "--build", str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL {m.design.module_name} on {sim}")
    assert "case: {" in out and ("wrong words" in out or "sink__ready=1 while rst=1" in out)
    if mutant == "M38":
        assert "sink__ready=1 while rst=1" in out


def test_verify_cli_errors(tmp_path, capsys):
    man = str(RTL / "lpsgld_w4_vc_l1.json")
    assert main(["verify", str(tmp_path / "none.v"), "--manifest", man]) == 2
    assert "source file" in capsys.readouterr().err
    assert main(["verify", str(RTL / "lpsgld_w4_vc_l1.v"), "--manifest", man, "--elements", "0"]) == 2
    assert "elements must be in [1, 2**64), got 0" in capsys.readouterr().err
    assert main(["verify", str(RTL / "lpsgld_w4_vc_l1.v"), "--manifest", man, "--top", "a-b"]) == 2
    assert "top must be a Verilog identifier, got 'a-b'" in capsys.readouterr().err


def test_export_without_init_values_behaves_identically(tmp_path, capsys):
    _need("icarus")
    pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")
    assert main(["rtl", "--config", "w4-naive", "--lanes", "2", "--no-init-values", "-o", str(tmp_path)]) == 0
    src = tmp_path / "lpsgld_w4_naive_l2.v"
    text = src.read_text()
    import re
    inits = re.findall(r"^\s*reg .* = .*;$", text, re.M)
    assert inits and all("$auto$verilog_backend" in line for line in inits), inits[:3]  # only the back-end's
    assert json.loads((tmp_path / "lpsgld_w4_naive_l2.json").read_text())["init_values"] is False
    capsys.readouterr()
    assert main(["verify", str(src), "--manifest", str(tmp_path / "lpsgld_w4_naive_l2.json"), "--elements", "300",
                 "--build", str(tmp_path / "b")]) == 0


@pytest.mark.parametrize("name", ["lpsgld_w8_vc_l1", "lpsgld_w8_naive_l8", "lpsgld_w4_lpf_l4"])
def test_shipped_vlt_lints_clean_without_flags(name, tmp_path, verilator):
    """`verilator --lint-only -Wall <design>.v <design>.vlt` exits 0, from another directory too."""
    exe, venv_bin = verilator
    env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    for cwd in (RTL, tmp_path):
        r = subprocess.run([exe, "--lint-only", "-Wall", str(RTL / f"{name}.v"), str(RTL / f"{name}.vlt")],
                           capture_output=True, text=True, env=env, timeout=300, cwd=cwd)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "%Warning" not in r.stderr, r.stderr[-3000:]
    r = subprocess.run([exe, "--lint-only", "-Wall", str(EXAMPLE / "sgd_w4_l1.v")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_verify_is_what_cosim_uses():
    """The project's co-verification runs hw.verify's cocotb module (no testbench of its own in tests/)."""
    from hw.verify import runner
    assert runner.TEST_MODULE == "hw.verify.cocotb_top"
    assert not (ROOT / "tests" / "cosim").exists()
