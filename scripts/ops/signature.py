"""Archive signatures: NAME.mar.sig beside NAME.mar, made at packaging with a private key and
verified before TorchServe starts with the public key named by ARCHIVE_VERIFY_KEY.

    python -m scripts.packaging.package --arch efficientnet_lite0 --sign-key archive.key
    ARCHIVE_VERIFY_KEY=archive.pub python -m scripts.ops.serve start

A pin (ARCHIVE_SHA256, scripts/ops/pins.py) names one archive's bytes; a signature names who
built it, so a new archive from the same builder runs without a new pin. The signature is the
OpenSSF `model_signing` package's (a Sigstore bundle signed with an elliptic-curve key: P-256,
P-384 or P-521, PEM): no transparency log, no certificate, nothing fetched from the network.

It lies beside the archive, not inside it: TorchServe unpacks everything inside a .mar into the
model directory, where handler/integrity.py refuses any file its manifest does not list.

`model_signing` and `cryptography` are imported only when a key is given, so a server that does
not verify signatures needs neither.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

VERIFY_KEY_ENV = "ARCHIVE_VERIFY_KEY"
SUFFIX = ".sig"
CURVES = ("secp256r1", "secp384r1", "secp521r1")  # the curves model_signing signs with


class SignatureError(RuntimeError):
    """An archive is unsigned, tampered with or signed with another key, or a key is unusable."""


def signature_path(archive: Path) -> Path:
    """Where `archive`'s signature lies: NAME.mar.sig beside NAME.mar."""
    return archive.with_name(archive.name + SUFFIX)


def _model_signing(purpose: str) -> Any:
    try:
        import model_signing
    except ImportError as exc:
        raise SignatureError(f"{purpose} needs the model_signing package, which is not installed: "
                             "pip install -r requirements-serve.txt") from exc
    return model_signing


def sign(archive: Path, private_key: Path) -> Path:
    """Sign `archive` with the PEM elliptic-curve `private_key`; returns the signature's path."""
    model_signing = _model_signing("--sign-key")
    out = signature_path(archive)
    try:
        model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key).sign(archive, out)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        # AttributeError: model_signing reads `.curve` of the key, which an Ed25519 or RSA key lacks.
        raise SignatureError(f"cannot sign {archive.name} with {private_key}: {exc} (it takes an "
                             "unencrypted PEM elliptic-curve private key: P-256, P-384 or P-521)") from exc
    return out


def verifier(public_key: Path) -> Any:
    """A model_signing verifying config for the PEM elliptic-curve `public_key`, the key checked
    here first so that a wrong one is named as such rather than as a bad signature."""
    model_signing = _model_signing(VERIFY_KEY_ENV)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    where = f"{VERIFY_KEY_ENV}={public_key}"
    try:
        key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{where}: cannot read a PEM public key from it ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
        raise SignatureError(f"{where}: not an elliptic-curve public key on P-256, P-384 or P-521: "
                             "give the public half of the key the archives are signed with")
    return model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)


def signed_digest(archive: Path, config: Any) -> str:
    """The SHA-256 of `archive` that its signature vouches for, once the signature verified with
    `config` (verifier()). The signature is read once: the digest returned comes from the bytes
    verified, so the caller can hold the archive it hashes itself to it."""
    sig = signature_path(archive)
    if not sig.is_file():
        raise SignatureError(f"{archive.name}: unsigned (no {sig.name} beside it) and {VERIFY_KEY_ENV} "
                             "is set: sign it (python -m scripts.packaging.package --sign-key KEY) "
                             "or serve a signed one")
    bundle = sig.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        held = Path(tmp) / sig.name
        held.write_bytes(bundle)
        _verify(archive, held, config)
    return _subject_digest(bundle, archive.name)


def _verify(archive: Path, sig: Path, config: Any) -> None:
    from cryptography.exceptions import InvalidSignature

    try:
        config.verify(archive, sig)
    except (ValueError, KeyError, TypeError, InvalidSignature) as exc:
        # model_signing says "Key mismatch" for another key's signature, "Signature mismatch"
        # for changed bytes; both raise ValueError, as does a malformed bundle.
        reason = "signed with another key" if "Key mismatch" in str(exc) else (
            "its bytes are not the ones signed (tampered with)" if "Signature mismatch" in str(exc)
            else f"the signature does not verify ({type(exc).__name__}: {str(exc)[:200]})")
        raise SignatureError(f"{archive.name}: {reason} ({VERIFY_KEY_ENV}): not starting") from exc


def _subject_digest(bundle: bytes, name: str) -> str:
    """The one file digest inside a verified bundle's in-toto statement (model_signing's
    predicate: `resources`, a single file signed as ".")."""
    statement = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
    resources = statement["predicate"]["resources"]
    if len(resources) != 1 or resources[0].get("algorithm") != "sha256":
        raise SignatureError(f"{name}: its signature covers {len(resources)} files, not the one archive "
                             "file: sign the .mar itself (package --sign-key)")
    return resources[0]["digest"]
