"""Archive signatures (scripts/ops/signature.py): with ARCHIVE_VERIFY_KEY set, an archive runs only
if NAME.mar.sig beside it verifies with that key over its exact bytes, checked before TorchServe
starts (scripts/ops/pins.py). Refused: an unsigned archive, a tampered one (its own manifest
recomputed, so only the signature catches it), one signed with another key; each with one line
and exit 2. A signed archive counts as pinned, loads and serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from handler import integrity
from scripts import repo
from scripts.ops import pins, signature
from scripts.ops.pins import PinError, check_pins
from scripts.packaging import package
from tests.support.servers import MODEL, serving
from tests.test_pins import rehashed_tampered

VERIFY = signature.VERIFY_KEY_ENV


def write_key_pair(private_key, out: Path) -> tuple[Path, Path]:
    """(private PEM, public PEM) of `private_key` under `out`."""
    key, pub = out.with_suffix(".key"), out.with_suffix(".pub")
    key.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    pub.write_bytes(private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("keys")
    return {"ours": write_key_pair(ec.generate_private_key(ec.SECP256R1()), out / "ours"),
            "other": write_key_pair(ec.generate_private_key(ec.SECP256R1()), out / "other"),
            "ed25519": write_key_pair(ed25519.Ed25519PrivateKey.generate(), out / "ed25519")}


@pytest.mark.e2e
def test_an_archive_signed_at_packaging_loads_and_serves(tmp_path, keys, photos, monkeypatch):
    store = tmp_path / "store"
    key = str(keys["ours"][0])
    assert package.main(["--arch", MODEL, "--export-path", str(store), "--sign-key", key]) == 0
    assert signature.signature_path(store / f"{MODEL}.mar").is_file()
    monkeypatch.setenv(VERIFY, str(keys["ours"][1]))
    monkeypatch.setenv(pins.REQUIRED_ENV, "1")  # no ARCHIVE_SHA256: the signature alone lets it run
    monkeypatch.delenv(pins.PIN_ENV, raising=False)
    with serving(tmp_path / "run", store) as server:
        resp = server.client.predict(MODEL, photos["cat.jpg"].read_bytes())
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"]
