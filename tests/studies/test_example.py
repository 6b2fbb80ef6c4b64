"""examples/digits_sgld.py runs, and an interrupted run resumed from its checkpoint ends bit-identically."""

import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "digits_sgld.py"
SMALL = ["--epochs", "2", "--cycles", "1", "--samples-per-cycle", "1", "--n-train", "192"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", str(SCRIPT), *SMALL, *args], capture_output=True,
                          text=True, timeout=600)


def test_example_runs_and_resumes_bit_identically(tmp_path):
    straight = run()
    assert straight.returncode == 0, straight.stderr
    assert "samples 1  BMA error" in straight.stdout and "'steps': 6" in straight.stdout
    ck = tmp_path / "ck.pt"
    first = run("--ckpt", str(ck), "--stop-after", "1")
    assert first.returncode == 1 and "stopped after epoch 1" in first.stderr and ck.exists()
    resumed = run("--ckpt", str(ck))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == straight.stdout  # metrics, weight sums and telemetry identical
