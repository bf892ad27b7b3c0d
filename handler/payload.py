"""Turn one TorchServe request row into the image's encoded bytes.

TorchServe hands the handler a dict per request: a raw body under `body` (or `data`), a
multipart upload under its form field name, and every query-string parameter under its own
name, ahead of the body. Our servers set `decode_input_request=false`, so every body arrives as
the bytes sent and `_parse_json` is the only JSON parser a request meets; a worker left with
TorchServe's default pre-decodes by Content-Type (an `application/json` body that parses arrives
as a dict, list, number, ...; a `text/*` body that is valid UTF-8 as str), and those are read too.

Which input is the image: the raw body when there is one (query-string parameters are then
ignored: `?data=x` cannot shadow the image); else one form field among FIELD_KEYS (two of them
is ambiguous: refused), else the one uploaded file. Cheap bounds come first: at most
MAX_FIELDS inputs per request; JSON with at most MAX_JSON_CONTAINERS objects and lists,
MAX_JSON_VALUES values, nested at most MAX_JSON_DEPTH deep, all counted from the bytes before
parsing (Python's parser would recurse into a 600 KB `{"a":{"a":...` until RecursionError, and
build a million dicts from 6.5 MB of `[{},{},...]`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from dataclasses import dataclass

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


def payload_to_bytes(row: dict) -> bytes:
    """Return the encoded image bytes of a request, or raise BadInput (400)."""
    value = _pick_field(row)
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
    head = raw[:64].lstrip()
    if head[:1] in (b"{", b"["):
        return _from_json(_parse_json(raw))
    if head and (head.startswith(b"data:") or not head.translate(None, _BASE64_TEXT)):
        try:
            return _b64(raw.decode("ascii"))
        except (BadInput, UnicodeDecodeError):
            pass  # not base64 after all: the decoder judges the bytes
    return raw


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
    a bracket inside a string can only raise the count). Only the brackets are visited."""
    depth = deepest = 0
    for char in raw.translate(None, _NOT_BRACKETS):
        depth += 1 if char in _OPENERS else -1
        deepest = max(deepest, depth)
    return deepest


def _parse_json(raw: bytes) -> dict:
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
            return _b64(doc[key])
    raise BadInput("InvalidJSON",
                     "The JSON body needs a base64 string under 'image', e.g. {\"image\": \"/9j/...\"}.")


def _b64(text: str) -> bytes:
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


# The Open Inference Protocol (KServe v2): one request, one input, one image --------------------
#
# A v2 request is recognised by its body alone (TorchServe tells the handler nothing about the
# URL a request came in on): a JSON object with the key "inputs" (our own JSON form never has
# one), or any body sent with Triton's binary-data header. Recognised, it is answered in v2 form
# whatever is wrong with it; a body that is not even JSON cannot be known as v2.

V2_DATATYPE = "BYTES"
# Triton's binary-data extension: the JSON header's length; raw tensor data follows it.
V2_BINARY_HEADER = "inference-header-content-length"
V2_ACCEPTED = ('one input {"name": "image", "shape": [1], "datatype": "BYTES", '
               '"data": ["<base64 of the encoded image>"]}')


@dataclass(frozen=True)
class V2Body:
    """A v2 request as it arrived: its JSON document, the binary data after it (Triton's
    extension), or why it could not be split into the two."""

    doc: dict | None
    tail: bytes = b""
    error: BadInput | None = None

    @property
    def request_id(self) -> str | None:
        value = (self.doc or {}).get("id")
        return value if isinstance(value, str) else None


def v2_body(row: dict, binary_header: str | None) -> V2Body | None:
    """The v2 request this row is, or None when it is not one. Never raises: a malformed v2
    request is still a v2 request, refused in v2 form later (v2_image)."""
    body = row.get(BODY_KEY)
    if binary_header is not None:
        return _split_binary(body, binary_header)
    if isinstance(body, dict):
        return V2Body(body) if "inputs" in body else None
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)) or bytes(body[:64]).lstrip()[:1] != b"{":
        return None
    try:
        doc = _parse_json(bytes(body))
    except BadInput:
        return None  # not JSON: not recognisably v2; the plain reader refuses it
    return V2Body(doc) if "inputs" in doc else None


def _split_binary(body, header: str) -> V2Body:
    if isinstance(body, dict):  # sent as application/json and parsed whole: there is no tail
        return V2Body(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)):  # JSON that parsed to a number, list, null, ...
        return V2Body(None, error=BadInput("InvalidV2Request", "A v2 request is a JSON object "
                                           f"(then its binary data); the body is a {type(body).__name__}."))
    raw = bytes(body)
    try:
        length = int(header)
    except ValueError:
        length = -1
    if not 0 < length <= len(raw):
        return V2Body(None, error=BadInput("InvalidBinaryData", f"Inference-Header-Content-Length "
                                           f"is {header!r}; the body has {len(raw)} bytes."))
    try:
        return V2Body(_parse_json(raw[:length]), raw[length:])
    except BadInput as err:
        return V2Body(None, error=err)


