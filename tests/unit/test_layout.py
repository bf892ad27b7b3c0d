"""The suite is grouped by what it tests: tests/unit/<area>/ and tests/e2e/<area>/, areas the
same as the code's. Every test under e2e/ is marked e2e, none under unit/ is, and no test module
sits flat in tests/ (support/ and conftest.py hold what every area shares)."""

from __future__ import annotations

import ast
from pathlib import Path

from scripts import repo
from tests.support.scheduling import ALONE, RUN_FIRST, SHARED, pair_of, scope_of

TESTS = repo.ROOT / "tests"
AREAS = {"handler", "packaging", "ops", "deploy", "client", "bench"}


def modules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def marked_e2e(decorators: list[ast.expr]) -> bool:
    return any("mark.e2e" in ast.unparse(d) for d in decorators)


def e2e_marks(path: Path) -> tuple[bool, dict[str, bool]]:
    """(whether the module is marked e2e, test name -> whether that test is marked e2e)."""
    tree = ast.parse(path.read_text())
    module = any(isinstance(node, ast.Assign) and "pytestmark" in ast.unparse(node.targets[0])
                 and "mark.e2e" in ast.unparse(node.value) for node in tree.body)
    tests = {node.name: marked_e2e(node.decorator_list) for node in tree.body
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")}
    return module, tests


def test_no_test_module_sits_flat_in_tests():
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []


def test_every_area_folder_is_one_of_the_code_areas():
    for kind in ("unit", "e2e"):
        folders = {p.name for p in (TESTS / kind).iterdir() if p.is_dir() and p.name != "__pycache__"}
        assert folders <= AREAS, (kind, folders - AREAS)
        assert all((TESTS / kind / area / "__init__.py").is_file() for area in folders)
    assert {p.relative_to(TESTS).parts[0] for p in modules()} == {"unit", "e2e"}


def test_e2e_marks_match_the_folder():
    wrong = []
    for path in modules():
        module, tests = e2e_marks(path)
        where = str(path.relative_to(TESTS))
        if not tests:
            wrong.append(f"{where}: no test")
        elif where.startswith("e2e/"):
            wrong += [f"{where}::{name} is not marked e2e" for name, e2e in tests.items()
                      if not (module or e2e)]
        else:
            wrong += [f"{where}::{name} is marked e2e" for name, e2e in tests.items() if module or e2e]
    assert len(modules()) > 60 and wrong == []


def test_tests_never_import_each_other():
    """What two test modules share lives in tests/support (one place), not in one of them."""
    borrowed = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            hits = [n for n in names if n.startswith(("tests.unit", "tests.e2e"))]
            if hits:
                borrowed[str(path.relative_to(TESTS))] = hits
    assert borrowed == {}


def test_every_scheduled_name_is_a_module_pair():
    """A module renamed away from RUN_FIRST, ALONE or SHARED would silently run beside a neighbour."""
    pairs = {pair_of(str(path.relative_to(repo.ROOT))) for path in modules()}
    named = {*ALONE, *(pair for group in SHARED.values() for pair in group), *map(pair_of, RUN_FIRST)}
    assert named <= pairs, named - pairs


def test_a_modules_halves_share_a_scope_and_a_shared_group_one_scope():
    assert scope_of("tests/unit/handler/test_provenance.py::test_a") == \
        scope_of("tests/e2e/handler/test_provenance.py::test_b[x]") == "handler/test_provenance.py"
    assert {scope_of(f"tests/e2e/{pair}::t") for pairs in SHARED.values() for pair in pairs} == set(SHARED)
    assert scope_of("tests/unit/test_layout.py::t") == "test_layout.py"
