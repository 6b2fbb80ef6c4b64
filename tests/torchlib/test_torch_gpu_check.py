"""scripts/gpu_check.py: the dry run on CPU passes, and without CUDA it says so and exits 2."""

import importlib.util
import json
import pathlib

import pytest

torch = pytest.importorskip("torch")

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_on_cpu_passes(capsys):
    rc = _load().main(["--device", "cpu", "--small", "--skip-timing", "--no-triton", "--presets", "w8-vc", "w4-lpf"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    report = json.loads(cap.out)  # stdout is one JSON object
    assert report["ok"] is True and report["equality"]["mismatches"] == 0 and report["equality"]["equal"] > 300
    assert "all checks passed" in cap.err


def test_checker_reports_a_mismatch(capsys):
    ck = _load().Checker()
    ck.equal("x", torch.zeros(3, dtype=torch.int64), torch.tensor([0, 1, 0]))
    assert ck.failed == ["x"] and "MISMATCH x" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for machines without CUDA")
def test_without_cuda_exits_with_message(capsys):
    assert _load().main([]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
