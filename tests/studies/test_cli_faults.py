"""The CLI under bad input and failing writes (issue 13, items 6, 8, 9): every option checked at parse
time with a message naming it and its range, no traceback, no NaN/Infinity in JSON, results printed
before any write that can fail, output paths checked before the work; the toy's two commands run
the same chain for a step size whatever else is in the run."""

from __future__ import annotations

import errno
import json
import math

import numpy as np
import pytest

from emulator.cli import STUDY_FORMATS, STUDY_METHODS, STUDY_MODELS, _print_json, main
from emulator.studies.toy import ToySettings, run_chain_set, toy_config, toy_stationary


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's exit at parse time
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


BAD: list[tuple[str, list[str], str]] = [
    # (command, bad options, what the message must say)
    ("gaussian", ["--alpha", "0"], "argument --alpha: expected a finite number in [1e-06, 1), got '0'"),
    ("gaussian", ["--alpha", "1"], "argument --alpha: expected a finite number in [1e-06, 1), got '1'"),
    ("gaussian", ["--alpha", "nan"], "argument --alpha: expected a finite number"),
    ("gaussian", ["--alpha", "1e-12"], "argument --alpha: expected a finite number in [1e-06, 1), got '1e-12'"),
    ("gaussian", ["--alpha", "x"], "argument --alpha"),
    ("gaussian", ["--width", "1"], "argument --width: expected an integer in [2, 16], got '1'"),
    ("gaussian", ["--width", "17"], "argument --width"),
    ("gaussian", ["--frac", "99"], "argument --frac: expected an integer in [-16, 32], got '99'"),
    ("gaussian", ["--sr-bits", "0"], "argument --sr-bits: expected an integer in [1, 62], got '0'"),
    ("gaussian", ["--gaussian", "table:4by8"], "argument --gaussian: bad Gaussian spec"),
    ("gaussian", ["--chains", "0"], "argument --chains: expected an integer in [1, 16_777_216], got '0'"),
    ("gaussian", ["--burn", "inf"], "argument --burn: expected a finite number in [0, 1000], got 'inf'"),
    ("gaussian", ["--burn", "-1"], "argument --burn"),
    ("gaussian", ["--collect", "0"], "argument --collect: expected a finite number in (0, 1000], got '0'"),
    ("gaussian", ["--min-collect", "-1"], "argument --min-collect"),
    ("gaussian", ["--seed", "-1"], "argument --seed"),
    ("gaussian", ["--jobs", "0"], "argument --jobs: expected an integer in [1, 1024], got '0'"),
    ("gaussian", ["--jobs", "100000"], "argument --jobs: expected an integer in [1, 1024], got '100000'"),
    ("gaussian", ["--variants", "adam"], "argument --variants: invalid choice: 'adam'"),
    ("gaussian", ["--width", "2", "--frac", "-16", "--alpha", "0.5"], "--alpha 0.5 with --width 2 --frac -16"),
    ("stationary", ["--alpha", "-1"], "argument --alpha"),
    ("stationary", ["--width", "16"], "argument --width: expected an integer in [2, 12], got '16'"),
    ("stationary", ["--frac", "x"], "argument --frac: expected an integer in [-16, 32], got 'x'"),
    ("stationary", ["--sr-bits", "63"], "argument --sr-bits"),
    ("stationary", ["--variants", "fp"], "argument --variants: invalid choice: 'fp'"),
    ("design-space", ["--alpha", "2"], "argument --alpha"),
    ("design-space", ["--sr-bits", "0"], "argument --sr-bits: expected an integer in [1, 62] or 'full', got '0'"),
    ("design-space", ["--gaussians", "box4x8"], "argument --gaussians: expected KINDTERMSxBITS"),
    ("design-space", ["--widths", "13"], "argument --widths: expected an integer in [6, 12], got '13'"),
    ("design-space", ["--toy-width", "3"], "argument --toy-width"),
    ("design-space", ["--bnn-n-train", "0"], "argument --bnn-n-train: expected an integer in [1, 10_000_000]"),
    ("design-space", ["--bnn-n-test", "-5"], "argument --bnn-n-test"),
    ("design-space", ["--bnn-lr", "nan"], "argument --bnn-lr: expected a finite number in (0, 10], got 'nan'"),
    ("design-space", ["--bnn-lr", "-1"], "argument --bnn-lr"),
    ("design-space", ["--bnn-widths", "3"], "argument --bnn-widths: expected an integer in [4, 16], got '3'"),
    ("design-space", ["--bnn-temperature", "0"], "argument --bnn-temperature"),
    ("design-space", ["--bnn-seeds", "0"], "argument --bnn-seeds"),
    ("design-space", ["--bnn-epochs", "0"], "argument --bnn-epochs"),
    ("design-space", ["--bnn-burnin", "-1"], "argument --bnn-burnin"),
    ("design-space", ["--bnn-lanes", "0"], "argument --bnn-lanes"),
    ("design-space", ["--threads", "0"], "argument --threads"),
    ("design-space", ["--bnn-dataset", "cifar"], "argument --bnn-dataset: invalid choice"),
    ("design-space", ["--bnn-methods", "sgld"], "argument --bnn-methods: invalid choice"),
    # after parsing, before any work
    ("design-space", ["--bnn-n-train", "100000"], "bnn_n_train must be in [1, 1297] for digits, got 100000"),
    ("bench", ["--elements", "1e12"], "argument --elements: expected an integer in [1, 100_000_000], got '1e12'"),
    ("bench", ["--elements", "1000000000000"], "argument --elements"),
    ("bench", ["--elements", "0"], "argument --elements"),
    ("bench", ["--lanes", "0"], "argument --lanes"),
    ("bench", ["--repeat", "0"], "argument --repeat: expected an integer in [1, 1000], got '0'"),
    ("bench", ["--variants", "x"], "argument --variants: invalid choice"),
    ("bench-torch", ["--device", "tpu"], "argument --device: expected cpu, cuda or cuda:N, got 'tpu'"),
    ("bench-torch", ["--threads", "-3"], "argument --threads: expected an integer in [0, 1024], got '-3'"),
    ("bench-torch", ["--repeat", "0"], "argument --repeat"),
    ("bench-torch", ["--lanes", "0"], "argument --lanes"),
    ("train", ["--device", "meta"], "argument --device: expected cpu, cuda or cuda:N, got 'meta'"),
    ("train", ["--device", "mps"], "argument --device"),
    ("train", ["--device", "xla"], "argument --device"),
    ("train", ["--lrs", "nan"], "argument --lrs: bad list 'nan': expected a finite number in (0, 10]"),
    ("train", ["--lrs", "-1"], "argument --lrs"),
    ("train", ["--seeds", "-1"], "argument --seeds"),
    ("train", ["--epochs", "0"], "argument --epochs: expected an integer in [1, 100_000], got '0'"),
    ("train", ["--burnin", "-1"], "argument --burnin"),
    ("train", ["--samples-per-epoch", "0"], "argument --samples-per-epoch"),
    ("train", ["--batch-size", "0"], "argument --batch-size"),
    ("train", ["--temperature", "inf"], "argument --temperature: expected a finite number in [0, 1e+06]"),
    ("train", ["--weight-decay", "-1"], "argument --weight-decay"),
    ("train", ["--n-train", "0"], "argument --n-train"),
    ("train", ["--n-test", "0"], "argument --n-test"),
    ("train", ["--lanes", "0"], "argument --lanes"),
    ("train", ["--width", "1"], "argument --width"),
    ("train", ["--frac", "99"], "argument --frac"),
    ("train", ["--sr-bits", "0"], "argument --sr-bits"),
    ("train", ["--grad-sr-bits", "0"], "argument --grad-sr-bits: expected an integer in [1, 32], got '0'"),
    ("train", ["--gaussian", "box"], "argument --gaussian: invalid choice"),
    ("train", ["--pad-to", "0"], "argument --pad-to"),
    ("train", ["--jobs", "0"], "argument --jobs"),
    ("train", ["--preset", "x"], "argument --preset: invalid choice"),
    ("train", ["--dataset", "x"], "argument --dataset: invalid choice"),
    ("train", ["--models", "vit"], "argument --models: bad list 'vit': expected one of logreg, mlp, cnn, resnet18"),
    ("train", ["--formats", "float8"], "argument --formats"),
    ("train", ["--methods", "adam"], "argument --methods"),
    ("train", ["--epochs", "2", "--burnin", "2"], "burnin (2) must be smaller than epochs (2)"),
    ("synth", ["--lanes", "0"], "argument --lanes: expected an integer in [1, 64], got '0'"),
    ("synth", ["--lanes", "65"], "argument --lanes"),
    ("synth", ["--freq", "nan"], "argument --freq: expected a finite number in (0, 2000], got 'nan'"),
    ("synth", ["--freq", "0"], "argument --freq"),
    ("synth", ["--seeds", "-1"], "argument --seeds"),
    ("synth", ["--pnr-timeout", "inf"], "argument --pnr-timeout"),
    ("synth", ["--device", "x"], "argument --device: invalid choice"),
    ("synth", ["--router", "x"], "argument --router: invalid choice"),
    ("synth", ["--config", "w9-vc"], "argument --config: invalid choice"),
]


