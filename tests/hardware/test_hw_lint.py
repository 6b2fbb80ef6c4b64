"""mypy on every module of the hardware package (tests/test_lint.py covers ruff and the emulator)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "hw").rglob("*.py"))  # every hw module, flows included


def test_mypy_hw():
    pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")
    exe = shutil.which("mypy", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("mypy")
    if exe is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    files = [str(ROOT / m) for m in MODULES]
    r = subprocess.run([exe, *files], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