def v2_image(body: V2Body) -> bytes:
    """The encoded image of a v2 request, or BadInput (400). One request carries one image:
    TorchServe batches requests, so a client gains nothing by packing several into one, and one
    image per request keeps each request's cost budget and its own answer."""
    if body.error is not None:
        raise body.error
    doc = body.doc
    if "id" in doc and not isinstance(doc["id"], str):
        raise BadInput("InvalidV2Request", "'id' must be a string.")
    if not isinstance(doc.get("parameters", {}), dict):
        raise BadInput("InvalidV2Request", "'parameters' must be an object.")
    tensor = _one_input(doc.get("inputs"))
    count = _element_count(tensor)
    params = tensor.get("parameters", {})
    if not isinstance(params, dict):
        raise BadInput("InvalidV2Request", f"The input's 'parameters' must be an object; send {V2_ACCEPTED}.")
    if "binary_data_size" in params:
        elements = _binary_elements(params["binary_data_size"], body.tail)
    elif body.tail:
        raise BadInput("InvalidBinaryData", "The body carries binary data but no input names its "
                       "binary_data_size.")
    else:
        elements = _json_elements(tensor.get("data"))
    if len(elements) != count:
        sent = len(elements) if len(elements) <= MAX_FIELDS else f"over {MAX_FIELDS}"
        raise BadInput("ShapeMismatch", f"The input's shape {tensor['shape']} holds {count} "
                       f"element(s) but its data has {sent}.")
    if count != 1:
        raise BadInput("TooManyImages" if count else "EmptyInput",
                       f"The input holds {count} images; a request carries exactly one (send each "
                       "image as its own request: the server batches them).")
    return elements[0] if isinstance(elements[0], bytes) else _b64(elements[0])


def _one_input(inputs) -> dict:
    if not isinstance(inputs, list) or not inputs:
        raise BadInput("InvalidV2Request", f"'inputs' must be a list holding {V2_ACCEPTED}.")
    if len(inputs) > 1:
        raise BadInput("TooManyInputs", f"The request has {len(inputs)} inputs; send {V2_ACCEPTED} "
                       "(one image per request: the server batches requests).")
    tensor = inputs[0]
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadInput("InvalidV2Request", f"An input is an object with a string 'name'; send {V2_ACCEPTED}.")
    if tensor.get("datatype") != V2_DATATYPE:
        raise BadInput("UnsupportedDatatype", f"The input's datatype is {tensor.get('datatype')!r}; "
                       "the model takes the encoded image (JPEG, PNG, ...) as one BYTES element.")
    return tensor


def _element_count(tensor: dict) -> int:
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape or len(shape) > MAX_JSON_DEPTH
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise BadInput("InvalidV2Request", f"The input's shape must be a list of sizes, e.g. [1]; "
                       f"got {str(shape)[:80]!r}.")
    return math.prod(shape)  # Python's integers: a dimension of 10**20 cannot overflow


def _json_elements(data) -> list:
    """The BYTES elements of a JSON tensor, flattened (the protocol allows nested rows); each
    a base64 string."""
    if not isinstance(data, list):
        raise BadInput("InvalidV2Request", f"The input's 'data' must be a list; send {V2_ACCEPTED}.")
    flat, stack, steps = [], [data], 0
    # Bounded: a request holds one element; a few more are enough to say how many it sent.
    while stack and len(flat) <= MAX_FIELDS and steps < 8 * MAX_FIELDS:
        item, steps = stack.pop(), steps + 1
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            flat.append(item)
        else:
            raise BadInput("InvalidV2Request", "A BYTES element in JSON is a string: the image "
                           f"in base64, not a {type(item).__name__}.")
    return flat


def _binary_elements(size, tail: bytes) -> list[bytes]:
    """Triton's binary BYTES tensor: each element a 4-byte little-endian length and its bytes."""
    if type(size) is not int or size != len(tail):
        raise BadInput("InvalidBinaryData", f"binary_data_size is {size!r}; {len(tail)} bytes of "
                       "binary data follow the JSON header.")
    elements, at = [], 0
    while at < len(tail) and len(elements) <= MAX_FIELDS:
        if at + 4 > len(tail):
            raise BadInput("InvalidBinaryData", "A BYTES element's length prefix is cut short.")
        length = int.from_bytes(tail[at:at + 4], "little")
        if at + 4 + length > len(tail):
            raise BadInput("InvalidBinaryData", f"A BYTES element declares {length} bytes; "
                           f"{len(tail) - at - 4} follow.")
        elements.append(tail[at + 4:at + 4 + length])
        at += 4 + length
    return elements


def v2_requested_outputs(doc: dict, known: tuple[str, ...]) -> tuple[str, ...]:
    """The output names a v2 request asks for, in its order (all of `known` when it names
    none), or BadInput (400) for an unknown or repeated name."""
    outputs = doc.get("outputs")
    if outputs is None:
        return known
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadInput("InvalidV2Request", "'outputs' must be a list of objects {\"name\": ...}.")
    names = tuple(o.get("name") for o in outputs)
    unknown = [n for n in names if n not in known]
    if unknown or len(set(names)) != len(names):
        raise BadInput("UnknownOutput", f"The model's outputs are {', '.join(known)}, each named "
                       f"once; the request asks for {list(names)}.")
    return names or known
