"""ruff lints every tracked Python file: no exclude pattern may hide a source folder again."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from scripts import repo


def tracked_python_files() -> set[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=repo.ROOT, capture_output=True, text=True,
                         check=True).stdout
    return {(repo.ROOT / line).resolve() for line in out.splitlines()}


def linted_files() -> set[Path]:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    out = subprocess.run([ruff, "check", "--show-files", "."], cwd=repo.ROOT, capture_output=True,
                         text=True, check=True).stdout
    return {Path(line.strip()).resolve() for line in out.splitlines() if line.strip().endswith(".py")}


def test_ruff_lints_every_tracked_python_file():
    tracked = tracked_python_files()
    assert len(tracked) > 50  # the repository's own files, not an empty listing
    missing = sorted(str(p.relative_to(repo.ROOT)) for p in tracked - linted_files())
    assert missing == [], f"ruff skips {len(missing)} tracked files: {missing[:10]}"


def test_no_source_folder_is_named_like_an_output_folder():
    outputs = {"build", "dist", "out", "output", "outputs"}
    named = sorted({str(p.parent.relative_to(repo.ROOT)) for p in tracked_python_files()
                    if outputs & set(p.relative_to(repo.ROOT).parts[:-1])})
    assert named == []
