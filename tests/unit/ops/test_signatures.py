"""Archive signatures (scripts/ops/signature.py), checked before TorchServe starts
(scripts/ops/pins.py): with ARCHIVE_VERIFY_KEY set, an archive whose NAME.mar.sig verifies with
that key over its exact bytes counts as pinned. Refused: an unsigned archive, a tampered one (its
own manifest recomputed, so only the signature catches it), one signed with another key, one
replaced between verifying and hashing; each named, and `serve start` says it in one line and
exits 2. An unusable verify key and an Ed25519 signing key are named; without a key nothing
imports model_signing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from handler import integrity
from scripts import repo
from scripts.ops import pins, signature
from scripts.ops.pins import PinError, check_pins
from tests.support.archives import rehashed_tampered

VERIFY = signature.VERIFY_KEY_ENV


def signed_store(default_mar: Path, out: Path, key: Path) -> Path:
    """A model store holding the default archive as good.mar, signed with `key`."""
    out.mkdir()
    (out / "good.mar").write_bytes(default_mar.read_bytes())
    signature.sign(out / "good.mar", key)
    return out


def refusal(store: Path, case: str, signing_keys: dict) -> None:
    """Turn good.mar of `store` into `case`: tampered (signature kept), unsigned, or other-key."""
    mar = store / "good.mar"
    if case == "tampered":
        rehashed_tampered(mar, store / "tmp.mar").replace(mar)
    elif case == "unsigned":
        signature.signature_path(mar).unlink()
    else:
        signature.sign(mar, signing_keys["other"][0])


REFUSALS = [("tampered", "good.mar: its bytes are not the ones signed (tampered with) "
                         "(ARCHIVE_VERIFY_KEY): not starting"),
            ("unsigned", "good.mar: unsigned (no good.mar.sig beside it) and ARCHIVE_VERIFY_KEY is set"),
            ("other-key", "good.mar: signed with another key (ARCHIVE_VERIFY_KEY): not starting")]


def test_a_signed_archive_counts_as_pinned(default_mar, tmp_path, signing_keys):
    store = signed_store(default_mar, tmp_path / "store", signing_keys["ours"][0])
    env = check_pins(store, "good.mar", {VERIFY: str(signing_keys["ours"][1]), pins.REQUIRED_ENV: "1"})
    assert len(integrity.pinned_manifests(env)) == 1
    assert env[pins.REQUIRED_ENV] == "1"


@pytest.mark.parametrize(("case", "line"), REFUSALS)
def test_a_refused_archive_is_named_before_torchserve_starts(default_mar, tmp_path, signing_keys, case, line):
    store = signed_store(default_mar, tmp_path / "store", signing_keys["ours"][0])
    refusal(store, case, signing_keys)
    with pytest.raises(PinError) as caught:
        check_pins(store, "good.mar", {VERIFY: str(signing_keys["ours"][1])})
    assert str(caught.value).startswith(line)


@pytest.mark.parametrize(("case", "line"), REFUSALS)
def test_serve_refuses_with_one_line_and_exit_2(default_mar, tmp_path, signing_keys, case, line):
    store = signed_store(default_mar, tmp_path / "store", signing_keys["ours"][0])
    refusal(store, case, signing_keys)
    out = subprocess.run([sys.executable, "-m", "scripts.ops.serve", "start", "--model", "good",
                          "--model-store", str(store), "--workdir", str(tmp_path / "run"), "--timeout", "5"],
                         cwd=repo.ROOT, capture_output=True, text=True, timeout=60,
                         env={**_environ(), VERIFY: str(signing_keys["ours"][1])})
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith(f"error: {line}"), out.stderr


def _environ() -> dict[str, str]:
    """This process's environment without the operator's pins (the signature alone decides)."""
    return {k: v for k, v in os.environ.items() if k not in (pins.PIN_ENV, pins.REQUIRED_ENV)}


@pytest.mark.parametrize(("key", "line"), [
    ("missing", "cannot read a PEM public key from it"),
    ("ed25519", "not an elliptic-curve public key on P-256, P-384 or P-521"),
    ("private", "cannot read a PEM public key from it")])
def test_an_unusable_verify_key_is_named(default_mar, tmp_path, signing_keys, key, line):
    store = signed_store(default_mar, tmp_path / "store", signing_keys["ours"][0])
    path = {"missing": tmp_path / "nope.pub", "ed25519": signing_keys["ed25519"][1],
            "private": signing_keys["ours"][0]}[key]
    with pytest.raises(PinError, match=f"^ARCHIVE_VERIFY_KEY={path}: {line}"):
        check_pins(store, "good.mar", {VERIFY: str(path)})


def test_an_archive_replaced_between_verifying_and_hashing_is_refused(default_mar, tmp_path, signing_keys,
                                                                      monkeypatch):
    store = signed_store(default_mar, tmp_path / "store", signing_keys["ours"][0])
    monkeypatch.setattr(signature, "signed_digest", lambda path, config: "0" * 64)
    with pytest.raises(PinError, match="is not the one its signature vouches for"):
        check_pins(store, "good.mar", {VERIFY: str(signing_keys["ours"][1])})


def test_an_ed25519_signing_key_is_named_before_signing(default_mar, tmp_path, signing_keys):
    mar = tmp_path / "good.mar"
    mar.write_bytes(default_mar.read_bytes())
    with pytest.raises(signature.SignatureError, match="elliptic-curve private key: P-256"):
        signature.sign(mar, signing_keys["ed25519"][0])
    assert not signature.signature_path(mar).exists()


def test_without_a_key_nothing_imports_model_signing(default_mar):
    code = ("import sys; from scripts.ops import pins; "
            f"pins.check_pins({str(default_mar.parent)!r}, {default_mar.name!r}, {{}}); "
            "print(sorted(m for m in ('model_signing', 'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo.ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
