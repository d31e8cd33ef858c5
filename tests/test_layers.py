"""The package's layers: imports point down only, and the runtime has no import circle.

Strategy: parse every module of src/gnut with `ast` (so imports under `if TYPE_CHECKING:` and
inside functions count too: a type-only import still ties two modules together) and check each
`gnut.*` import against the layer table of gnut/__init__.py's docstring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gnut"

# What each layer may import (the foundation is the top-level modules of gnut itself).
ALLOWED = {
    "foundation": {"foundation"},
    "protocol": {"foundation", "protocol"},
    "dht": {"foundation", "protocol", "dht"},
    "sim": {"foundation", "protocol", "dht", "sim"},
    "runtime": {"foundation", "protocol", "dht", "runtime"},
    "app": {"foundation", "protocol", "dht", "runtime", "app"},
}
SUBPACKAGES = {"protocol", "dht", "runtime", "app", "sim"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else "foundation"


def _imports(path: Path) -> set[str]:
    """Every gnut module this file imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gnut")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gnut":
            for alias in node.names:  # `from gnut.protocol import messages` imports gnut.protocol.messages
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists() else node.module)
    return found


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def test_every_module_is_in_a_known_layer() -> None:
    # Folders without Python modules (gnut/data: shipped data files) are not layers.
    dirs = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("__") and any(p.glob("*.py"))}
    assert dirs == SUBPACKAGES, "a new subpackage needs a row in ALLOWED and in gnut/__init__.py"
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name != "gnut":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{name} needs a docstring saying what it may import"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    if name in ("gnut", "gnut.__main__"):
        return  # the package's lazy `gnut.Node` and `python -m gnut` are the entry points
    layer = _layer(name)
    upward = sorted(m for m in _imports(MODULES[name]) if _layer(m) not in ALLOWED[layer])
    assert not upward, f"{name} ({layer}) imports {upward}"


def test_runtime_and_protocol_have_no_import_circle() -> None:
    graph = {n: {m for m in _imports(p) if m in MODULES and m != n} for n, p in MODULES.items()}
    graph = {n: deps for n, deps in graph.items() if _layer(n) in ("runtime", "protocol")}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                pytest.fail("import circle: " + " -> ".join([*stack[stack.index(m):], m] if m in stack else [n, m]))
            if m in graph and not state.get(m):
                visit(m, [*stack, m])
        state[n] = 2

    for n in sorted(graph):
        if not state.get(n):
            visit(n, [n])


def test_nothing_but_node_and_the_app_imports_the_node() -> None:
    importers = sorted(n for n, p in MODULES.items() if "gnut.runtime.node" in _imports(p) and n != "gnut")
    assert all(n.startswith("gnut.app.") for n in importers), importers
