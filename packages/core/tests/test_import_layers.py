"""rnnkit-core's modules import each other in layers: no import cycle at run time, no import
hidden inside a function to dodge one, and the kernel vocabulary a leaf."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rnnkit.core

ROOT = Path(rnnkit.core.__file__).parent
PACKAGE = "rnnkit.core"

#: Function-level imports of rnnkit modules that are there for start-up cost, not a cycle.
LAZY_FOR_STARTUP = {
    # pytest loads this plugin in every run of an environment with rnnkit-core: importing
    # the suite (torch, the plugin host) only when a test asks for the kit's cases.
    ("rnnkit.core.testing.pytest_plugin", "rnnkit.core.testing.suite"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The rnnkit.core modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            pkg = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                pkg = pkg.rsplit(".", 1)[0]
            base = f"{pkg}.{base}" if base else pkg
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return sorted({n for n in names if n in MODULES})


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level run-time imports, imports inside functions) of one module."""
    tree = ast.parse(MODULES[module].read_text())
    top: set[str] = set()
    nested: set[str] = set()

    def visit(nodes: list[ast.stmt], in_function: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse, in_function)  # annotations only: not a run-time import
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                (nested if in_function else top).update(_targets(node, module))
            is_def = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    visit(
                        [c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)],  # type: ignore[misc]
                        in_function or is_def,
                    )

    visit(tree.body, False)
    return top - {module}, nested - {module}


GRAPH = {m: _imports(m)[0] for m in MODULES}


def test_the_parser_sees_the_imports() -> None:
    """The walk finds known edges (a broken walk would pass every other test here)."""
    assert "rnnkit.core.dispatch" in GRAPH["rnnkit.core.cell"]
    assert "rnnkit.core.kernel" in GRAPH["rnnkit.core.dispatch"]
    assert "rnnkit.core.cell" in GRAPH["rnnkit.core.plugins"]


def test_no_import_cycle() -> None:
    """Depth-first search over the module-level run-time imports finds no back edge."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            dfs(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_level_imports(module: str) -> None:
    nested = {(module, n) for n in _imports(module)[1]}
    assert nested <= LAZY_FOR_STARTUP, f"{module} imports inside functions: {sorted(nested)}"


def test_kernel_vocabulary_is_a_leaf() -> None:
    assert GRAPH["rnnkit.core.kernel"] == set()
