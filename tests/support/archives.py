"""Archives rebuilt for the tests: entries changed or added (the manifest recomputed, as whoever
rewrites an archive would), and entries only a local-header zip reader sees."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

from handler import integrity, layout

_EOCD = struct.Struct("<4s4H2LH")


def rebuilt_mar(src: Path, dst: Path, changes: dict[str, bytes],
                hidden: dict[str, bytes] | None = None) -> Path:
    """`src` with `changes` swapped in or added, listed in a recomputed provenance.json, written
    to `dst`; `hidden` entries are written too but left out of the central directory."""
    with zipfile.ZipFile(src) as zin:
        entries = {e.filename: zin.read(e) for e in zin.infolist() if not e.is_dir()}
    entries.update(changes)
    manifest = json.loads(entries[integrity.MANIFEST])
    for name, data in changes.items():
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    entries[integrity.MANIFEST] = json.dumps(manifest, indent=2).encode()
    entries.update(hidden or {})
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in sorted(entries.items()):
            zout.writestr(name, data)
    if hidden:
        dst.write_bytes(without_central_entries(dst.read_bytes(), set(hidden)))
    return dst


def without_central_entries(data: bytes, names: set[str]) -> bytes:
    """The zip `data` with `names` removed from its central directory only: their local headers
    and data stay where they are, seen by Java's ZipInputStream, not by Python's zipfile."""
    at_eocd = data.rindex(b"PK\x05\x06")
    sig, disk, cd_disk, _, _, cd_size, cd_offset, comment = _EOCD.unpack(data[at_eocd:at_eocd + _EOCD.size])
    kept, at = [], cd_offset
    while at < cd_offset + cd_size:
        name_len, extra_len, comment_len = struct.unpack("<3H", data[at + 28:at + 34])
        end = at + 46 + name_len + extra_len + comment_len
        if data[at + 46:at + 46 + name_len].decode() not in names:
            kept.append(data[at:end])
        at = end
    directory = b"".join(kept)
    eocd = _EOCD.pack(sig, disk, cd_disk, len(kept), len(kept), len(directory), cd_offset, comment)
    return data[:cd_offset] + directory + eocd + data[at_eocd + _EOCD.size:]


TAMPERED_INDEX = "282"  # tiger cat: in the cat photo's top 5


def rewrite_mar(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy an archive, swapping (or adding) the given entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for entry in zin.infolist():
            if entry.filename not in replace:
                zout.writestr(entry, zin.read(entry))
        for name, data in replace.items():
            zout.writestr(name, data)
    return dst


def tampered_labels(mar: Path) -> bytes:
    with zipfile.ZipFile(mar) as zf:
        labels = json.loads(zf.read("index_to_name.json"))
    labels[TAMPERED_INDEX] = "tampered " + labels[TAMPERED_INDEX]
    return json.dumps(labels, indent=1, sort_keys=True).encode()


def rehashed_tampered(src: Path, dst: Path) -> Path:
    """`src` with one label changed AND its provenance.json recomputed, rebuilt as a .mar."""
    with zipfile.ZipFile(src) as zin:
        entries = {e.filename: zin.read(e) for e in zin.infolist() if not e.is_dir()}
    labels = json.loads(entries[layout.LABELS])
    labels["0"] = "tampered " + labels["0"]
    entries[layout.LABELS] = json.dumps(labels).encode()
    manifest = json.loads(entries[integrity.MANIFEST])
    manifest["files"][layout.LABELS] = {"sha256": hashlib.sha256(entries[layout.LABELS]).hexdigest(),
                                 "bytes": len(entries[layout.LABELS])}
    entries[integrity.MANIFEST] = json.dumps(manifest, indent=2).encode()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in sorted(entries.items()):
            zout.writestr(name, data)
    return dst
