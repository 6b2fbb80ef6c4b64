"""The import-direction rule of docs/architecture.md: every import inside ``emulator`` and ``hw``
points down the stack (or within its own layer), never up."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (package prefix, rank): a module may import modules of its own group or of a lower rank.
# The longest matching prefix decides a module's group; the table is the one in docs/architecture.md.
LAYERS = {
    "emulator.spec": 0,
    "emulator.engines": 1,
    "emulator.analysis": 1,
    "emulator.optim": 2,
    "emulator.nn": 2,
    "emulator.metrics": 2,
    "hw": 2,  # the hardware units: built from the spec alone
    "emulator.studies": 3,
    "hw.flows": 3,
    "hw.verify": 4,
    "emulator.cli": 5,
    "emulator": 5,  # the package root re-exports the public API
}


def group(module: str) -> str:
    best = ""
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return best


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: pathlib.Path, text: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, function-level ones included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one
            out += [(node.lineno, f"{mod}.{a.name}" if _is_module(f"{mod}.{a.name}") else mod) for a in node.names]
    return out


def _is_module(dotted: str) -> bool:
    p = ROOT.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


SOURCES = sorted([*ROOT.joinpath("emulator").rglob("*.py"), *ROOT.joinpath("hw").rglob("*.py")])


def violations(path: pathlib.Path, text: str | None = None) -> list[str]:
    me = module_name(path)
    mine = group(me)
    bad = []
    for line, mod in imports(path, path.read_text() if text is None else text):
        if not (mod == "emulator" or mod.startswith(("emulator.", "hw.")) or mod == "hw"):
            continue
        theirs = group(mod)
        if mod == "emulator" and me != "emulator":
            bad.append(f"{path.relative_to(ROOT)}:{line}: imports the package root; import from the subpackage")
        elif theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
            bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} (rank {LAYERS[mine]}) imports {mod} "
                       f"({theirs}, rank {LAYERS[theirs]})")
    return bad


def test_every_source_has_a_layer():
    assert SOURCES, "no sources found"
    assert all(group(module_name(p)) for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    assert violations(path) == []


def test_rule_catches_an_upward_import():
    """The checker itself: a spec module importing an engine, or a unit importing a flow, is reported."""
    spec = ROOT / "emulator" / "spec" / "formats.py"
    text = spec.read_text() + "\nfrom ..engines.numpy_engine import NumpyEngine\n"
    assert any("emulator.engines.numpy_engine" in v for v in violations(spec, text))
    unit = ROOT / "hw" / "top.py"
    assert any("hw.flows.export" in v for v in violations(unit, "from .flows import export\n"))
    assert violations(unit, "from emulator.spec.datapath import DatapathConfig\n") == []


def test_architecture_doc_lists_the_layers():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for prefix in LAYERS:
        if prefix != "emulator":
            assert f"`{prefix}`" in doc, f"docs/architecture.md does not mention `{prefix}`"