@pytest.mark.parametrize(("command", "argv", "message"), BAD, ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD])
def test_bad_options_are_refused_with_their_range(tmp_path, capsys, command: str, argv: list[str],
                                                   message: str) -> None:
    code, _, err = run_cli([command, *argv, *(["--out", str(tmp_path / "o")] if command in (
        "gaussian", "design-space", "train") else [])], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()  # nothing written before the check


def test_bench_torch_cuda_without_cuda_is_refused_before_work(capsys) -> None:
    torch = pytest.importorskip("torch", reason="needs torch (bash scripts/setup.sh torch)")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the refusal is for machines without it")
    code, _, err = run_cli(["bench-torch", "--device", "cuda"], capsys)
    assert code == 2 and "--device cuda: CUDA is not available here" in err


def test_the_cli_knows_the_studies_names_without_torch() -> None:
    from emulator.studies.models import MODELS
    from emulator.studies.training import FORMATS, METHODS

    assert STUDY_MODELS == tuple(MODELS) and STUDY_FORMATS == FORMATS and STUDY_METHODS == tuple(METHODS)


def _no_constants(text: str) -> object:
    def bad(name: str) -> None:
        raise ValueError(f"{name} printed as JSON")
    return json.loads(text, parse_constant=bad)


def test_json_never_holds_nan_or_infinity(capsys) -> None:
    _print_json({"nll": math.inf, "rows": [math.nan, 1.5, -math.inf]})
    assert _no_constants(capsys.readouterr().out) == {"nll": None, "rows": [None, 1.5, None]}


def test_gaussian_checks_its_outputs_before_sampling(tmp_path, capsys, monkeypatch) -> None:
    import emulator.studies.toy as toy

    def never(*a: object, **k: object) -> None:
        raise AssertionError("sampled before the output paths were checked")

    monkeypatch.setattr(toy, "run_toy", never)
    (tmp_path / "gaussian_toy.json").mkdir()
    code, _, err = run_cli(["gaussian", "--out", str(tmp_path)], capsys)
    assert code == 2 and "gaussian_toy.json' is a directory" in err
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(["gaussian", "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "exists and is not a directory" in err


TINY_TOY = ["--alpha", "0.25", "--chains", "8", "--burn", "0", "--collect", "0.5", "--min-collect", "4", "--jobs",
            "1", "--quiet"]


def test_gaussian_prints_its_results_before_a_failing_write(tmp_path, capsys, monkeypatch) -> None:
    import emulator.studies.toy as toy

    def full(report: object, path: str) -> None:
        raise OSError(errno.ENOSPC, f"cannot write {path}: no space left on the device")

    monkeypatch.setattr(toy, "plot", full)
    code, out, err = run_cli(["gaussian", *TINY_TOY, "--out", str(tmp_path)], capsys)
    assert code == 2 and "no space left on the device" in err and "Traceback" not in err
    assert "VC SGLDLP-L" in out and "0.25 |" in out  # the table came out first
    code, out, _ = run_cli(["gaussian", *TINY_TOY, "--json", "--out", str(tmp_path)], capsys)
    assert code == 2 and [r["alpha"] for r in _no_constants(out)["results"]] == [0.25] * 4  # type: ignore[index]


def test_design_space_checks_the_bnn_options_before_the_toy(tmp_path, capsys, monkeypatch) -> None:
    import emulator.studies.design_space as ds

    def never(*a: object, **k: object) -> None:
        raise AssertionError("the toy axes ran before the BNN options were checked")

    monkeypatch.setattr(ds, "run_toy_axes", never)
    code, _, err = run_cli(["design-space", "--bnn-n-train", "5000", "--out", str(tmp_path)], capsys)
    assert code == 2 and "bnn_n_train must be in [1, 1297]" in err


def test_synth_checks_its_json_path_before_synthesis(tmp_path, capsys, monkeypatch) -> None:
    flows = pytest.importorskip("hw.flows.synth", reason="needs the hw extra (bash scripts/setup.sh hw)")

    def never(*a: object, **k: object) -> None:
        raise AssertionError("synthesized before the --json path was checked")

    monkeypatch.setattr(flows, "run_cli", never)
    for bad, msg in ((tmp_path, "is a directory, expected a file name"),
                     (tmp_path / "missing" / "r.json", "does not exist")):
        code, _, err = run_cli(["synth", "--json", str(bad)], capsys)
        assert code == 2 and msg in err


def test_synth_prints_the_table_before_writing_the_json(tmp_path, capsys, monkeypatch) -> None:
    flows = pytest.importorskip("hw.flows.synth", reason="needs the hw extra (bash scripts/setup.sh hw)")

    def fake(configs: object, *, json_out: str, on_table: object, **k: object) -> str:
        on_table("TABLE")  # type: ignore[operator]
        raise OSError(errno.ENOSPC, f"cannot write {json_out}: no space left on the device")

    monkeypatch.setattr(flows, "run_cli", fake)
    code, out, err = run_cli(["synth", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 2 and out.startswith("TABLE") and "no space left" in err


def test_train_checks_its_output_directory_before_training(tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("")
    code, _, err = run_cli(["train", "--out", str(tmp_path / "f"), "--epochs", "2", "--burnin", "1"], capsys)
    assert code == 2 and f"cannot create the directory {tmp_path / 'f'}" in err and "Traceback" not in err


def test_gaussian_and_stationary_run_the_same_chain_for_a_step_size() -> None:
    many = ToySettings(alphas=(2e-3, 1e-3, 1e-4), chains=16, burn=0, collect=1e-3, min_collect_steps=50)
    alone = ToySettings(alphas=(1e-4,), chains=16, burn=0, collect=1e-3, min_collect_steps=50)
    for v in ("naive", "vc", "lp_f"):
        assert toy_config(v, many, 1e-4) == toy_config(v, alone, 1e-4) == toy_config(v, alone)
    for v in ("naive", "vc"):  # stationary solves the chain gaussian samples
        assert toy_stationary(v, 1e-4, many)["std"] == toy_stationary(v, 1e-4, alone)["std"]
    a = run_chain_set("vc", 1e-4, many, 2, 3)
    b = run_chain_set("vc", 1e-4, alone, 0, 3)
    assert a["hist"] == b["hist"] and a["mean"] == b["mean"]  # the same chains, bit for bit
    assert np.isfinite(a["std"])


def test_design_space_prints_its_report_before_a_failing_write(tmp_path, capsys, monkeypatch) -> None:
    import emulator.studies.design_space as ds

    def full(report: object, out: object) -> None:
        raise OSError(errno.ENOSPC, f"cannot write {out}: no space left on the device")

    monkeypatch.setattr(ds, "write_outputs", full)
    argv = ["design-space", "--no-bnn", "--alpha", "1e-3", "--variants", "vc", "--sr-bits", "full", "--gaussians",
            "table4x8", "--widths", "6", "--toy-width", "6", "--quiet", "--out", str(tmp_path)]
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 2 and "no space left" in err and _no_constants(out)["toy"]  # type: ignore[index]


def test_a_closed_stdout_pipe_ends_the_cli_quietly() -> None:
    """`lpsgld spec | head -c 1`: the reader is gone before anything is written; exit 141, no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    r, w = os.pipe()
    os.close(r)  # no reader: every write to w fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "emulator.cli", "spec"], stdout=w, stderr=subprocess.PIPE,
                           text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (141, "")
