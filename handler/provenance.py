"""Integrity check at load: the files a worker serves must be the files that were validated.

`scripts/package.py` writes `provenance.json` into the archive with the SHA-256 of every
bundled file and the library versions used at export. A worker compares both before loading.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
CHECKED_VERSIONS = ("torch", "torchvision")


class IntegrityError(RuntimeError):
    """The model directory does not match its manifest."""


def sha256_file(path: str | Path, on_progress=None) -> str:
    """Hex SHA-256 of a file, read in chunks; `on_progress(done_bytes)` after each chunk."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
            done += len(chunk)
            if on_progress:
                on_progress(done)
    return digest.hexdigest()


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def running_versions() -> dict[str, str]:
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def find_mismatches(model_dir: Path, manifest: dict) -> list[str]:
    """Every way the directory differs from the manifest, one readable line each."""
    problems = []
    for name, entry in manifest.get("files", {}).items():
        path = model_dir / name
        if not path.is_file():
            problems.append(f"file {name} is listed in the manifest but missing")
        elif (actual := sha256_file(path)) != entry["sha256"]:
            problems.append(f"file {name} sha256 {actual[:16]}... != manifest {entry['sha256'][:16]}...")
    running = running_versions()
    for lib in CHECKED_VERSIONS:
        built = manifest.get("versions", {}).get(lib)
        if built and _major_minor(built) != _major_minor(running[lib]):
            problems.append(f"{lib} {running[lib]} running, artifact exported with {built}")
    return problems


def verify_model_dir(model_dir: Path, manifest_name: str, on_mismatch: str = "refuse") -> dict | None:
    """Check hashes and versions; raise IntegrityError (refuse) or log a warning (warn)."""
    path = Path(model_dir) / manifest_name
    if not path.is_file():
        if on_mismatch == "refuse":
            raise IntegrityError(f"Integrity check failed: manifest {manifest_name} is missing")
        logger.warning("No manifest %s: integrity not verified", manifest_name)
        return None
    manifest = json.loads(path.read_text())
    problems = find_mismatches(Path(model_dir), manifest)
    if problems:
        message = "Integrity check failed: " + "; ".join(problems)
        if on_mismatch == "refuse":
            logger.error(message)
            raise IntegrityError(message)
        logger.warning(message)
    else:
        logger.info("Integrity check passed: %d files match %s", len(manifest.get("files", {})),
                    manifest_name)
    return manifest
