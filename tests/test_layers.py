"""The package's layers: every import of ifv runs downward, and no two modules import each
other (directly or around a circle).

    faces (cli, api, compare)  ->  run (setting, stages, store, results)  ->  zoo (models,
    data, train)  ->  math (the paper's objects)  ->  base (errors, validate, device, files)

A module may import its own layer and the layers below it; paper/ and lab/ sit above all of
ifv and are imported by nothing in it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ORDER = ["base", "math", "zoo", "run", "faces", "top"]  # top: the package ifv, the API
BASE = {"ifv.errors", "ifv.validate", "ifv.device", "ifv.files"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "ifv").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _layer(module: str) -> str | None:
    if module in BASE:
        return "base"
    if module == "ifv":
        return "top"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def _imports(path: Path) -> set[str]:
    """Every ifv module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    modules = _modules()
    return {m for m in found if m in modules}


MODULES = _modules()


@pytest.mark.parametrize("module", [m for m in MODULES if _layer(m)])
def test_imports_run_downward(module: str) -> None:
    mine = ORDER.index(_layer(module))  # type: ignore[arg-type]
    for other in _imports(MODULES[module]):
        theirs = _layer(other)
        assert theirs is not None and ORDER.index(theirs) <= mine, (module, other)


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if _layer(m) is None] == []


def test_no_import_circle() -> None:
    graph = {m: {o for o in _imports(p) if o != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for o in graph.get(m, ()):
            if state.get(o) == 1:
                raise AssertionError(f"import circle: {' -> '.join([*path, m, o])}")
            if state.get(o) is None:
                visit(o, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_nothing_in_ifv_imports_the_reproduction_or_the_lab() -> None:
    for module, path in MODULES.items():
        text = path.read_text()
        assert "from paper" not in text and "import paper" not in text, module
        assert "from lab" not in text and "import lab" not in text, module
