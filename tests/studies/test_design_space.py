"""The design-space study: exact toy numbers, Gaussian moments, random-bit accounting, CLI."""

import itertools
import json
import math
from fractions import Fraction

import pytest

from emulator.analysis.exact import sr_distribution
from emulator.cli import main
from emulator.spec.gaussian import GaussianSpec
from emulator.studies.design_space import (
    DesignSpaceSettings,
    gaussian_exact,
    parse_gaussian,
    parse_sr_bits,
    predicted_sr_bits,
    sr_bias_mean,
    sr_bias_worst,
    toy_point,
)
from emulator.studies.toy import ToySettings, toy_stationary


def _enumerated_biases(s: int, k: int) -> list[Fraction]:
    """E[SR(x)] - x / 2^s for every residue x of the s dropped bits (an offset word keeps x positive)."""
    out = []
    for x in range(5 << s, 6 << s):
        mean = sum((w * p for w, p in sr_distribution(x, s, k).items()), Fraction(0))
        out.append(mean - Fraction(x, 1 << s))
    return out


def test_sr_bias_matches_enumeration_and_never_grows_with_more_bits():
    s = 6
    worst_prev = None
    for k in range(1, s + 1):
        biases = _enumerated_biases(s, k)
        assert min(biases) == sr_bias_worst(s, k)  # truncation: the bias is never positive
        assert max(biases) == 0
        assert sum(biases) / len(biases) == sr_bias_mean(s, k)
        worst = abs(sr_bias_worst(s, k))
        assert worst < Fraction(1, 1 << k)  # just under 2^-k LSB
        if worst_prev is not None:
            assert worst < worst_prev
        worst_prev = worst
    assert sr_bias_worst(s, s) == 0 and sr_bias_worst(s, 99) == 0 and sr_bias_mean(s, s) == 0


@pytest.mark.parametrize("name", ["table4x8", "table1x8", "table2x8", "clt4x8"])
def test_gaussian_exact_moments_match_the_spec(name):
    g = parse_gaussian(name)
    ex = gaussian_exact(g)
    m = g.moments()  # per-term cumulants: an independent route to the same numbers
    assert ex["variance_z"] == m["variance"]
    assert ex["excess_kurtosis_exact"] == m["kurtosis"] - 3
    assert ex["mean_z"] == 0.0
    assert ex["variance"] == float(g.variance)
    assert ex["random_bits"] == g.bits


def test_gaussian_exact_tails():
    # One 8-bit table stops short of 3 sigma; four of them reach 5.8 sigma with 95% of the 3-sigma mass.
    one, four = gaussian_exact(parse_gaussian("table1x8")), gaussian_exact(parse_gaussian("table4x8"))
    assert one["tail_reach_sigma"] < 3 and one["p_gt_3sigma"] == 0.0
    assert four["tail_reach_sigma"] > 5.5 and 0.9 < four["p_gt_3sigma_ratio"] < 1.0
    # A single uniform over n = 256 odd integers: excess kurtosis -6(n^2 + 1) / (5(n^2 - 1)), exactly.
    n = 256
    assert gaussian_exact(parse_gaussian("clt1x8"))["excess_kurtosis_exact"] == Fraction(-6 * (n * n + 1),
                                                                                          5 * (n * n - 1))


def test_toy_point_is_the_markov_solution():
    for variant, alpha in (("naive", 2e-3), ("vc", 1e-4)):
        r = toy_point(variant, alpha, 6, 1, None, GaussianSpec())
        ref = toy_stationary(variant, alpha, ToySettings(width=6, frac=1))
        assert r["status"] == "ok" and r["limit"] == "stationary"
        assert r["std"] == ref["std"] and r["mean"] == ref["mean"]
        assert r["std_error"] == abs(ref["std"] - 1)
    assert toy_point("naive", 2e-3, 6, 1, None, GaussianSpec())["std"] > 2.5  # LSB 1/2: naive inflates a lot


@pytest.mark.parametrize("variant, alpha", [("naive", 2e-3), ("vc", 2e-3), ("vc", 1e-4)])
def test_toy_mean_drift_shrinks_with_more_sr_bits(variant, alpha):
    rows = [toy_point(variant, alpha, 6, 1, k, GaussianSpec()) for k in (1, 2, 4, 8, None)]
    drifts = [abs(r["mean"]) for r in rows]
    assert all(a >= b for a, b in itertools.pairwise(drifts))
    assert drifts[0] > 5 and drifts[-1] < 1e-6  # 1 bit: the truncation bias drags the chain to the rail
    bits = [r["bits_read"] for r in rows]
    assert bits == sorted(bits) and len(set(bits)) == len(bits)


def test_predicted_sr_bits_bound_the_exact_mean_shift():
    # Q(6,1), step 2e-3: a bias of 2^-(k+1) LSB per step shifts the mean by 250 * 2^-(k+1).
    k = predicted_sr_bits(0.5, 2e-3, 0.01)
    assert k == 14
    enough = toy_point("naive", 2e-3, 6, 1, k, GaussianSpec())
    short = toy_point("naive", 2e-3, 6, 1, k - 2, GaussianSpec())
    assert abs(enough["mean"]) <= 0.01 < abs(short["mean"])
    assert predicted_sr_bits(1 / 8, 1e-3, 0.01) == 13


