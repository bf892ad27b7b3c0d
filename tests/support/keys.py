"""A key_file.json as TorchServe 0.12 writes it, with a chosen time left before its keys expire."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scripts.ops.server_config import EXPIRY_FIELD


def write_key_file(path: Path, expires_in_s: float, inference: str = "i") -> None:
    expiry = (datetime.now(UTC) + timedelta(seconds=expires_in_s)).isoformat().replace("+00:00", "Z")
    path.write_text(json.dumps({"management": {"key": "m", EXPIRY_FIELD: expiry},
                                "inference": {"key": inference, EXPIRY_FIELD: expiry},
                                "API": {"key": "a"}}))
