"""The benchmark kinds import one way (scripts/bench/__init__.py): load/ uses the shared modules
(stats, markdown, workspace); scenarios/ uses those and load.loadtest; micro/ uses only those."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scripts import repo

BENCH = repo.ROOT / "scripts" / "bench"
# kind -> the scripts.bench modules outside its own folder it may import
ALLOWED = {
    "load": {"scripts.bench.stats", "scripts.bench.markdown", "scripts.bench.workspace"},
    "scenarios": {"scripts.bench.stats", "scripts.bench.markdown", "scripts.bench.workspace",
                  "scripts.bench.load.loadtest"},
    "micro": {"scripts.bench.stats", "scripts.bench.markdown", "scripts.bench.workspace"},
}


def bench_imports(path: Path) -> set[str]:
    """The scripts.bench modules `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scripts.bench"):
            # `from scripts.bench import stats` imports the module scripts.bench.stats
            found |= ({f"{node.module}.{a.name}" for a in node.names} if node.module == "scripts.bench"
                      else {node.module})
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("scripts.bench")}
    return found


@pytest.mark.parametrize("kind", sorted(ALLOWED))
def test_each_kind_imports_only_its_own_folder_and_what_it_may_use(kind):
    own = f"scripts.bench.{kind}"
    for path in sorted((BENCH / kind).glob("*.py")):
        foreign = {m for m in bench_imports(path) if m != own and not m.startswith(own + ".")}
        assert foreign <= ALLOWED[kind], f"{path.name} imports {sorted(foreign - ALLOWED[kind])}"


def test_shared_modules_import_no_kind():
    for path in sorted(BENCH.glob("*.py")):  # stats, markdown, workspace
        imported = bench_imports(path)
        assert not {m for m in imported if m.split(".")[2] in ALLOWED}, (path.name, imported)
