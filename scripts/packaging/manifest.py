"""The provenance manifest written into every archive: what was built, from what, with what."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from handler import layout
from handler.provenance import built_files, environment, installed_versions, sha256_file
from scripts import repo

# Timings vary run to run; they would make two builds of the same inputs differ.
VOLATILE_VALIDATION_KEYS = ("export_seconds",)
PROGRESS_MIN_BYTES = 64 << 20  # show a progress bar for files above this size
VERSIONED = ["torch", "torchvision", "pillow", "numpy", "torchserve", "torch-model-archiver",
             "onnxruntime"]


def hash_file(path: Path) -> str:
    """SHA-256 with a progress bar (bytes and rate) on stderr for large files."""
    total = path.stat().st_size
    if total < PROGRESS_MIN_BYTES:
        return sha256_file(path)
    start = time.perf_counter()
    last = [0.0]

    def show(done: int) -> None:
        now = time.perf_counter()
        if now - last[0] < 0.5 and done < total:
            return
        last[0] = now
        rate = done / max(now - start, 1e-9) / 1e6
        bar = "#" * int(30 * done / total)
        print(f"\r  hashing {path.name} [{bar:<30}] {done / 1e6:,.0f}/{total / 1e6:,.0f} MB "
              f"{rate:,.0f} MB/s", end="", file=sys.stderr, flush=True)

    digest = sha256_file(path, show)
    print(file=sys.stderr)
    return digest


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **installed_versions(tuple(VERSIONED))}


def git_commit() -> tuple[str, str]:
    """(commit, ISO time of commit); 'unknown' outside a git checkout. `-dirty` if changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo.ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        when = git("log", "-1", "--format=%cI")
        # Untracked files count too: a new, uncommitted module can change what gets built.
        if git("status", "--porcelain", "handler", "config", "scripts"):
            commit += "-dirty"
        return commit, when
    except (OSError, subprocess.CalledProcessError):
        return "unknown", ""


def build_time(commit_time: str) -> str:
    """SOURCE_DATE_EPOCH, else the commit's time: same inputs give the same manifest."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.fromtimestamp(int(epoch), UTC).isoformat()
    return commit_time or "unknown"


def build_manifest(stage: Path, model_name: str, version: str, arch: str, fmt: str,
                   checkpoint: Path | None, validation: dict) -> dict:
    """Hash every staged file and record versions, preprocessing and validation."""
    import json

    files = {}
    for name in built_files(stage):
        if name != layout.MANIFEST:
            files[name] = {"sha256": hash_file(stage / name), "bytes": (stage / name).stat().st_size}
    commit, commit_time = git_commit()
    return {
        "model": {"name": model_name, "version": version, "arch": arch, "format": fmt},
        "checkpoint": {"name": checkpoint.name, "sha256": hash_file(checkpoint)}
        if checkpoint else {"name": None, "sha256": None, "note": "random initialisation"},
        "files": files,
        "preprocessing": json.loads((stage / layout.PREPROCESS_CONFIG).read_text()),
        "versions": library_versions(),
        "environment": environment(),
        "validation": {k: v for k, v in validation.items() if k not in VOLATILE_VALIDATION_KEYS},
        "build": {"git_commit": commit, "built_at": build_time(commit_time)},
    }
