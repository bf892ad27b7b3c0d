"""The worker's first check, run before any other module of the archive: the model directory holds
exactly the files its manifest lists, with their SHA-256, and that manifest is the one the server
checked against the operator's pin before it started.

Standard library only, and nothing from the `handler` package: `torchserve_entry.py` runs this
file's source before importing `handler` (whose `__init__.py` is archive code too), so the names
it needs from handler/layout.py are repeated here (tests/unit/handler/test_provenance.py holds them equal).

What is refused, one line each:
- a listed file missing or with another SHA-256;
- any file the manifest does not list: a module slipped in, a `.pyc`, anything in a `__pycache__`
  folder (Python would load such bytecode instead of the verified source). The archiver's own
  `MAR-INF/MANIFEST.json` is let through: the archive pin covers it, and the manifest pin the
  server hands its workers (ARCHIVE_MANIFESTS) names its SHA-256 too. (One more, the entry's own
  bytecode where the worker writes bytecode: verify_entry says why that is safe);
- a manifest that is not the one pinned: `ARCHIVE_MANIFESTS` holds `PROVENANCE_SHA256:MAR_INF_SHA256`
  pairs, one per archive the server checked at start (scripts/ops/pins.py). Without it the worker
  trusts the manifest it finds, unless `ARCHIVE_PINS_REQUIRED=1`.

There is no "warn" mode: a mismatch always refuses the load. Whoever can rewrite the archive can
rewrite its manifest too, so the trust comes from outside it (the pins), never from its own files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

MANIFEST = "provenance.json"  # handler/layout.py MANIFEST
ARCHIVER_MANIFEST = "MAR-INF/MANIFEST.json"  # handler/layout.py ARCHIVER_MANIFEST
BYTECODE_DIR = "__pycache__"
MANIFESTS_ENV = "ARCHIVE_MANIFESTS"
REQUIRED_ENV = "ARCHIVE_PINS_REQUIRED"
CHUNK = 1 << 20


class IntegrityError(RuntimeError):
    """The model directory does not match its manifest, or the manifest is not the pinned one."""


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
    """Hex SHA-256 of a file, streamed; `on_progress(done)` after each chunk."""
    with open(path, "rb") as fh:
        return sha256_stream(fh, on_progress)[0]


def present_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of every file under `root`, and of every `__pycache__` folder (an
    empty one too: nothing of ours writes one), sorted."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() or (path.is_dir() and path.name == BYTECODE_DIR):
            yield path.relative_to(root).as_posix()


def required(environ: Mapping[str, str]) -> bool:
    """ARCHIVE_PINS_REQUIRED set to 1/true: no pin, no start (the container image sets it)."""
    return environ.get(REQUIRED_ENV, "").strip().lower() in ("1", "true")


def pinned_manifests(environ: Mapping[str, str]) -> set[tuple[str, str]] | None:
    """The (provenance.json, MAR-INF/MANIFEST.json) SHA-256 pairs of ARCHIVE_MANIFESTS; None unset."""
    text = environ.get(MANIFESTS_ENV)
    if text is None:
        return None
    pairs = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        manifest, _, archiver = item.partition(":")
        if not (_is_sha256(manifest) and _is_sha256(archiver)):
            raise IntegrityError(f"{MANIFESTS_ENV}: {item!r} is not PROVENANCE_SHA256:MAR_INF_SHA256")
        pairs.add((manifest.lower(), archiver.lower()))
    return pairs


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def file_mismatches(model_dir: Path, manifest: dict, allowed: frozenset[str] = frozenset()) -> list[str]:
    """Every way the directory's files differ from the manifest's list, one readable line each
    (`allowed`: paths that may be present unlisted, see verify_entry)."""
    model_dir = Path(model_dir)
    listed = manifest.get("files", {})
    problems = [] if listed else ["the manifest lists no files"]
    for name in present_files(model_dir):
        if name in (MANIFEST, ARCHIVER_MANIFEST) or name in listed or name in allowed:
            continue
        if name.endswith(".pyc") or BYTECODE_DIR in name.split("/"):
            problems.append(f"bytecode {name} is in the model directory: Python would run it "
                            "instead of the verified source")
        else:
            problems.append(f"file {name} is in the model directory but not in the manifest")
    for name, entry in listed.items():
        path = model_dir / name
        if not path.is_file():
            problems.append(f"file {name} is listed in the manifest but missing")
        elif (actual := sha256_file(path)) != entry["sha256"]:
            problems.append(f"file {name} sha256 {actual[:16]}... != manifest {entry['sha256'][:16]}...")
    return problems


def pin_mismatches(model_dir: Path, environ: Mapping[str, str]) -> list[str]:
    """[] when the directory's provenance.json and MAR-INF/MANIFEST.json are a pinned pair (or no
    pair is given and none is required)."""
    pairs = pinned_manifests(environ)
    if pairs is None:
        return [f"no {MANIFESTS_ENV} given and {REQUIRED_ENV}=1: the manifest is not pinned"] \
            if required(environ) else []
    archiver = Path(model_dir) / ARCHIVER_MANIFEST
    found = (sha256_file(Path(model_dir) / MANIFEST),
             sha256_file(archiver) if archiver.is_file() else "missing")
    if found in pairs:
        return []
    return [f"{MANIFEST} sha256 {found[0][:16]}... with {ARCHIVER_MANIFEST} {found[1][:16]}... is not "
            f"a manifest the server checked at start ({MANIFESTS_ENV})"]


def read_manifest(model_dir: Path) -> dict:
    """The model directory's provenance.json; IntegrityError when missing or not our manifest's shape."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"Integrity check failed: manifest {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
        manifest["files"].items()
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise IntegrityError(f"Integrity check failed: manifest {MANIFEST} is unreadable "
                             f"({type(exc).__name__}: {exc})") from exc
    return manifest


def verify(model_dir: Path, environ: Mapping[str, str] | None = None,
           allowed: frozenset[str] = frozenset()) -> dict:
    """The manifest of a model directory whose files and manifest pin all hold; else IntegrityError
    naming every difference."""
    environ = os.environ if environ is None else environ
    manifest = read_manifest(model_dir)
    try:
        problems = pin_mismatches(model_dir, environ) + file_mismatches(model_dir, manifest, allowed)
    except (AttributeError, KeyError, TypeError) as exc:  # a files entry not of our shape
        problems = [f"manifest {MANIFEST} is unreadable ({type(exc).__name__}: {exc})"]
    if problems:
        raise IntegrityError("Integrity check failed: " + "; ".join(problems))
    return manifest


def verify_entry(entry_file: str, dont_write_bytecode: bool,
                 environ: Mapping[str, str] | None = None) -> dict:
    """The check `torchserve_entry.py` runs at import, on the directory it was imported from.

    TorchServe 0.12 starts each worker with the model directory as its working directory and on
    PYTHONPATH, and imports the entry module by name: the entry's own `__file__` is the one place
    that is certainly the code being run, so its folder is what is verified.

    `dont_write_bytecode` is the worker's `sys.flags.dont_write_bytecode` (PYTHONDONTWRITEBYTECODE=1,
    which scripts/ops/pins.py hands the workers). Without it Python has just written
    `__pycache__/torchserve_entry.<tag>.pyc` beside the entry, before the entry ran. That one file
    is let through when it is exactly what Python writes for this source (a timestamp header of
    this interpreter holding the source's mtime and size): it is only ever loaded in place of the
    entry itself, before any check can run, so refusing it would protect nothing and fail every
    worker. With ARCHIVE_PINS_REQUIRED=1 no bytecode at all is let through."""
    environ = os.environ if environ is None else environ
    entry = Path(entry_file).resolve()
    allowed: frozenset[str] = frozenset()
    if not dont_write_bytecode:
        if required(environ):
            raise IntegrityError(f"Integrity check failed: this worker writes bytecode into the model "
                                 f"directory and {REQUIRED_ENV}=1; start TorchServe with "
                                 "PYTHONDONTWRITEBYTECODE=1")
        cached = _entry_bytecode(entry)
        if cached is not None:
            allowed = frozenset({BYTECODE_DIR, f"{BYTECODE_DIR}/{cached.name}"})
    return verify(entry.parent, environ, allowed)


def _entry_bytecode(entry: Path) -> Path | None:
    """The entry's bytecode file when it is what this interpreter's import writes for the entry's
    source (magic number, timestamp flags, the source's mtime and size), else None."""
    cached = Path(importlib.util.cache_from_source(str(entry)))
    if cached.parent != entry.parent / BYTECODE_DIR or not cached.is_file():
        return None
    with open(cached, "rb") as fh:
        header = fh.read(16)
    stat = entry.stat()
    expected = (importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
                + (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                + (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little"))
    return cached if header == expected and sys.implementation.cache_tag in cached.name else None
