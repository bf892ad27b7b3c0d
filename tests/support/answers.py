"""Talking to a served model over HTTP as the input-contract tests do: one POST, the checks of a
label and of a JSON error, and the hostile requests each with the status and type it must get
(used by the handler's, the closed registration's and the container's end-to-end tests)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import requests

from scripts.ops import serve
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.images import HOSTILE, hostile_bytes, png_declaring
from tests.support.servers import MODEL

ERROR_KEYS = {"code", "type", "message", "request_id"}  # request_id: the envelope, handler/protocols


def post(srv: serve.Server, model: str = MODEL, **kwargs) -> requests.Response:
    headers = {**srv.client.auth_headers("inference"), **kwargs.pop("headers", {})}
    return requests.post(f"{srv.client.inference_url}/predictions/{model}", headers=headers,
                         timeout=60, **kwargs)


def check_label(resp: requests.Response, photo: str) -> None:
    assert resp.status_code == 200, resp.text
    top = resp.json()["predictions"][0]
    assert top["index"] in EXPECTED_TOP1[photo], (photo, top)


def check_error(resp: requests.Response, status: int, kind: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers.get("content-type", "").startswith("application/json")
    body = resp.json()
    assert set(body) == ERROR_KEYS and body["code"] == status and body["message"], body
    if kind is not None:
        assert body["type"] == kind, body
    return body


def hostile_requests() -> dict[str, tuple[dict, int, str]]:
    octet = {"Content-Type": "application/octet-stream"}
    cases = {name: ({"data": hostile_bytes(name), "headers": octet}, status, kind)
             for name, (_, status, kind) in HOSTILE.items()}
    cases.update({
        "zero-byte multipart file": ({"files": {"data": ("empty.jpg", b"", "image/jpeg")}},
                                     400, "EmptyInput"),
        "html as text/html": ({"data": b"<html><body>hello</body></html>",
                               "headers": {"Content-Type": "text/html"}}, 415, "UnsupportedMediaType"),
        "random bytes as image/jpeg": ({"data": HOSTILE["random_bytes"][0],
                                        "headers": {"Content-Type": "image/jpeg"}},
                                       415, "UnsupportedMediaType"),
        "bomb as multipart": ({"files": {"data": ("x.png", png_declaring(100_000, 100_000))}},
                              413, "ImageTooLarge"),
        "json that does not parse": ({"data": b"{\"image\": ", "headers": {"Content-Type":
                                                                         "application/json"}},
                                     400, "InvalidJSON"),
        "json without image": ({"json": {"picture": "abc"}}, 400, "InvalidJSON"),
        "json list": ({"json": [1, 2, 3]}, 400, "InvalidJSON"),
        "json bad base64": ({"json": {"image": "%%% not base64 %%%"}}, 400, "InvalidBase64"),
        "json base64 of html": ({"json": {"image": base64.b64encode(b"<html></html>").decode()}},
                                415, "UnsupportedMediaType"),
    })
    return cases


HOSTILE_REQUESTS = hostile_requests()


def post_bytes(url: str, body: bytes) -> tuple[int, dict]:
    """(status, JSON body) of one raw image POSTed to a URL (a peer's, no keys)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
