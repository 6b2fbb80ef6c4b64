"""Every python block of docs/bfp.md runs."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "bfp.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block_runs(index):
    if "torch" in BLOCKS[index]:
        pytest.importorskip("torch")
    exec(compile(BLOCKS[index], f"docs/bfp.md block {index}", "exec"), {})


def test_doc_has_blocks():
    assert len(BLOCKS) == 5
