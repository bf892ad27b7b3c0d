"""The deployed model is the validated one: the manifest check at load, the inspector, tampering.

Unit tests run the check on an unpacked archive, and the worker's first check (the entry module
run as TorchServe imports it) on planted bytecode; the end-to-end test serves, with the pins of
scripts/ops/pins.py required, an untouched .mar and one with a changed labels file (refused).
The operator's archive pins themselves: tests/test_pins.py.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from handler import integrity, layout, provenance, settings
from handler.provenance import IntegrityError, find_mismatches, verify_model_dir
from scripts.ops import inspect_mar, pins, serve
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


@pytest.fixture(scope="module")
def fresh_mar(tmp_path_factory) -> Path:
    """An archive built by the code under test (not a possibly older model_store/ build)."""
    from scripts.packaging import package

    return package.package(model_name="lite0_prov", export_dir=tmp_path_factory.mktemp("prov_store"))


@pytest.mark.e2e
def test_tampered_archive_is_refused_before_anything_runs_untouched_loads(fresh_mar, photos, tmp_path):
    # Served the way `serve start` serves in the image: every archive pinned, pins required.
    # tampered.mar is pinned as it is (the operator's pin is not what this tests): its verified
    # copy is held to its own manifest at start (scripts/ops/verified_copy.py), so it is refused,
    # the changed file named, before any process is started; the untouched one, served alone,
    # loads, and its workers' own check passes on the copy TorchServe loads.
    store = tmp_path / "store"
    store.mkdir()
    (store / "good.mar").write_bytes(fresh_mar.read_bytes())
    rewrite_mar(fresh_mar, store / "tampered.mar", {"index_to_name.json": tampered_labels(fresh_mar)})
    operator = {pins.PIN_ENV: ",".join(f"{name}={provenance.sha256_file(store / name)}"
                                       for name in ("good.mar", "tampered.mar")),
                pins.REQUIRED_ENV: "1"}
    workdir = tmp_path / "ts"
    with pytest.raises(pins.PinError) as refused:
        serve.start(workdir, models="good=good.mar,tampered=tampered.mar", ports=serve.free_ports(),
                    model_store=store, env=operator)
    reason = str(refused.value)
    assert reason.startswith("tampered.mar: file index_to_name.json sha256") and ";" not in reason, reason
    assert not (workdir / "logs").exists()  # TorchServe never started
    operator[pins.PIN_ENV] = f"good.mar={provenance.sha256_file(store / 'good.mar')}"
    server = serve.start(workdir, models="good=good.mar", ports=serve.free_ports(), model_store=store,
                         env=operator)
    try:
        serve.wait_ready(server, "good", min_ready=2, timeout=180, progress=False)
        good = server.client.predict("good", photos["cat.jpg"].read_bytes())
        assert good.status_code == 200, good.text
        assert all(not p["label"].startswith("tampered") for p in good.json()["predictions"])
    finally:
        serve.stop(workdir, grace=5)
    text = (workdir / "logs" / "model_log.log").read_text()
    assert "Integrity check passed" in text and "writes bytecode" not in text
    assert not list(workdir.rglob("__pycache__"))  # nothing written into the model folders
