"""Turn one TorchServe request row into the image's encoded bytes.

TorchServe hands the handler a dict per request: a raw body under `body` (or `data`), a
multipart upload under its form field name, and a JSON body already parsed into a dict.
"""

from __future__ import annotations

import base64
import binascii
import json

from preprocessing import InputError

JSON_IMAGE_KEYS = ("image", "b64", "data")
ACCEPTED = ("raw image bytes (Content-Type image/* or application/octet-stream), "
            "a multipart field 'data', or JSON {\"image\": \"<base64>\"}")


def payload_to_bytes(row: dict) -> bytes:
    """Return the encoded image bytes of a request, or raise InputError."""
    value = _pick_field(row)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value)
        if value[:1] == b"{":
            return _from_json(_parse_json(value))
        return value
    if isinstance(value, dict):
        return _from_json(value)
    if isinstance(value, str):
        if value.lstrip().startswith("{"):
            return _from_json(_parse_json(value.encode()))
        return _b64(value)
    raise InputError(400, "EmptyInput", f"No image in the request; send {ACCEPTED}.")


def _pick_field(row: dict):
    for key in ("data", "body"):
        if row.get(key) is not None:
            return row[key]
    # A multipart upload with another field name: take the first non-empty field.
    for value in row.values():
        if value:
            return value
    return None


def _parse_json(raw: bytes) -> dict:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(400, "InvalidJSON", f"The JSON body does not parse: {exc}.") from exc
    if not isinstance(doc, dict):
        raise InputError(400, "InvalidJSON", "The JSON body must be an object with key 'image'.")
    return doc


def _from_json(doc: dict) -> bytes:
    for key in JSON_IMAGE_KEYS:
        if isinstance(doc.get(key), str):
            return _b64(doc[key])
    raise InputError(400, "InvalidJSON",
                     "The JSON body needs a base64 string under 'image', e.g. {\"image\": \"/9j/...\"}.")


def _b64(text: str) -> bytes:
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]  # data URL
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(400, "InvalidBase64", f"The image string is not valid base64: {exc}.") from exc
