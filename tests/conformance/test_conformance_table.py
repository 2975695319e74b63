"""specs/conformance.md maps every requirement of specs/*.md to conformance tests that exist, and back.

Requirement ids are the first cell of a table row in a spec document
(``| KB-3 | …``, ``| EV-7 | …``, ``| ASK-2 | …``, any ``PREFIX-n``). Test node ids
are written in backticks in specs/conformance.md:
``tests/conformance/test_conformance_x.py::test_y`` (a parametrised id such as
``::test_y[case]`` names the function ``test_y``). This file's own checks are
about the table, not about a requirement, so they need no row.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
from conformance_support import REPO, SPECS

CONFORMANCE = SPECS / "conformance.md"
SUITE = Path(__file__).resolve().parent
REQUIREMENT_ROW = re.compile(r"^\|\s*([A-Z][A-Z0-9]*-[0-9]+)\s*\|(.*)$")
NODE_ID = re.compile(r"`(tests/[^`:\s]+\.py)((?:::[A-Za-z_][A-Za-z0-9_]*)+)(?:\[[^`]*\])?`")
SPEC_DOCUMENTS = sorted(path for path in SPECS.glob("*.md") if path != CONFORMANCE)
SUITE_FILES = sorted(path for path in SUITE.glob("test_conformance_*.py") if path.name != Path(__file__).name)


def requirement_ids(document: Path) -> list[str]:
    """The requirement ids a spec document defines in its tables."""
    return [match[1] for line in document.read_text(encoding="utf-8").splitlines()
            if (match := REQUIREMENT_ROW.match(line))]


@cache
def conformance_rows() -> dict[str, list[tuple[str, str]]]:
    """``requirement id → [(test file, test function), …]`` from specs/conformance.md."""
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in CONFORMANCE.read_text(encoding="utf-8").splitlines():
        match = REQUIREMENT_ROW.match(line)
        if match is None:
            continue
        assert match[1] not in rows, f"{match[1]} has two rows in {CONFORMANCE.name}"
        rows[match[1]] = [(path, names.split("::")[-1]) for path, names in NODE_ID.findall(match[2])]
    return rows


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """Names of the test functions (module level or in classes) a test file defines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(node.name for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"))


def test_the_specs_define_requirements() -> None:
    defined = {path.name: requirement_ids(path) for path in SPEC_DOCUMENTS}
    assert {"kb.md", "events.md"} <= {name for name, ids in defined.items() if ids}
    every = [rid for ids in defined.values() for rid in ids]
    assert len(every) == len(set(every)), "a requirement id is defined twice"


@pytest.mark.parametrize("document", SPEC_DOCUMENTS, ids=lambda path: path.name)
def test_every_requirement_has_conformance_tests(document: Path) -> None:
    rows = conformance_rows()
    missing = [rid for rid in requirement_ids(document) if not rows.get(rid)]
    assert missing == [], f"no conformance test listed in specs/conformance.md for {missing}"


def test_conformance_lists_only_requirements_the_specs_define() -> None:
    defined = {rid for path in SPEC_DOCUMENTS for rid in requirement_ids(path)}
    assert sorted(set(conformance_rows()) - defined) == []


def test_every_named_test_exists() -> None:
    absent = [f"{path}::{name}" for tests in conformance_rows().values() for path, name in tests
              if not (REPO / path).is_file() or name not in defined_tests(REPO / path)]
    assert absent == []


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda path: path.name)
def test_every_conformance_test_is_named_by_a_requirement(path: Path) -> None:
    named = {name for tests in conformance_rows().values() for test_path, name in tests
             if REPO / test_path == path}
    assert sorted(defined_tests(path) - named) == []
