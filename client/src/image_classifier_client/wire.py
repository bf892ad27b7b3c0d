"""What goes on the wire for one prediction, and what an answer means; no I/O here, so that the
sync and async clients share every decision."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from image_classifier_client import contract, errors, results

PROTOCOLS = ("v1", "v2")
# Magic numbers of the formats the server decodes. Anything else goes as octet-stream; never as
# application/x-www-form-urlencoded (many clients' default for a body), which TorchServe's
# frontend fails with HTTP 500 before the model sees it.
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
          (b"GIF8", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"),
          (b"MM\x00*", "image/tiff"))
OCTET_STREAM = "application/octet-stream"


def content_type(image: bytes) -> str:
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _MAGIC if image.startswith(magic)), OCTET_STREAM)


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict
    protocol: str


def build(model: str, image: bytes, protocol: str = "v1", request_id: str | None = None) -> Request:
    """v1: the raw image to /predictions/NAME. v2: the Open Inference Protocol's one BYTES input,
    base64 in JSON, to /v2/models/NAME/infer."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    if not model or "/" in model:
        raise ValueError(f"not a model name: {model!r}")
    headers = {"X-Request-ID": request_id} if request_id else {}
    if protocol == "v1":
        return Request(f"/predictions/{model}", image,
                       {**headers, "Content-Type": content_type(image)}, protocol)
    doc: dict = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                             "data": [base64.b64encode(image).decode("ascii")]}]}
    if request_id:
        doc = {"id": request_id, **doc}
    return Request(f"/v2/models/{model}/infer", json.dumps(doc).encode(),
                   {**headers, "Content-Type": "application/json"}, protocol)


def server_message(text: str) -> tuple:
    """(type, message) of an error body: ours {"code", "type", "message"}, v2's {"error": "Type:
    message"}, TorchServe's own {"code", "type", "message"}; else the text itself."""
    try:
        doc = json.loads(text)
    except ValueError:
        return "", text.strip()[:500]
    if not isinstance(doc, dict):
        return "", text.strip()[:500]
    if isinstance(doc.get("error"), str):
        kind, sep, message = doc["error"].partition(": ")
        return (kind, message) if sep and " " not in kind else ("", doc["error"])
    return str(doc.get("type", "")), str(doc.get("message", text.strip()[:500]))


def outcome(req: Request, status: int, text: str, headers, attempts: int, top_k: int | None):
    """The Classification a final answer holds, or the typed error it is."""
    if status == 200:
        return _classification(req, text, headers, attempts, top_k)
    kind, message = server_message(text)
    if status == 503:
        raise errors.Overloaded(message or "the server is overloaded", status,
                                _seconds(headers.get("Retry-After")), attempts)
    if contract.lost(status, text):
        raise errors.Unavailable(f"the request was lost {attempts} time(s): {message}", status, attempts)
    if 400 <= status < 500:
        raise errors.ClientError(message, status, kind, text, attempts)
    raise errors.ServerError(f"{status} {kind}: {message}".replace(" : ", ": "), status, attempts)


def _classification(req: Request, text: str, headers, attempts: int, top_k: int | None):
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise errors.ServerError(f"the answer is not JSON: {text[:200]!r}", 200, attempts) from exc
    reader = results.from_v1 if req.protocol == "v1" else results.from_v2
    model, version, preds = reader(doc)
    request_id = (doc.get("id") if req.protocol == "v2" else None) or headers.get("X-Request-ID")
    return results.Classification(model, version, preds[:top_k] if top_k else preds,
                                  request_id or None, req.protocol, attempts)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
