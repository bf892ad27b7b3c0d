"""The plain protocol, TorchServe's own API: how its request's image is read, and its answer.

TorchServe hands the handler a dict per request: a raw body under `body` (or `data`), a
multipart upload under its form field name, and every query-string parameter under its own
name, ahead of the body. Our servers set `decode_input_request=false`, so every body arrives as
the bytes sent and `parse_json` is the only JSON parser a request meets (every protocol's: the
raw body is read as JSON once, by `json_body`, when the request's view is built); a worker left
with TorchServe's default pre-decodes by Content-Type (an `application/json` body that parses
arrives as a dict, list, number, ...; a `text/*` body that is valid UTF-8 as str), and those are
read too.

Which input is the image: the raw body when there is one (query-string parameters are then
ignored: `?data=x` cannot shadow the image); else one form field among FIELD_KEYS (two of them
is ambiguous: refused), else the one uploaded file. Cheap bounds come first: at most
MAX_FIELDS inputs per request; JSON with at most MAX_JSON_CONTAINERS objects and lists,
MAX_JSON_VALUES values, nested at most MAX_JSON_DEPTH deep, all counted from the bytes before
parsing (Python's parser would recurse into a 600 KB `{"a":{"a":...` until RecursionError, and
build a million dicts from 6.5 MB of `[{},{},...]`).

The answer goes out as the body the core made ({"model", "version", "predictions"} or the
error's {"code", "type", "message"}).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from handler.errors import BadInput

if TYPE_CHECKING:
    from handler.request import RequestView
    from handler.responses import Answer

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
# A v2 request with every optional part is a few dozen of each; ours is one object, one value.
MAX_JSON_CONTAINERS = 64
MAX_JSON_VALUES = 256
_WHITESPACE = re.compile(rb"\s+")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPENERS = frozenset(b"[{")
# What base64 text may hold: both alphabets, padding and line breaks.
_BASE64_TEXT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_= \t\r\n"


def worker_decodes_bodies() -> bool:
    """Whether TorchServe's worker parses JSON and text bodies before the handler sees them: its
    frontend passes config.properties' decode_input_request to the worker as this variable."""
    return os.environ.get("TS_DECODE_INPUT_REQUEST", "true") != "false"


@dataclass(frozen=True)
class JsonBody:
    """A request's raw body read as JSON, once: its document, the binary data after it (the
    Open Inference Protocol's binary-data extension), or why it could not be read."""

    doc: dict | None
    tail: bytes = b""
    error: BadInput | None = None

    def document(self) -> dict:
        """The document, or the error that kept the body from being one."""
        if self.error is not None:
            raise self.error
        return self.doc


def opens_like_json(raw: bytes, openers: bytes = b"{[") -> bool:
    head = raw[:64].lstrip()
    return bool(head) and head[0] in openers


def json_body(row: dict) -> JsonBody | None:
    """The row's raw body read as JSON when it is JSON (it opens with `{` or `[`; a text body
    that the worker decoded, with `{`), else None. Never raises: the error is kept for the
    protocol that reads the body."""
    body = row.get(BODY_KEY)
    if isinstance(body, dict):  # parsed by the worker (decode_input_request left on)
        return JsonBody(body)
    if isinstance(body, str):
        raw, openers = body.encode("utf-8"), b"{"
    elif isinstance(body, (bytes, bytearray)):
        raw, openers = bytes(body), b"{["
    else:
        return None
    if not opens_like_json(raw, openers):
        return None
    try:
        return JsonBody(parse_json(raw))
    except BadInput as err:
        return JsonBody(None, error=err)


class PlainProtocol:
    """TorchServe's own API: the image as `payload_to_bytes` reads it, the answer's body as it is."""

    def image(self, view: RequestView, row: dict) -> bytes:
        return payload_to_bytes(row, view.body)

    def render(self, view: RequestView, answer: Answer) -> dict:
        return answer.body


PLAIN = PlainProtocol()


def payload_to_bytes(row: dict, body: JsonBody | None = None) -> bytes:
    """Return the encoded image bytes of a request, or raise BadInput (400). `body`: the row's
    raw body as `json_body` read it, so that it is not parsed again."""
    value = _pick_field(row)
    if body is not None and value is row.get(BODY_KEY):
        return _from_json(body.document())
    if value is None:
        raise BadInput("EmptyInput", f"No image in the request; send {ACCEPTED}.")
    if isinstance(value, (bytes, bytearray)):
        return _from_bytes(bytes(value))
    # A worker with decode_input_request left on (TorchServe's default) hands JSON and text
    # bodies over already decoded.
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


def _from_bytes(raw: bytes) -> bytes:
    """A body as sent (decode_input_request=false: every body, whatever its Content-Type): JSON
    when it opens like JSON, base64 when it is base64 text, else the image's own bytes. The bytes
    decide, not the Content-Type, as for raw images (a JPEG sent as text/plain still works)."""
    if opens_like_json(raw):
        return _from_json(parse_json(raw))
    head = raw[:64].lstrip()
    if head and (head.startswith(b"data:") or not head.translate(None, _BASE64_TEXT)):
        try:
            return b64(raw.decode("ascii"))
        except (BadInput, UnicodeDecodeError):
            pass  # not base64 after all: the decoder judges the bytes
    return raw


def _from_text(text: str) -> bytes:
    """A text body: JSON, a bare base64 string, or image bytes that happen to be valid UTF-8
    (a dark BMP sent as text/plain): those go on as the bytes sent, for the decoder to judge."""
    if opens_like_json(raw := text.encode("utf-8"), b"{"):
        return _from_json(parse_json(raw))
    if not text.strip():
        raise BadInput("EmptyInput", f"The request body is blank; send {ACCEPTED}.")
    try:
        return b64(text)
    except BadInput:
        return text.encode("utf-8")  # the worker decoded these bytes as UTF-8: exact round trip


def json_depth(raw: bytes) -> int:
    """Deepest nesting of brackets and braces, counted over the bytes (strings not parsed:
    a bracket inside a string can only raise the count). Only the brackets are visited."""
    depth = deepest = 0
    for char in raw.translate(None, _NOT_BRACKETS):
        depth += 1 if char in _OPENERS else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(raw: bytes) -> dict:
    """The one JSON reader of request bodies: the body's shape is bounded from its bytes before
    Python's parser allocates anything (containers, values, nesting), so no body can make the
    worker build millions of objects (a 6.5 MB `[{},{},...]` is 1.6 million dicts)."""
    containers = sum(raw.count(b) for b in (b"{", b"[", b"}", b"]")) // 2
    values = raw.count(b",") + 1
    if containers > MAX_JSON_CONTAINERS or values > MAX_JSON_VALUES:
        raise BadInput("InvalidJSON", f"The JSON body holds about {containers} objects or lists "
                       f"and {values} values; at most {MAX_JSON_CONTAINERS} and {MAX_JSON_VALUES} "
                       "are read. Send {\"image\": \"<base64>\"}.")
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
            return b64(doc[key])
    raise BadInput("InvalidJSON",
                     "The JSON body needs a base64 string under 'image', e.g. {\"image\": \"/9j/...\"}.")


def b64(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding, line breaks or a data: URL prefix."""
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    try:  # the common case first: standard, padded, unwrapped (a regex pass costs more than this)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        raw = _WHITESPACE.sub(b"", text.encode("ascii"))
        raw = raw.replace(b"-", b"+").replace(b"_", b"/")
        if not raw.endswith(b"="):
            raw += b"=" * (-len(raw) % 4)
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise BadInput("InvalidBase64", f"The image string is not valid base64: {exc}.") from exc
