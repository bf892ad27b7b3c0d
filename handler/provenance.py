"""Integrity check at load: the files a worker serves must be the files that were validated.

The build writes `provenance.json` into the archive with the SHA-256 of every bundled file
(paths relative to the archive root, `handler/preprocessing.py` included) and the library
versions used at export. A worker compares both before loading: a changed, missing or unlisted
file, or (for a TorchScript archive) another torch major.minor, is named in the log and the worker
refuses to load (or, with on_integrity_mismatch=warn, loads anyway). It also hashes the `handler`
modules this process actually imported: code from anywhere but the archive is refused the same way.

The version rule follows what runs the graph. A TorchScript archive is run by torch, so the running
torch must be the exporting one's major.minor (torchvision too, where it is installed: the runtime
image has none). An ONNX archive is run by ONNX Runtime; torch is imported only because
TorchServe's worker imports it, so a CPU-only runtime with another torch serves it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from handler import layout

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
# Libraries whose major.minor must match the export's, per archive format (see the docstring).
CHECKED_VERSIONS = {"torchscript": ("torch", "torchvision"), "onnx": ()}
# The libraries a worker's description reports (GET /models/NAME?customized=true).
DESCRIBED_VERSIONS = ("torch", "torchvision", "onnxruntime", "torchserve", "numpy", "pillow")
ON_MISMATCH = ("refuse", "warn")
PACKAGE_DIR = Path(__file__).resolve().parent


class IntegrityError(RuntimeError):
    """The model directory does not match its manifest."""


def sha256_stream(fh: BinaryIO, on_progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """(hex SHA-256, bytes) of an open binary stream, read in chunks; `on_progress(done)` after each."""
    digest, done = hashlib.sha256(), 0
    for chunk in iter(lambda: fh.read(CHUNK), b""):
        digest.update(chunk)
        done += len(chunk)
        if on_progress:
            on_progress(done)
    return digest.hexdigest(), done


def sha256_file(path: str | Path, on_progress: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, streamed."""
    with open(path, "rb") as fh:
        return sha256_stream(fh, on_progress)[0]


def built_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the files a build put in `root` (not MAR-INF, not __pycache__)."""
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not set(rel.parts[:-1]) & set(layout.UNHASHED_DIRS):
            yield rel.as_posix()


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def running_versions() -> dict[str, str]:
    """Installed versions of the checked libraries; one not installed is left out. Read from the
    package metadata, not by importing: torchvision beside another torch fails to import."""
    return installed_versions(tuple(sorted({lib for libs in CHECKED_VERSIONS.values() for lib in libs})))


def installed_versions(libs: tuple[str, ...] = DESCRIBED_VERSIONS) -> dict[str, str]:
    """Installed versions of `libs` (package metadata); one not installed is left out."""
    from importlib import metadata

    found = {}
    for lib in libs:
        try:
            found[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return found


def archive_format(manifest: dict) -> str:
    """'onnx' or 'torchscript' as the manifest records it (older manifests: torchscript, the strict rule)."""
    return (manifest.get("model", {}).get("format") or manifest.get("validation", {}).get("format")
            or "torchscript")


def version_mismatches(manifest: dict, running: dict[str, str]) -> list[str]:
    """The checked libraries whose running major.minor differs from the export's, one line each."""
    fmt = archive_format(manifest)
    problems = []
    for lib in CHECKED_VERSIONS.get(fmt, CHECKED_VERSIONS["torchscript"]):
        built = manifest.get("versions", {}).get(lib)
        if not built:
            continue
        if lib not in running:
            if lib == "torch":  # the worker cannot run a TorchScript file without it
                problems.append(f"torch not installed, {fmt} archive exported with torch {built}")
            continue
        if _major_minor(built) != _major_minor(running[lib]):
            problems.append(f"{lib} {running[lib]} running, {fmt} archive exported with {built}: "
                            f"a {fmt} archive is served only by the {lib} major.minor it was exported with")
    return problems


def find_mismatches(model_dir: Path, manifest: dict, manifest_name: str = layout.MANIFEST) -> list[str]:
    """Every way the directory differs from the manifest, one readable line each."""
    model_dir = Path(model_dir)
    problems = []
    listed = manifest.get("files", {})
    if not listed:
        problems.append("the manifest lists no files")
    # A file slipped into the archive after the build (say, a module shadowing one of ours).
    for name in built_files(model_dir):
        if name != manifest_name and name not in listed:
            problems.append(f"file {name} is in the model directory but not in the manifest")
    for name, entry in listed.items():
        path = model_dir / name
        if not path.is_file():
            problems.append(f"file {name} is listed in the manifest but missing")
        elif (actual := sha256_file(path)) != entry["sha256"]:
            problems.append(f"file {name} sha256 {actual[:16]}... != manifest {entry['sha256'][:16]}...")
    problems += _imported_code_mismatches(listed)
    problems += version_mismatches(manifest, running_versions())
    return problems


def _imported_code_mismatches(listed: dict) -> list[str]:
    """The `handler` modules this process runs must be the archive's: a copy of the package
    elsewhere on sys.path (an old install, say) would otherwise serve unvalidated code."""
    prefix = layout.PACKAGE + "/"
    problems = []
    for name, entry in listed.items():
        if name.startswith(prefix):
            path = PACKAGE_DIR / name.removeprefix(prefix)
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                problems.append(f"module {name} imported from {PACKAGE_DIR} differs from the archive's")
    return problems


def verify_model_dir(model_dir: Path, manifest_name: str = layout.MANIFEST,
                     on_mismatch: str = "refuse") -> dict | None:
    """Check hashes and versions; raise IntegrityError (refuse) or log a warning (warn)."""
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_integrity_mismatch must be one of {ON_MISMATCH}, not {on_mismatch!r}")
    path = Path(model_dir) / manifest_name
    manifest = None
    if not path.is_file():
        problems = [f"manifest {manifest_name} is missing"]
    else:
        try:
            manifest = json.loads(path.read_text())
            problems = find_mismatches(Path(model_dir), manifest, manifest_name)
        except (ValueError, AttributeError, KeyError, TypeError) as exc:  # not our manifest's shape
            problems = [f"manifest {manifest_name} is unreadable ({type(exc).__name__}: {exc})"]
    if not problems:
        logger.info("Integrity check passed: %d files match %s", len(manifest["files"]), manifest_name)
        return manifest
    message = "Integrity check failed: " + "; ".join(problems)
    if on_mismatch == "refuse":
        logger.error("%s (on_integrity_mismatch=refuse: the model is not loaded)", message)
        raise IntegrityError(message)
    logger.warning("%s (on_integrity_mismatch=warn: loading anyway)", message)
    return manifest
