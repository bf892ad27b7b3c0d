"""Make torch-model-archiver's output byte-reproducible.

The archiver's .mar differs between two builds of the same inputs in three ways, none of them
in the content: `MAR-INF/MANIFEST.json` holds `createdOn` (the wall clock), every zip entry
carries its file's mtime, and the entry order is whatever `os.walk` returns. `normalize_mar`
rewrites the zip with sorted entries, one fixed timestamp (the manifest's build time, which is
SOURCE_DATE_EPOCH or the git commit time), fixed permissions and `createdOn` set to that same
time. The entries' bytes are copied unchanged, so every SHA-256 in provenance.json still holds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from handler.layout import ARCHIVER_MANIFEST as MAR_MANIFEST

ARCHIVER_TIME_FORMAT = "%d/%m/%Y %H:%M:%S"  # the format torch-model-archiver writes
ZIP_EPOCH = datetime(1980, 1, 1, tzinfo=UTC)  # the earliest time a zip entry can hold
FILE_MODE = 0o100644  # regular file, rw-r--r--
UNIX = 3  # zip "create_system": the same on every build host


def fixed_time(built_at: str) -> datetime:
    """The build time as UTC; the zip epoch when it is unknown or earlier than 1980."""
    try:
        when = datetime.fromisoformat(built_at)
    except (TypeError, ValueError):
        return ZIP_EPOCH
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return max(when, ZIP_EPOCH)


def normalized_mar_manifest(data: bytes, when: datetime) -> bytes:
    doc = json.loads(data)
    doc["createdOn"] = when.strftime(ARCHIVER_TIME_FORMAT)
    return json.dumps(doc, indent=2).encode()


def normalize_mar(mar: Path, built_at: str) -> Path:
    """Rewrite a .mar (zip) deterministically in place; returns its path."""
    mar = Path(mar)
    when = fixed_time(built_at)
    date_time = when.timetuple()[:6]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{mar.name}.", dir=mar.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(mar) as src, zipfile.ZipFile(tmp_name, "w") as dst:
            for entry in sorted(src.infolist(), key=lambda e: e.filename):
                if entry.is_dir():
                    continue
                info = zipfile.ZipInfo(entry.filename, date_time=date_time)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = FILE_MODE << 16
                info.create_system = UNIX
                if entry.filename == MAR_MANIFEST:
                    dst.writestr(info, normalized_mar_manifest(src.read(entry), when))
                    continue
                info.file_size = entry.file_size  # lets zipfile pick zip64 for huge models
                with src.open(entry) as fin, dst.open(info, "w") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp_name, mar)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return mar


def normalize_model_dir(model_dir: Path, built_at: str) -> Path:
    """The --archive-format no-archive case: only createdOn varies between builds."""
    manifest = Path(model_dir) / MAR_MANIFEST
    if manifest.is_file():
        manifest.write_bytes(normalized_mar_manifest(manifest.read_bytes(), fixed_time(built_at)))
    return Path(model_dir)


def make_reproducible(archive: Path, built_at: str) -> Path:
    """Normalize what the archiver wrote; a .tar.gz is left as is (tar and gzip headers hold
    mtimes too; only the content hashes of a tgz build are reproducible)."""
    archive = Path(archive)
    if archive.is_dir():
        return normalize_model_dir(archive, built_at)
    if zipfile.is_zipfile(archive):
        return normalize_mar(archive, built_at)
    return archive
