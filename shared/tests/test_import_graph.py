"""The import graph of the monorepo, read with ``ast`` from the sources (nothing is imported).

Rules: no import cycle inside a package (a function-level import counts too: it hides a cycle from Python, not
from the reader; ``if TYPE_CHECKING:`` imports do not count); no project imports a sibling project; the shared
``effrepro`` imports no project; no module imports a command-line module (``cli``), except a ``__main__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAPERS = tuple(line.strip() for line in (ROOT / "shared/src/effrepro/papers.txt").read_text().splitlines()
               if line.strip())
PACKAGES = {"effrepro": ROOT / "shared/src/effrepro", **{p: ROOT / p / "src" / p for p in PAPERS}}


def module_files(package: str) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (``rglob`` does not follow the ``configs`` link)."""
    root = PACKAGES[package]
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports: ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``."""
    is_package = path.name == "__init__.py"
    result: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            result.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[:len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            full = f"{base}.{alias.name}"
            result.add(full if full in known else base)
    return result


def graph() -> dict[str, set[str]]:
    """Every module of every package -> the modules it imports (any package, standard library included)."""
    files = {name: path for package in PACKAGES for name, path in module_files(package).items()}
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def _package(module: str) -> str:
    return module.split(".")[0]


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return graph()


def test_graph_reader_sees_relative_and_submodule_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .b import thing\nimport os\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    found = {m: imported_modules(m, pkg / (m.split(".")[-1] + ".py") if m != "pkg" else pkg / "__init__.py", known)
             for m in known}
    assert found["pkg"] == {"pkg.a"}
    assert found["pkg.a"] == {"pkg.b", "os"}
    assert found["pkg.c"] == {"typing"}
    assert cycles(found) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle_inside_a_package(edges: dict[str, set[str]]) -> None:
    found = cycles(edges)
    assert not found, "import cycles (break them by moving the shared piece down):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_projects_import_no_sibling_and_shared_imports_no_project(edges: dict[str, set[str]]) -> None:
    bad = sorted(f"{src} imports {dst}" for src, targets in edges.items() for dst in targets
                 if _package(dst) in PAPERS and _package(dst) != _package(src))
    assert not bad, "\n".join(bad)


def test_nothing_imports_a_command_line_module(edges: dict[str, set[str]]) -> None:
    bad = sorted(f"{src} imports {dst}" for src, targets in edges.items() for dst in targets
                 if dst.split(".")[-1] == "cli" and dst in edges and not src.endswith("__main__"))
    assert not bad, "the CLI is a leaf; move what these need out of it:\n" + "\n".join(bad)


def test_every_package_is_read() -> None:
    for package in PACKAGES:
        modules = module_files(package)
        assert package in modules and len(modules) > 3, package
        assert not any(name.startswith(f"{package}.configs") for name in modules), "configs are data, not modules"
