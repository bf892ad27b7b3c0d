"""The benchmark kinds import one way (scripts/bench/__init__.py): peers/ and micro/ use only the
shared modules (stats, markdown, workspace); load/ uses those and peers/; scenarios/ uses those and
load.loadtest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scripts import repo

BENCH = repo.ROOT / "scripts" / "bench"
# kind -> the scripts.bench modules outside its own folder it may import
SHARED = {"scripts.bench.stats", "scripts.bench.markdown", "scripts.bench.workspace"}
PEERS = {f"scripts.bench.peers.{p.stem}" for p in (BENCH / "peers").glob("*.py")} | {"scripts.bench.peers"}
ALLOWED = {
    "load": SHARED | PEERS,
    "peers": SHARED,
    "scenarios": SHARED | {"scripts.bench.load.loadtest"},
    "micro": SHARED,
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


def test_every_bench_folder_is_a_kind_with_rules():
    folders = {p.name for p in BENCH.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED), folders
