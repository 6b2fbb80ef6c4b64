"""One training run: configurations, determinism, bit-identical resume, the study runner and CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from emulator.spec.bfp import BfpConfig
from emulator.spec.datapath import DatapathConfig, Variant
from emulator.spec.host import HyperParams, step_registers
from emulator.studies.data import load_digits
from emulator.studies.models import MODELS, build_model
from emulator.studies.store import CorruptFile, load_checkpoint, save_checkpoint
from emulator.studies.study import StudyPlan, format_table, run_study, summarize, write_outputs
from emulator.studies.training import RunSpec, fixed_training_config, train_run, training_config

SMALL = dict(dataset="digits", model="mlp", epochs=3, burnin=1, samples_per_epoch=2, lanes=64)


@pytest.fixture(scope="module")
def digits():
    return load_digits().subset(300, 100)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(("method", "fmt"), [("vc", "fixed"), ("vc", "bfp"), ("sgld", "fixed"),
                                             ("sgdlp-l", "fixed")])
def test_resume_is_bit_identical(digits, tmp_path, method: str, fmt: str) -> None:
    spec = RunSpec(method=method, number_format=fmt, **SMALL)
    whole = train_run(spec, digits)

    def stop_after_two(msg: str) -> None:
        if "epoch 2/3" in msg:
            raise Interrupt(msg)

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train_run(spec, digits, ckpt=ckpt, progress=stop_after_two)
    assert load_checkpoint(ckpt, spec.key)["epoch"] == 2
    lines: list[str] = []
    resumed = train_run(spec, digits, ckpt=ckpt, progress=lines.append)
    assert lines[0].endswith("resumed after epoch 2")
    assert resumed.metrics == whole.metrics and resumed.last == whole.last
    assert resumed.reliability == whole.reliability
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]


def test_runs_are_deterministic_and_seeds_matter(digits) -> None:
    a = train_run(RunSpec(method="naive", **SMALL), digits)
    b = train_run(RunSpec(method="naive", **SMALL), digits)
    c = train_run(RunSpec(method="naive", seed=1, **SMALL), digits)
    assert a.metrics == b.metrics and a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    assert a.history[-1]["train_loss"] != c.history[-1]["train_loss"]
    assert a.metrics["samples"] == 4.0  # 2 epochs after burn-in x 2 samples


def test_checkpoint_of_another_run_is_refused(digits, tmp_path) -> None:
    ckpt = tmp_path / "run.pt"
    spec = RunSpec(method="vc", **SMALL)

    def stop(msg: str) -> None:
        raise Interrupt(msg)

    with pytest.raises(Interrupt):
        train_run(spec, digits, ckpt=ckpt, progress=stop)
    with pytest.raises(CorruptFile, match=f"{ckpt}: checkpoint of run '{spec.key}'"):
        train_run(RunSpec(method="vc", seed=5, **SMALL), digits, ckpt=ckpt)


def test_fixed_config_registers_fit_the_run() -> None:
    for lr in (0.5, 0.05, 0.005):
        for method in ("vc", "naive", "sgldlp-f", "sgdlp-l"):
            spec = RunSpec(method=method, lr=lr)
            cfg = fixed_training_config(spec, 60000)
            assert isinstance(cfg, DatapathConfig) and cfg.weight.width == 8 and cfg.weight.frac == 8
            regs = step_registers(cfg, HyperParams(lr, 1.0, 60000, 5e-4))  # raises on overflow/underflow
            assert regs.step * cfg.step.lsb == pytest.approx(lr, rel=2**-14)
    # a small lr needs more exact-SR bits: the lane takes a second generator word
    assert fixed_training_config(RunSpec(method="naive", lr=0.005), 1297).rng_words == 2
    assert fixed_training_config(RunSpec(method="naive", lr=0.5), 1297).rng_words == 1
    assert training_config(RunSpec(method="sgld"), 10) == "fp"
    b = training_config(RunSpec(method="vc", number_format="bfp", gaussian="clt4x8", sr_bits=4), 60000)
    assert isinstance(b, BfpConfig) and b.variant is Variant.VC and b.sr_bits == 4 and b.gaussian.kind == "clt"


@pytest.mark.parametrize(("kw", "msg"), [
    (dict(method="adam"), "unknown method 'adam'"),
    (dict(number_format="float8"), "unknown number format 'float8'"),
    (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
    (dict(epochs=3, burnin=3), r"burnin \(3\) must be smaller than epochs \(3\)"),
    (dict(gaussian="boxmuller"), "unknown gaussian 'boxmuller'"),
    (dict(batch_size=0), "batch_size must be an int >= 1, got 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0, got nan"),
    (dict(device="gpu"), "device must name a torch device such as 'cpu' or 'cuda', got 'gpu'"),
    (dict(pad_to=0), "pad_to must be None or an int >= 1, got 0"),
])
def test_runspec_rejects(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        RunSpec(**kw)


@pytest.mark.parametrize("name", MODELS)
def test_models_shapes_and_seeded_init(name: str) -> None:
    shape = (1, 32, 32) if name == "resnet18" else (1, 8, 8)
    m1, m2 = build_model(name, shape, 10, 3), build_model(name, shape, 10, 3)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    m1.eval()
    assert m1(torch.zeros(2, *shape)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        build_model("vit", shape, 10, 0)


def test_study_resumes_and_writes_outputs(tmp_path) -> None:
    plan = StudyPlan("t", methods=("sgld", "vc"), formats=("fixed", "bfp"), seeds=(0, 1), epochs=2, burnin=1,
                     n_train=200, n_test=100, lanes=64)
    assert len(plan.runs()) == 6  # float SGLD once per seed, not once per format
    msgs: list[str] = []
    first = run_study(plan, tmp_path, progress=msgs.append)
    assert "6 to start" in msgs[0]
    again = run_study(plan, tmp_path, progress=msgs.append)
    assert "6 done" in msgs[-1] and again == first
    # another plan in the same directory reuses the runs it shares (stored by a hash of their settings)
    sub = run_study(dataclasses.replace(plan, methods=("vc",), formats=("fixed",)), tmp_path, progress=msgs.append)
    assert "held another plan" in msgs[-2] and "2 done" in msgs[-1] and sub == first[2:4]
    rows = summarize(first)
    assert [(r["format"], r["method"], r["seeds"]) for r in rows] == [
        ("float32", "sgld", 2), ("fixed Q(8,8)", "vc", 2), ("bfp 8-bit", "vc", 2)]
    paths = write_outputs(plan, first, tmp_path, "lpsgld train ...")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"] == json.loads(json.dumps(rows)) and len(data["runs"]) == 6
    for key in ("error_vs_lr", "reliability"):
        assert Path(paths[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mlp | bfp 8-bit | VC SGLDLP-L | 0.5 | 2 |" in (tmp_path / "results.md").read_text()
    assert "VC SGLDLP-L" in format_table(rows)


def test_study_plan_rejects() -> None:
    with pytest.raises(ValueError, match="unknown method 'adam'"):
        StudyPlan("x", methods=("adam",))
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        StudyPlan("x", models=("vit",))
    with pytest.raises(ValueError, match="jobs must be an int >= 1, got 0"):
        run_study(StudyPlan("x"), "unused", jobs=0)


def test_cli_train(tmp_path, capsys) -> None:
    from emulator.cli import main

    out = tmp_path / "study"
    args = ["train", "--methods", "vc,sgdlp-l", "--seeds", "0", "--epochs", "2", "--burnin", "1", "--n-train",
            "200", "--n-test", "100", "--lanes", "64", "--out", str(out), "--jobs", "2", "--frac", "5"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "VC SGLDLP-L" in text and "SGDLP-L" in text and "results.md" in text and "fixed Q(8,5)" in text
    assert json.loads((out / "results.json").read_text())["command"].startswith("lpsgld train --methods vc,sgdlp-l")
    with pytest.raises(SystemExit) as e:
        main(["train", "--lrs", "-1", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2
    assert "argument --lrs: bad list '-1': expected a finite number in (0, 10], got '-1'" in capsys.readouterr().err


def test_resnet_standin_preset(tmp_path, capsys) -> None:
    from emulator.cli import main
    from emulator.studies.study import PRESETS, prepare_data

    plan = PRESETS["resnet18-standin"]
    specs = plan.runs()
    assert [(s.method, s.number_format, s.model) for s in specs] == [
        ("sgld", "fixed", "resnet18"), ("sgldlp-f", "bfp", "resnet18"), ("vc", "bfp", "resnet18")]
    assert plan.pad_to == 32 and plan.device == "cuda"
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the refusal below is for machines without it")
    assert main(["train", "--preset", "resnet18-standin", "--out", str(tmp_path)]) == 2
    assert "--device cpu" in capsys.readouterr().err
    small = prepare_data(dataclasses.replace(plan, dataset="digits", pad_to=12))
    assert small.input_shape == (1, 12, 12)


def test_resnet_standin_script_usage() -> None:
    import subprocess

    r = subprocess.run(["bash", "scripts/resnet_standin.sh"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "usage: bash scripts/resnet_standin.sh prepare | run" in r.stderr


def test_train_run_checks_its_data_and_schedule(digits) -> None:
    with pytest.raises(ValueError, match=r"wants 50 training examples, the data set has 300"):
        train_run(RunSpec(method="vc", n_train=50, **SMALL), digits)
    with pytest.raises(ValueError, match=r"is for data set 'fashion-mnist', got 'digits\[300/100\]'"):
        train_run(RunSpec(method="vc", **dict(SMALL, dataset="fashion-mnist")), digits)
    with pytest.raises(ValueError, match=r"samples_per_epoch \(4\) exceeds the 3 steps per epoch"):
        train_run(RunSpec(method="vc", **dict(SMALL, batch_size=128, samples_per_epoch=4)), digits)


def test_a_diverged_run_is_recorded_not_fatal(tmp_path) -> None:
    plan = StudyPlan("d", methods=("sgld",), lrs=(1e6, 0.5), seeds=(0,), epochs=2, burnin=1, n_train=200,
                     n_test=100, lanes=64)
    res = run_study(plan, tmp_path, progress=lambda _m: None)
    assert "diverged" in res[0]["diverged"] and res[0]["metrics"]["nll"] is None and res[1]["diverged"] is None
    rows = summarize(res)
    assert [(r["lr"], r["seeds"], r["diverged"]) for r in rows] == [(1e6, 0, 1), (0.5, 1, 0)]
    assert "0 (1 diverged)" in format_table(rows)
    write_outputs(plan, res, tmp_path)
    json.loads((tmp_path / "results.json").read_text())  # valid JSON: no NaN


def test_cli_lists_every_preset() -> None:
    from emulator.cli import _study_presets
    from emulator.studies.study import PRESETS

    assert _study_presets() == tuple(PRESETS)  # the CLI names them without importing torch


def test_summary_of_an_infinite_nll() -> None:
    spec = RunSpec(method="vc").to_dict()
    runs = [{"spec": spec, "metrics": {"error": 0.1, "nll": nll, "ece": 0.02}, "flushed": [], "seconds": 1.0}
            for nll in (0.5, None)]  # None: a test label at probability 0 (NLL inf), stored as null
    (row,) = summarize(runs)
    assert row["nll"] == float("inf") and row["nll_std"] != row["nll_std"] and row["seeds"] == 2
    assert row["error"] == 0.1 and "inf" in format_table([row])


def test_resume_from_a_checkpoint_without_quantizer_buffers(digits, tmp_path) -> None:
    """Checkpoints written before the quantizers' counters joined model.state_dict() still resume."""
    spec = RunSpec(method="vc", number_format="bfp", **SMALL)
    whole = train_run(spec, digits)

    def stop_after_two(msg: str) -> None:
        if "epoch 2/3" in msg:
            raise Interrupt(msg)

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train_run(spec, digits, ckpt=ckpt, progress=stop_after_two)
    st = load_checkpoint(ckpt, spec.key)
    assert any(".lpsgld_quantizer." in k for k in st["model"])
    st["model"] = {k: v for k, v in st["model"].items() if ".lpsgld_quantizer." not in k}
    save_checkpoint(ckpt, spec.key, st)
    resumed = train_run(spec, digits, ckpt=ckpt)
    assert resumed.metrics == whole.metrics and resumed.history[-1]["train_loss"] == whole.history[-1]["train_loss"]


@pytest.mark.parametrize(("name", "branch_a"), [("fmnist-mlp30", False), ("fmnist-branch-a", True)])
def test_real_data_presets_cover_both_vc_branches(name, branch_a) -> None:
    """fmnist-mlp30 (N = 60,000) keeps VC in branch B; fmnist-branch-a (N = 10,000) puts it in branch A."""
    from emulator.spec.host import HyperParams, step_registers
    from emulator.studies.study import PRESETS
    from emulator.studies.training import training_config

    plan = PRESETS[name]
    (vc,) = [s for s in plan.runs() if s.method == "vc" and s.seed == 0]
    n = plan.n_train or 60000
    cfg = training_config(vc, n)
    regs = step_registers(cfg, HyperParams(vc.lr, vc.temperature, n, vc.weight_decay))
    assert bool(regs.vc_noise) is branch_a
