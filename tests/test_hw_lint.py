"""mypy on the hardware generator's modules (tests/test_lint.py covers ruff and the emulator)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(str(p.relative_to(ROOT / "hw"))[:-3] for p in (ROOT / "hw").rglob("*.py"))  # every hw module


def test_mypy_hw():
    pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")
    exe = shutil.which("mypy", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("mypy")
    if exe is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    files = [str(ROOT / "hw" / f"{m}.py") for m in MODULES]
    r = subprocess.run([exe, *files], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
