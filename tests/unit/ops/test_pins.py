"""The operator's pins (scripts/ops/pins.py): an archive runs only if its SHA-256 is the pinned one,
checked before TorchServe starts; the manifests handed to the workers bind them to what was checked.

The attacker's move is covered: change a file, recompute provenance.json, rebuild the .mar. The
archive is then consistent with its own manifest (the worker-side check alone passes it), and only
the pin from outside refuses it.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import pytest

from handler import integrity
from handler.integrity import sha256_file as sha256
from scripts.ops import pins
from scripts.ops.pins import PinError, check_pins
from tests.support.archives import rehashed_tampered
from tests.support.context import unpack


@pytest.fixture
def store(default_mar, tmp_path) -> Path:
    """A model store with the default archive as good.mar and its re-hashed tampering as bad.mar."""
    out = tmp_path / "store"
    out.mkdir()
    (out / "good.mar").write_bytes(default_mar.read_bytes())
    rehashed_tampered(default_mar, out / "bad.mar")
    return out


def test_rehashed_tampered_archive_passes_its_own_manifest_but_not_the_pin(store, tmp_path):
    # The worker-side check alone cannot see it: every file matches the recomputed manifest.
    model_dir = unpack(store / "bad.mar", tmp_path / "bad")
    assert integrity.file_mismatches(model_dir, integrity.read_manifest(model_dir)) == []
    good = sha256(store / "good.mar")
    with pytest.raises(PinError) as caught:
        check_pins(store, "m=bad.mar", {pins.PIN_ENV: f"bad.mar={good}"})
    message = str(caught.value)
    assert message.startswith("bad.mar: sha256 ") and sha256(store / "bad.mar") in message
    assert f"is not the pinned {good} (ARCHIVE_SHA256): not starting" in message


def test_pinned_archive_gives_the_workers_its_manifests(store, tmp_path):
    env = check_pins(store, "good=good.mar", {pins.PIN_ENV: sha256(store / "good.mar"),
                                               pins.REQUIRED_ENV: "1"})
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env[pins.REQUIRED_ENV] == "1"
    # The extracted archive passes the worker's check with that environment ...
    good_dir = unpack(store / "good.mar", tmp_path / "good")
    assert integrity.verify(good_dir, env)["files"]
    # ... and another archive's extracted copy (the store or the temp dir changed since) does not.
    bad_dir = unpack(store / "bad.mar", tmp_path / "bad")
    with pytest.raises(integrity.IntegrityError, match="is not a manifest the server checked at start"):
        integrity.verify(bad_dir, env)


def test_unpinned_archive_starts_with_one_line_unless_pins_are_required(store, caplog):
    with caplog.at_level(logging.WARNING, logger="scripts.ops.pins"):
        env = check_pins(store, "good=good.mar", {})
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["archive not pinned: good.mar"]
    assert pins.REQUIRED_ENV not in env and len(env[pins.MANIFESTS_ENV].split(",")) == 1
    with pytest.raises(PinError, match="good.mar: archive not pinned and ARCHIVE_PINS_REQUIRED=1"):
        check_pins(store, "good=good.mar", {pins.REQUIRED_ENV: "1"})
    with pytest.raises(PinError, match="bad.mar: archive not pinned"):  # every served archive
        check_pins(store, "good=good.mar,bad=bad.mar",
                   {pins.REQUIRED_ENV: "1", pins.PIN_ENV: f"good.mar={sha256(store / 'good.mar')}"})


def test_an_archive_without_our_manifests_runs_only_pinned(store):
    foreign = store / "foreign.mar"
    with zipfile.ZipFile(store / "good.mar") as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.infolist():
            if item.filename != integrity.MANIFEST:
                dst.writestr(item, src.read(item))
    with pytest.raises(PinError, match="foreign.mar: not an archive of this project .* runs only pinned"):
        check_pins(store, "f=foreign.mar", {})
    env = check_pins(store, "f=foreign.mar", {pins.PIN_ENV: sha256(foreign)})
    assert env[pins.MANIFESTS_ENV] == ""  # nothing for the workers to check it against
    with pytest.raises(PinError, match="is not the pinned"):
        check_pins(store, "f=foreign.mar", {pins.PIN_ENV: f"foreign.mar={sha256(store / 'good.mar')}"})


@pytest.mark.parametrize("pin, expected", [
    ("0" * 64, "one bare digest, but 2 archives are served"),
    ("good.mar=xyz", "the pin for good.mar is not a SHA-256"),
    ("good.mar=" + "0" * 64 + ",bad.mar", "'bad.mar' is not NAME.mar=HEX"),
    ("goood.mar=" + "0" * 64, "pins goood.mar, which is not served"),
])
def test_malformed_pins_are_refused(store, pin, expected):
    with pytest.raises(PinError, match=expected):
        check_pins(store, "good=good.mar,bad=bad.mar", {pins.PIN_ENV: pin})


def test_served_archives_read_load_models(store):
    assert pins.served_archives(store, "a=good.mar, b=bad.mar") == ["good.mar", "bad.mar"]
    assert pins.served_archives(store, "all") == ["bad.mar", "good.mar"]
    with pytest.raises(PinError, match="missing.mar: no such archive"):
        check_pins(store, "m=missing.mar", {})


def test_a_pin_is_case_insensitive_and_two_archives_take_two_pins(store):
    pinned = {name: sha256(store / name) for name in ("good.mar", "bad.mar")}
    env = check_pins(store, "good=good.mar,bad=bad.mar",
                     {pins.PIN_ENV: ",".join(f"{n}={d.upper()}" for n, d in pinned.items())})
    assert len(integrity.pinned_manifests(env)) == 2
