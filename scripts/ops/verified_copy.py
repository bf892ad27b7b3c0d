"""The copy of each archive that TorchServe loads: verified and unpacked by us, before it starts.

TorchServe would re-open each .mar seconds after `pins.py` hashed it and unpack it with Java's
`ZipInputStream`, which reads the local headers, where Python's `zipfile` reads the central
directory: a file swapped in between was never checked, and an entry only the local headers
hold was never seen. And a worker runs code from the unpacked folder before our first check
(`handler/integrity.py`) can: the folder is on the worker's PYTHONPATH, so a `sitecustomize.py`,
or a module named like one of the standard library's or an installed package's, runs as the
interpreter starts.

So `serve.start` hands TorchServe a folder, never a .mar: each archive is copied once into the
server's private working directory while it is hashed (the bytes pinned, signed and unpacked are
those of that one copy), checked as a zip (`zip_problems`: every entry's local header agrees
with the central directory, and the entries fill the file with nothing hidden between them),
checked by name (`unsafe_name`: no path out of the folder, no link, nothing Python would import
in place of another module), unpacked into `WORKDIR/models/STEM/` (0700), and the unpacked files
held to the archive's manifest by the worker's own rule (`integrity.file_mismatches`). TorchServe
loads a folder of the model store in place (it links to it from its temp dir).

Standard library only, like pins.py and handler/integrity.py: it runs in the runtime image.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import struct
import sys
import zipfile
from pathlib import Path
from typing import BinaryIO

from handler import integrity

# The only top-level modules an archive may hold that the server's environment can import too:
# the handler package it ships (first on the worker's path by design).
OWN_MODULES = frozenset({"handler"})
# Modules the interpreter imports by itself at start-up from any folder on its path.
STARTUP_MODULES = frozenset({"sitecustomize", "usercustomize"})
MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
_HAS_DESCRIPTOR = 0x08


class UnsafeArchive(ValueError):
    """The archive cannot be unpacked as it is: the message names the entry and why."""


def zip_problems(fh: BinaryIO) -> list[str]:
    """How the zip's local headers disagree with its central directory, one line each ([] when they
    agree): each central entry's local header must name the same file with the same method and
    sizes, and the entries must follow each other from the first byte to the central directory
    with no gap (where an entry only a local-header reader sees could lie)."""
    try:
        zf = zipfile.ZipFile(fh)
    except zipfile.BadZipFile as exc:
        return [f"not a zip file ({exc})"]
    infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
    problems = []
    if len({i.filename for i in infos}) != len(infos):
        problems.append("the central directory names an entry twice")
    offset = 0
    for info in infos:
        if info.header_offset != offset:
            problems.append(
                f"{info.filename} starts at byte {info.header_offset}, the entry before it ends at "
                f"{offset}: what lies between belongs to no entry of the directory"
                if info.header_offset > offset else f"{info.filename} overlaps the entry before it")
        offset, problem = _local_entry_end(fh, info)
        if problem:
            problems.append(problem)
            return problems
    if offset != zf.start_dir:
        problems.append(f"{zf.start_dir - offset} bytes between the last entry and the central "
                        "directory belong to no entry of it")
    return problems


def _local_entry_end(fh: BinaryIO, info: zipfile.ZipInfo) -> tuple[int, str | None]:
    """(where the entry's data, and its data descriptor, end; a problem or None)."""
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size:
        return 0, f"{info.filename}: its local header is cut short"
    (signature, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = _LOCAL_HEADER.unpack(raw)
    name = fh.read(name_len)
    if signature != _LOCAL_SIGNATURE or name.decode("utf-8", "replace") != info.filename:
        return 0, f"{info.filename}: its local header names {name.decode('utf-8', 'replace')!r}"
    if method != info.compress_type:
        return 0, (f"{info.filename}: compression {method} in its local header, "
                   f"{info.compress_type} in the directory")
    end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
    if flags & _HAS_DESCRIPTOR:
        fh.seek(end)
        signed = fh.read(4) == _DESCRIPTOR_SIGNATURE
        end += (4 if signed else 0) + (20 if info.file_size >= 0xFFFFFFFF else 12)  # zip64: 8-byte sizes
    elif (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size) and csize != 0xFFFFFFFF:
        return 0, f"{info.filename}: its local header's sizes or CRC differ from the directory's"
    return end, None


def unsafe_name(name: str, is_link: bool = False) -> str | None:
    """Why an archive entry may not be unpacked into a worker's model folder, or None."""
    parts = name.split("/")
    if is_link:
        return "a symbolic link"
    if name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts or ":" in parts[0]:
        return "a path out of the model folder"
    # A .pth file is harmless here: the interpreter reads them in site-packages folders only,
    # never in a PYTHONPATH folder (weights.pth is the eager format's state dict).
    top = parts[0]
    module = top if len(parts) > 1 else _module_name(top)
    if module is None or not module.isidentifier():
        return None
    if module in STARTUP_MODULES:
        return f"module {module}, which the interpreter runs at start-up before any check"
    if module in sys.stdlib_module_names:
        return f"module {module}, which would replace the standard library's in every worker"
    if module not in OWN_MODULES and _importable(module):
        return f"module {module}, which would replace the installed one in every worker"
    return None


def _module_name(filename: str) -> str | None:
    for suffix in MODULE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].split(".")[0]
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def copy_and_hash(source: Path, dest: Path) -> str:
    """Copy `source` to `dest` (created 0600) through one open, returning the SHA-256 of the bytes
    copied: whatever happens to `source` afterwards, `dest` holds exactly the bytes hashed."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
        digest, _ = integrity.sha256_stream(_Tee(src, out.write))
    return digest


class _Tee:
    """A readable stream that hands every chunk read to `sink` too."""

    def __init__(self, stream: BinaryIO, sink) -> None:
        self.stream, self.sink = stream, sink

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        if chunk:
            self.sink(chunk)
        return chunk


def unpack(archive: Path, dest: Path, manifest: bool = True) -> None:
    """Unpack a private copy of an archive into the new folder `dest` (0700) after the checks
    above, then hold every unpacked file to the archive's manifest (`manifest=False`: an archive
    not of this project, which has none and runs only pinned). UnsafeArchive otherwise
    (integrity.IntegrityError for files that differ from the manifest)."""
    with open(archive, "rb") as fh:
        if problems := zip_problems(fh):
            raise UnsafeArchive(f"{archive.name}: its local headers and central directory disagree "
                                f"(a zip reader of either kind would see other files): {'; '.join(problems)}")
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            for info in zf.infolist():
                is_link = stat.S_ISLNK(info.external_attr >> 16)
                if (why := unsafe_name(info.filename, is_link)) is not None:
                    raise UnsafeArchive(f"{archive.name}: refused before anything of it runs: "
                                        f"{info.filename} is {why}")
            dest.mkdir(mode=0o700)
            for info in zf.infolist():
                _extract(zf, info, dest)
    if manifest and (problems := integrity.file_mismatches(dest, integrity.read_manifest(dest))):
        raise integrity.IntegrityError(f"{archive.name}: " + "; ".join(problems))


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    target = dest.joinpath(*info.filename.rstrip("/").split("/"))
    if info.is_dir():
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        return
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with zf.open(info) as src, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out, integrity.CHUNK)


def fresh_store(path: Path) -> Path:
    """An empty private folder for the server's verified copies (what a previous start left is
    removed: every start unpacks anew)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700, parents=True)
    return path