def test_bits_per_update_and_vc_branches():
    g = GaussianSpec()
    a = toy_point("vc", 2e-3, 8, 3, 4, g)  # v = 4e-3 > LSB^2/4 = 1/256: branch A, Gaussian, no SR
    assert a["branch"] == "A" and not a["reads_sr"] and a["reads_gauss"]
    assert a["bits_read"] == 17 + 32 and a["bits_wired"] == 17 + 32
    b = toy_point("vc", 1e-3, 8, 3, None, g)  # branch B: SR with every dropped bit, no Gaussian
    assert b["branch"] == "B" and b["reads_sr"] and not b["reads_gauss"]
    assert b["bits_read"] == 17 + b["sr_k"] == 17 + b["drop_bits"]
    assert b["bits_wired"] == 17 + max(b["sr_k"], 32)  # the slot shared by SR and the Gaussian
    n = toy_point("naive", 1e-3, 8, 3, 8, g)
    assert n["bits_read"] == n["bits_wired"] == 8 + 32 and n["sr_bias_worst"] < 0
    sgd = toy_point("sgd_l", 2e-3, 6, 1, 1, g)  # noise-free 1-bit SR only rounds down: no unique stationary law
    assert sgd["bits_read"] == 1 and sgd["limit"].startswith("after 2^") and sgd["mean"] < 0


def test_invalid_combination_is_reported_not_raised():
    r = toy_point("naive", 1e-3, 8, 3, None, parse_gaussian("clt12x4"))  # 25 SR + 48 Gaussian bits > 64
    assert r["status"] == "invalid"
    assert "generator words" in r["reason"]


def test_bad_options_raise_naming_the_value():
    with pytest.raises(ValueError, match="gauss4x8"):
        parse_gaussian("gauss4x8")
    with pytest.raises(ValueError, match="table:4x99"):
        parse_gaussian("table:4x99")
    with pytest.raises(ValueError, match="'0'"):
        parse_sr_bits("0")
    assert parse_sr_bits("full") is None and parse_sr_bits("12") == 12
    with pytest.raises(ValueError, match="0"):
        DesignSpaceSettings(sr_bits=(0,))
    with pytest.raises(ValueError, match="14"):
        DesignSpaceSettings(widths=(14,))
    with pytest.raises(ValueError, match="sgld"):
        DesignSpaceSettings(bnn_methods=("sgld",))
    with pytest.raises(ValueError, match="table1x16"):
        DesignSpaceSettings(bnn_gaussians=("table1x16",))
    with pytest.raises(ValueError, match="duplicates"):
        DesignSpaceSettings(alphas=(1e-3, 1e-3))
    with pytest.raises(ValueError, match="adam"):
        DesignSpaceSettings(toy_variants=("adam",))


def test_cli_design_space_writes_json_markdown_and_png(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["design-space", "--alpha", "1e-3", "--variants", "naive", "vc", "--sr-bits", "1", "full",
               "--gaussians", "table4x8", "clt12x4", "--widths", "6", "--toy-width", "6", "--bnn-methods", "vc",
               "--bnn-gaussians", "table4x8", "--bnn-widths", "6", "--bnn-temperature", "1e-3",
               "--bnn-seeds", "1", "--bnn-epochs", "2", "--bnn-burnin", "1", "--bnn-n-train", "200",
               "--bnn-n-test", "100", "--bnn-lanes", "64", "--quiet", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| SR bits | variant |" in text and "invalid" in text and "How many SR bits are enough" in text
    rep = json.loads((out / "design_space.json").read_text())
    toy = {(r["axis"], r["value"], r["variant"]): r for r in rep["toy"]}
    assert toy[("sr_bits", "full", "vc")]["std"] == toy_stationary("vc", 1e-3, ToySettings(width=6, frac=1))["std"]
    assert toy[("sr_bits", "full", "vc")]["frac"] == 1
    assert toy[("gaussian", "clt12x4", "naive")]["status"] == "invalid"
    assert {r["axis"] for r in rep["bnn"]} == {"sr_bits", "gaussian", "width"}
    assert all(math.isfinite(r["nll"]) and r["seeds"] == 1 for r in rep["bnn"])
    assert "## BNN" in (out / "design_space.md").read_text()
    for png in ("design_space_sr_bits.png", "design_space_word_length.png", "design_space_gaussian.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_design_space_bad_options(tmp_path, capsys):
    for argv, msg in ((["--sr-bits", "0"], "argument --sr-bits: expected an integer in [1, 62] or 'full', got '0'"),
                      (["--gaussians", "box4x8"], "argument --gaussians: expected KINDTERMSxBITS")):
        with pytest.raises(SystemExit) as e:  # at parse time, before any work
            main(["design-space", *argv, "--no-bnn", "--out", str(tmp_path)])
        assert e.value.code == 2 and msg in capsys.readouterr().err
