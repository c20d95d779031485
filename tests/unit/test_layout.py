"""The package's floor plan holds (issue: one room per concept).

Checked from the source with ``ast``, nothing imported: no import circle between modules; no
module over 400 lines and no function over 60 lines without a written reason (a module docstring
line starting ``Over 400 lines:`` or a comment starting ``# Over 60 lines:`` inside the function);
no private name imported from another package; the studies hold no argparse; the restore
context knows no operator by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cgc_lens"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _top_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Module-level imports, those under ``if TYPE_CHECKING:`` included: a circle of type-only
    imports is still a circle a reader has to untangle. Imports inside functions are left out."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            found.append(node)
        elif isinstance(node, ast.Try | ast.If):
            found += [n for n in node.body if isinstance(n, ast.ImportFrom | ast.Import)]
    return found


def _target(module: str, node: ast.ImportFrom, alias: ast.alias) -> str | None:
    """The cgc_lens module an import binds from (a submodule when the name is one)."""
    if node.module is None or not node.module.startswith("cgc_lens"):
        return None
    sub = f"{node.module}.{alias.name}"
    return sub if sub in MODULES else node.module


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    target = _target(name, node, alias)
                    if target in MODULES and target != name:
                        graph[name].add(target)
    return graph


def test_no_import_circle_between_modules():
    graph = _graph()
    # A package's __init__ re-exports its own modules; those edges are not circles of design.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(f"{name}.")}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt):], node, nxt] if nxt in stack
                               else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size_or_written_reason(name):
    path = MODULES[name]
    text = path.read_text()
    lines = text.count("\n")
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert lines <= MAX_MODULE_LINES or "Over 400 lines:" in doc, (
        f"{path.relative_to(PACKAGE.parent)} has {lines} lines and no 'Over 400 lines:' reason")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_function_size_or_written_reason(name):
    path = MODULES[name]
    text = path.read_text()
    source = text.splitlines()
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            span = node.end_lineno - node.lineno + 1
            body = "\n".join(source[node.lineno - 1:node.end_lineno])
            if span > MAX_FUNCTION_LINES and "# Over 60 lines:" not in body:
                long.append(f"{node.name} ({span} lines)")
    assert not long, f"{path.relative_to(PACKAGE.parent)}: {long}"


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def test_no_private_name_imported_across_packages():
    crossing = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                    "cgc_lens"):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") or any(
                    p.startswith("_") and p != "__init__" for p in node.module.split("."))
                if private and _package_of(node.module) != _package_of(name):
                    crossing.append(f"{name} imports {node.module}.{alias.name}")
    assert not crossing, crossing


def test_studies_hold_no_argparse_and_context_knows_no_operator():
    for path in (PACKAGE / "studies").rglob("*.py"):
        assert "argparse" not in path.read_text(), path
    context = ast.parse((PACKAGE / "compress" / "context.py").read_text())
    imported = {node.module for node in ast.walk(context) if isinstance(node, ast.ImportFrom)}
    assert not any(m and m.startswith("cgc_lens.compress.operators.") and m != (
        "cgc_lens.compress.operators.base") for m in imported), imported
    names = {alias.name for node in ast.walk(context) if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert not names & {"RTN", "MagnitudePrune", "WandaPrune", "HeadPrune", "LowRank"}, names
