"""Turn one TorchServe request row into the image's encoded bytes.

TorchServe hands the handler a dict per request: a raw body under `body` (or `data`), a
multipart upload under its form field name, and every query-string parameter under its own
name, ahead of the body. Its worker pre-decodes by Content-Type: an `application/json` body
that parses arrives as a dict (or list, number, ...), a `text/*` body that is valid UTF-8
arrives as str; otherwise (an image sent as text/plain, say) as bytes.

Which input is the image: the raw body when there is one (query-string parameters are then
ignored: `?data=x` cannot shadow the image); else one form field among FIELD_KEYS (two of them
is ambiguous: refused), else the one uploaded file. Cheap bounds come first: at most
MAX_FIELDS inputs per request, JSON nested at most MAX_JSON_DEPTH deep (checked before parsing;
Python's parser would recurse into a 600 KB `{"a":{"a":...` until RecursionError).
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import numpy as np

from handler.errors import BadInput

JSON_IMAGE_KEYS = ("image", "b64", "data")
# The raw body (TorchServe's key for it), then the form field names we document.
BODY_KEY = "body"
FIELD_KEYS = ("data", "image", "file")
# Our JSON is {"image": "<base64>"}: depth 1. Deeper than this is not a request of ours.
MAX_JSON_DEPTH = 8
# A request is one image and perhaps a few text fields; thousands of form fields are an attack
# on the parser, refused before any of them is looked at.
MAX_FIELDS = 16
ACCEPTED = ("raw image bytes (Content-Type image/* or application/octet-stream), "
            "a multipart field 'data', or JSON {\"image\": \"<base64>\"}")
_WHITESPACE = re.compile(rb"\s+")


def payload_to_bytes(row: dict) -> bytes:
    """Return the encoded image bytes of a request, or raise BadInput (400)."""
    value = _pick_field(row)
    if value is None:
        raise BadInput("EmptyInput", f"No image in the request; send {ACCEPTED}.")
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value)
        if value.lstrip()[:1] == b"{":
            return _from_json(_parse_json(value))
        return value
    if isinstance(value, dict):
        return _from_json(value)
    if isinstance(value, str):
        return _from_text(value)
    raise BadInput("InvalidJSON",
                     f"The JSON body is a {type(value).__name__}; send an object "
                     "{\"image\": \"<base64>\"}.")


def _pick_field(row: dict):
    if len(row) > MAX_FIELDS:
        raise BadInput("TooManyFields", f"The request carries {len(row)} inputs (form fields "
                         f"or query parameters); at most {MAX_FIELDS} are read. Send one image.")
    if row.get(BODY_KEY) is not None:  # a raw body: query-string parameters do not matter
        return row[BODY_KEY]
    named = [key for key in FIELD_KEYS if row.get(key) not in (None, "", b"")]
    if len(named) > 1:
        raise BadInput("AmbiguousInput", f"The request carries several inputs ({', '.join(named)}) "
                         "that could be the image; send one (query-string parameters count too).")
    if named:
        return row[named[0]]
    # A multipart upload under another field name: prefer an uploaded file over text fields.
    for value in row.values():
        if isinstance(value, (bytes, bytearray)) and value:
            return value
    for value in row.values():
        if value is not None and value != "":
            return value
    return None


def _from_text(text: str) -> bytes:
    """A text body: JSON, a bare base64 string, or image bytes that happen to be valid UTF-8
    (a dark BMP sent as text/plain): those go on as the bytes sent, for the decoder to judge."""
    if text.lstrip().startswith("{"):
        return _from_json(_parse_json(text.encode()))
    if not text.strip():
        raise BadInput("EmptyInput", f"The request body is blank; send {ACCEPTED}.")
    try:
        return _b64(text)
    except BadInput:
        return text.encode("utf-8")  # the worker decoded these bytes as UTF-8: exact round trip


def json_depth(raw: bytes) -> int:
    """Deepest nesting of brackets and braces, counted over the bytes (strings not parsed:
    a bracket inside a string can only raise the count). Vectorised: 6 MB in tens of ms."""
    arr = np.frombuffer(raw, dtype=np.uint8)
    steps = (np.isin(arr, (ord("{"), ord("["))).astype(np.int32)
             - np.isin(arr, (ord("}"), ord("]"))).astype(np.int32))
    return int(np.cumsum(steps).max(initial=0))


def _parse_json(raw: bytes) -> dict:
    if (depth := json_depth(raw)) > MAX_JSON_DEPTH:
        raise BadInput("InvalidJSON", f"The JSON body nests {depth} levels deep; at most "
                         f"{MAX_JSON_DEPTH} are read. Send {{\"image\": \"<base64>\"}}.")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput("InvalidJSON", f"The JSON body does not parse: {exc}.") from exc
    if not isinstance(doc, dict):
        raise BadInput("InvalidJSON", "The JSON body must be an object with key 'image'.")
    return doc


def _from_json(doc: dict) -> bytes:
    for key in JSON_IMAGE_KEYS:
        if isinstance(doc.get(key), str):
            return _b64(doc[key])
    raise BadInput("InvalidJSON",
                     "The JSON body needs a base64 string under 'image', e.g. {\"image\": \"/9j/...\"}.")


def _b64(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding, line breaks or a data: URL prefix."""
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    try:
        raw = _WHITESPACE.sub(b"", text.encode("ascii"))
        raw = raw.replace(b"-", b"+").replace(b"_", b"/")
        if not raw.endswith(b"="):
            raw += b"=" * (-len(raw) % 4)
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise BadInput("InvalidBase64", f"The image string is not valid base64: {exc}.") from exc
