"""Key files as TorchServe 0.12 writes them, with a chosen time left before their keys expire,
and signing key pairs written as PEM files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from scripts.ops.server_config import EXPIRY_FIELD


def write_key_file(path: Path, expires_in_s: float, inference: str = "i") -> None:
    expiry = (datetime.now(UTC) + timedelta(seconds=expires_in_s)).isoformat().replace("+00:00", "Z")
    path.write_text(json.dumps({"management": {"key": "m", EXPIRY_FIELD: expiry},
                                "inference": {"key": inference, EXPIRY_FIELD: expiry},
                                "API": {"key": "a"}}))


def write_key_pair(private_key, out: Path) -> tuple[Path, Path]:
    """(private PEM, public PEM) of `private_key` under `out`."""
    key, pub = out.with_suffix(".key"), out.with_suffix(".pub")
    key.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    pub.write_bytes(private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub
