"""The Gaussian toy study and the lpsgld command line."""

import json

import pytest

from emulator.cli import main
from emulator.studies.toy import ToySettings, check_expectations, run_chain_set, toy_config


def test_toy_separates_naive_from_vc():
    s = ToySettings(alphas=(2e-3,), chains=1024, burn=2.5, collect=2.0, min_collect_steps=0, seed=3)
    vc = run_chain_set("vc", 2e-3, s, 0, 3)
    naive = run_chain_set("naive", 2e-3, s, 0, 2)
    assert abs(vc["std"] - 1) < 0.05
    assert naive["std"] > 1.2  # paper / float emulation: about 1.28
    assert vc["samples"] == 1024 * (vc["steps"] - vc["burn_in"])
    assert sum(vc["hist"]) == vc["samples"]


def test_toy_config_formats_follow_the_step_sizes():
    s = ToySettings(alphas=(2e-3, 1e-4))
    cfg = toy_config("lp_f", s)
    assert str(cfg.weight) == "Q(8,3)" and str(cfg.acc) == "Q(24,16)"
    assert cfg.step.max_value >= 2e-3 > cfg.step.max_value / 2
    with pytest.raises(ValueError, match="unknown toy variant"):
        ToySettings(variants=("adam",))
    with pytest.raises(ValueError, match=r"step sizes must be in \(0, 1\)"):
        ToySettings(alphas=(0.0,))


def test_check_expectations_flags_failures():
    rows = [
        {"alpha": 1e-3, "variant": "vc", "std": 1.1},
        {"alpha": 1e-3, "variant": "naive", "std": 1.5},
        {"alpha": 1e-4, "variant": "naive", "std": 1.4},
    ]
    problems = check_expectations({"results": rows})
    assert any("vc at 0.001" in p for p in problems)
    assert any("does not grow" in p for p in problems)
    ok = [{"alpha": 0.5, "variant": "vc", "std": 1.156}]  # SGLD itself: 1/sqrt(1 - 0.25) = 1.1547
    assert check_expectations({"results": ok}) == []


def test_cli_gaussian_json(tmp_path, capsys):
    rc = main(["gaussian", "--alpha", "2e-3", "--chains", "256", "--burn", "1", "--collect", "0.5",
               "--min-collect", "0", "--jobs", "1", "--quiet", "--json", "--out", str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in out["results"]] == ["fp", "lp_f", "naive", "vc"]
    assert set(out["results"][0]) == {"alpha", "variant", "mean", "std", "samples"}
    assert all(r["alpha"] == 2e-3 and r["samples"] > 0 for r in out["results"])
    assert (tmp_path / "gaussian_toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    full = json.loads((tmp_path / "gaussian_toy.json").read_text())
    assert full["settings"]["chains"] == 256


def test_cli_spec_and_errors(capsys):
    assert main(["spec", "--config", "w8-vc"]) == 0
    out = capsys.readouterr().out
    assert "vc: word 0 bits [0, 17)" in out and "tail_reach_sigma" in out
    assert main(["spec", "--config", "w9-vc"]) == 2
    assert "unknown configuration 'w9-vc'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # rejected at parse time, before any run
        main(["gaussian", "--width", "100"])
    assert e.value.code == 2
    assert "argument --width: expected an integer in [2, 16], got '100'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["gaussian", "--jobs", "0"])
    assert "argument --jobs: expected an integer in [1, 1024], got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["gaussian", "--gaussian", "table:4by8"])


def test_cli_stationary_json(capsys):
    assert main(["stationary", "--alpha", "1e-3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["variant"] for r in rows] == ["naive", "vc"]
    assert rows[0]["std"] > 1.4 and abs(rows[1]["std"] - 1) < 1e-3


def test_bench_runs_and_reports_ratios(capsys):
    from emulator.studies.bench import VARIANTS, run_bench

    rows = run_bench(5000, [1, 3], 1, VARIANTS)
    assert [(r["variant"], r["lanes"]) for r in rows] == [(v, n) for v in VARIANTS for n in (1, 3)]
    assert all(r["seconds"] > 0 and r["ratio"] > 0 for r in rows)
    assert "x float32" in capsys.readouterr().out


def test_float_reference_checks_inputs():
    import numpy as np

    from emulator.analysis.reference import sgld_step

    rng = np.random.default_rng(0)
    out = sgld_step(np.zeros(3), np.ones(3), 0.1, 0.0, rng, weight_decay=0.5)
    assert np.array_equal(out, np.full(3, -0.1))
    with pytest.raises(ValueError, match="gradient contains NaN or Inf"):
        sgld_step(np.zeros(2), np.array([0.0, np.inf]), 0.1, 0.1, rng)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        sgld_step(np.zeros(2), np.zeros(2), 0.1, 0.1, None)
