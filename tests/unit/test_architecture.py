"""ARCHITECTURE.md stays true: every import between this repository's packages is one its "What
may import what" allows, every source module is named in it, and every path its job table names
exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from scripts import repo

DOC = repo.ROOT / "ARCHITECTURE.md"
SOURCES = {"handler": repo.ROOT / "handler", "scripts": repo.ROOT / "scripts",
           "image_classifier_client": repo.ROOT / "client" / "src" / "image_classifier_client"}
# Built or run outputs the job table names; they exist only after a build.
OUTPUTS = ("build/", "run/", "photos/", "model_store/")


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def rules() -> dict[str, set[str]]:
    """package -> the packages of ours it may import: `pkg ← a, b (notes)`, notes may wrap onto
    indented lines."""
    lines: list[str] = []
    for line in section("What may import what").split("```")[1].splitlines():
        if "←" in line:
            lines.append(line)
        elif line.strip() and lines:
            lines[-1] += " " + line.strip()
    found = {}
    for line in lines:
        left, right = line.split("←", 1)
        right = re.sub(r"\([^)]*\)", "", right)
        found[left.strip()] = {n for n in re.split(r"[,\s]+", right) if n.split(".")[0] in SOURCES}
    return found


def module_name(path: Path) -> str:
    for top, root in SOURCES.items():
        if path.is_relative_to(root):
            return ".".join((top, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
    raise ValueError(path)


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def imports_of_ours(path: Path) -> set[str]:
    """Every module of this repository `path` imports, at the top or inside functions; `from P
    import m` counts as P.m where m is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] in SOURCES}


def source_files() -> list[Path]:
    return sorted(p for root in SOURCES.values() for p in root.rglob("*.py"))


def owner(module: str, found: dict[str, set[str]]) -> str | None:
    hits = [p for p in found if under(module, p)]
    return max(hits, key=len) if hits else None


def test_the_rules_name_every_package():
    found = rules()
    assert {"handler", "image_classifier_client", "scripts.ops", "scripts.packaging", "scripts.deploy",
            "scripts.bench", "tests"} <= set(found)
    unruled = {module_name(p) for p in source_files() if owner(module_name(p), found) is None}
    assert unruled <= {"scripts", "scripts.repo"}, sorted(unruled)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(repo.ROOT)))
def test_each_import_is_one_the_rules_allow(path):
    found = rules()
    own = owner(module_name(path), found)
    if own is None:  # scripts/__init__.py, scripts/repo.py: the repository's root, nothing of ours
        assert imports_of_ours(path) <= {"scripts", "scripts.repo"}
        return
    may = found[own] | {own}
    # `from scripts.ops import serve` also yields the package scripts.ops itself: allowed when
    # one of its modules is
    bad = sorted(m for m in imports_of_ours(path)
                 if not any(under(m, a) or under(a, m) for a in may))
    assert bad == [], f"{own} may not import {bad} (ARCHITECTURE.md, What may import what)"


def test_a_forbidden_import_is_caught(tmp_path):
    """The check can fail: handler importing scripts is refused by the rules as written."""
    found = rules()
    assert not any(under("scripts.ops.serve", a) for a in found["handler"])
    assert not any(under("scripts.packaging", a) for a in found["scripts.ops"])


def test_every_source_module_is_named():
    text = DOC.read_text()
    unnamed = sorted(str(p.relative_to(repo.ROOT)) for p in source_files()
                     if p.name not in ("__init__.py", "__main__.py") and p.name not in text)
    assert unnamed == [], "ARCHITECTURE.md names no job for these modules"


def test_every_path_the_job_table_names_exists():
    table = section("Where each job lives")
    named = set(re.findall(r"`([\w.{},<>*/-]+)`", table))
    paths = {p for p in named if "/" in p and not p.startswith(OUTPUTS)
             and not re.search(r"[<>{}*]|NAME|WORKDIR", p)}
    missing = sorted(p for p in paths if not (repo.ROOT / p).exists())
    assert missing == []
