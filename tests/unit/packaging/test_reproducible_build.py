"""Reproducible builds: the same inputs packaged twice give a byte-identical .mar."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scripts.packaging import manifest
from scripts.packaging.reproducible import (
    ARCHIVER_TIME_FORMAT,
    MAR_MANIFEST,
    ZIP_EPOCH,
    fixed_time,
    make_reproducible,
)
from tests.support.servers import ROOT

BUILT_AT = "2026-03-01T12:34:56+02:00"


def write_zip(path: Path, entries: list[tuple[str, bytes, tuple, int]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, date_time, mode in entries:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def archiver_manifest(created_on: str) -> bytes:
    return json.dumps({"createdOn": created_on, "model": {"modelName": "m"}}).encode()


def test_normalize_makes_differently_written_archives_identical(tmp_path):
    model, labels = b"\x00weights" * 1000, b'{"0": "cat"}'
    a = write_zip(tmp_path / "a.mar", [
        ("model.pt", model, (2026, 1, 1, 10, 0, 0), 0o100600),
        ("index_to_name.json", labels, (2026, 1, 1, 10, 0, 2), 0o100644),
        (MAR_MANIFEST, archiver_manifest("01/01/2026 10:00:03"), (2026, 1, 1, 10, 0, 3), 0o100600)])
    b = write_zip(tmp_path / "b.mar", [  # other order, other times, other modes, other createdOn
        (MAR_MANIFEST, archiver_manifest("02/01/2026 11:11:11"), (2026, 1, 2, 11, 11, 10), 0o100644),
        ("index_to_name.json", labels, (2026, 1, 2, 11, 11, 8), 0o100664),
        ("model.pt", model, (2026, 1, 2, 11, 11, 6), 0o100644)])
    assert a.read_bytes() != b.read_bytes()
    for mar in (a, b):
        make_reproducible(mar, BUILT_AT)
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == sorted(i.filename for i in infos)
        assert {i.date_time for i in infos} == {(2026, 3, 1, 10, 34, 56)}  # UTC
        assert {i.external_attr >> 16 for i in infos} == {0o100644}
        assert zf.read("model.pt") == model and zf.read("index_to_name.json") == labels
        assert json.loads(zf.read(MAR_MANIFEST))["createdOn"] == "01/03/2026 10:34:56"


def test_fixed_time_falls_back_to_the_zip_epoch():
    assert fixed_time("unknown") == ZIP_EPOCH
    assert fixed_time("1970-01-01T00:00:00+00:00") == ZIP_EPOCH
    assert fixed_time("2026-03-01T10:34:56").strftime(ARCHIVER_TIME_FORMAT) == "01/03/2026 10:34:56"


def test_no_archive_directory_gets_a_fixed_created_on(tmp_path):
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / MAR_MANIFEST).write_bytes(archiver_manifest("24/11/2026 10:40:03"))
    make_reproducible(tmp_path, BUILT_AT)
    assert json.loads((tmp_path / MAR_MANIFEST).read_text())["createdOn"] == "01/03/2026 10:34:56"


def test_build_time_is_source_date_epoch_else_the_commit_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert manifest.build_time("2026-01-01T00:00:00+00:00") == "2023-11-14T22:13:20+00:00"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert manifest.build_time("2026-01-01T00:00:00+00:00") == "2026-01-01T00:00:00+00:00"
    commit, when = manifest.git_commit()
    assert len(commit.removesuffix("-dirty")) == 40 and fixed_time(when) > ZIP_EPOCH


def build(export_dir: Path) -> Path:
    """One packaging run in its own process, as `make package` does it."""
    cmd = [sys.executable, "-m", "scripts.packaging.package", "--model-name", "lite0_repro",
           "--export-path", str(export_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return export_dir / "lite0_repro.mar"


@pytest.mark.slow
def test_two_builds_of_the_same_inputs_are_byte_identical(tmp_path):
    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    a, b = first.read_bytes(), second.read_bytes()
    if a != b:  # name what differs, so a failure says which entry is not reproducible
        with zipfile.ZipFile(first) as za, zipfile.ZipFile(second) as zb:
            diff = [(x.filename, x.date_time, y.filename, y.date_time) for x, y in
                    zip(za.infolist(), zb.infolist())
                    if (x.filename, x.date_time, x.CRC) != (y.filename, y.date_time, y.CRC)]
        pytest.fail(f"builds differ: {hashlib.sha256(a).hexdigest()[:16]} vs "
                    f"{hashlib.sha256(b).hexdigest()[:16]}; differing entries {diff}")
    proc = subprocess.run([sys.executable, "-m", "scripts.ops.inspect_mar", str(first),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["integrity"]["ok"] and info["validation"]["passed"]
    assert "export_seconds" not in info["validation"]  # timings would break reproducibility
    with zipfile.ZipFile(first) as zf:
        assert json.loads(zf.read(MAR_MANIFEST))["createdOn"] == \
            fixed_time(info["build"]["built_at"]).strftime(ARCHIVER_TIME_FORMAT)
