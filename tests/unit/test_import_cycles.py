"""No import cycle inside ``jalki_core``.

The rule (what counts as "A imports B"):

- every ``import`` / ``from … import`` at module level, including those
  nested in module-level ``if``/``try`` blocks, **and** those under
  ``if TYPE_CHECKING:``. An annotation-only import is still a dependency of
  the design: it breaks as soon as the annotation is evaluated at run time
  (``typing.get_type_hints``, dataclass or CLI introspection), and a cycle of
  them means two modules that cannot be understood, moved or tested apart.
- ``from pkg import name`` points at ``pkg.name`` when that is a module of
  ``jalki_core``, else at ``pkg`` itself; relative imports are resolved.
- imports inside functions and methods do **not** count: deferring an import
  to the call is how the core keeps ``import jalki_core`` cheap (libbpf, the
  KB, rich), and such an import runs only after every module involved has
  finished loading.
- importing ``a.b.c`` does not count as importing the packages ``a`` and
  ``a.b`` (Python runs their ``__init__`` first, but a package that imports
  its own submodules is not a cycle of the design).

Any strongly connected component of more than one module is a cycle and fails
the test, naming its modules and one concrete loop of imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "jalki_core"

@dataclass(frozen=True)
class Module:
    """One module of the package tree: its dotted name, file and whether it is a package."""

    name: str
    path: Path
    is_package: bool


def modules_under(root: Path) -> dict[str, Module]:
    """Every ``*.py`` under the package folder ``root``, by dotted name."""
    found: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = Module(".".join(parts), path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: Iterable[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module loads, plus those under ``if TYPE_CHECKING:``."""
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            yield statement
        elif isinstance(statement, ast.If):
            yield from _module_level_imports(statement.body)
            yield from _module_level_imports(statement.orelse)
        elif isinstance(statement, ast.Try):
            yield from _module_level_imports(statement.body)
            for handler in statement.handlers:
                yield from _module_level_imports(handler.body)
            yield from _module_level_imports(statement.orelse)
            yield from _module_level_imports(statement.finalbody)
        elif isinstance(statement, ast.With):
            yield from _module_level_imports(statement.body)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``module → modules of the same tree it imports``, by the rule in this file's docstring."""
    modules = modules_under(root)
    graph: dict[str, set[str]] = {}
    for module in modules.values():
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _module_level_imports(ast.parse(module.path.read_text(), str(module.path)).body):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    targets.add(f"{source}.{alias.name}")
                elif source in modules:
                    targets.add(source)
        targets.discard(module.name)
        graph[module.name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def one_loop(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """A concrete loop of imports inside ``component``: ``[a, b, …, a]``."""
    start = min(component)
    paths: dict[str, list[str]] = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & component):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no loop through {start} in {sorted(component)}")


def describe(graph: dict[str, set[str]], component: frozenset[str]) -> str:
    return f"{sorted(component)}: {' -> '.join(one_loop(graph, component))}"


def test_jalki_core_has_no_import_cycle() -> None:
    graph = import_graph(CORE)
    assert len(graph) > 50, "the scan found too few modules: is CORE right?"
    unexpected = [describe(graph, component) for component in cycles(graph)]
    assert not unexpected, "import cycles in jalki_core:\n" + "\n".join(unexpected)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize(("files", "expected"), [
    pytest.param({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": "import pkg.a\n"},
                 [{"pkg.a", "pkg.b"}], id="module-level"),
    pytest.param({"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import X\n",
                  "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import Y\n"},
                 [{"pkg.a", "pkg.b"}], id="type-checking-and-relative"),
    pytest.param({"pkg/__init__.py": "", "pkg/sub/__init__.py": "from . import c\n",
                  "pkg/sub/c.py": "try:\n    from .. import d\nexcept ImportError:\n    pass\n",
                  "pkg/d.py": "from pkg.sub import c\n"},
                 [{"pkg.sub.c", "pkg.d"}], id="through-try-and-parent-package"),
    pytest.param({"pkg/__init__.py": "from pkg import a\n", "pkg/a.py": "def f():\n    import pkg.b\n",
                  "pkg/b.py": "import pkg.a\n"}, [], id="function-level-import-is-not-counted"),
    pytest.param({"pkg/__init__.py": "from pkg.a import A\n", "pkg/a.py": "from pkg.b import B\nA = 1\n",
                  "pkg/b.py": "B = 2\n"}, [], id="package-importing-its-submodules-is-not-a-cycle"),
])
def test_the_detector_finds_exactly_the_cycles(tmp_path: Path, files: dict[str, str],
                                               expected: list[set[str]]) -> None:
    graph = import_graph(write_tree(tmp_path, files))
    assert [set(component) for component in cycles(graph)] == expected
    for component in cycles(graph):
        loop = one_loop(graph, component)
        assert loop[0] == loop[-1] and set(loop) == component
