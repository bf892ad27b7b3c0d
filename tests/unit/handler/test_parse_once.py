"""Each request's JSON body is parsed once, by the one bounded parser, whatever its protocol:
the view built when the handler takes the batch reads it, and the protocol reading the image
takes that document instead of parsing the bytes again."""

from __future__ import annotations

import base64
import json

import pytest

from handler import torchserve_entry
from tests.support.context import make_context, new_batch, statuses

BINARY_HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def handler(default_model_dir):
    h = torchserve_entry.ImageClassifierHandler()
    h.initialize(make_context(default_model_dir))
    return h


def requests_of(image: bytes) -> dict[str, tuple[dict, dict, int]]:
    """name -> (row, headers, JSON documents the request holds)."""
    b64 = base64.b64encode(image).decode()
    v2 = {"id": "a", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]}
    element = len(image).to_bytes(4, "little") + image
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(element)}}]}).encode()
    return {"raw": ({"body": image}, {}, 0),
            "plain_json": ({"body": json.dumps({"image": b64}).encode()}, {}, 1),
            "v2_json": ({"body": json.dumps(v2).encode()}, {}, 1),
            "v2_binary": ({"body": header + element}, {BINARY_HEADER: str(len(header))}, 1),
            "not_json": ({"body": b"{not json"}, {}, 1)}


@pytest.fixture
def parses(monkeypatch) -> list[bytes]:
    """Every document json.loads parses from now on."""
    seen: list[bytes] = []
    real = json.loads

    def counting(raw, *args, **kwargs):
        seen.append(raw)
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    return seen


@pytest.mark.parametrize("name", ["raw", "plain_json", "v2_json", "v2_binary", "not_json"])
def test_each_request_body_is_parsed_once(handler, photos, parses, name):
    row, headers, documents = requests_of(photos["cat.jpg"].read_bytes())[name]
    new_batch(handler.context, 1, [headers])
    (out,) = handler.handle([row], handler.context)
    assert len(parses) == documents
    if name == "not_json":
        assert statuses(handler.context) == {0: (400, "Bad Request")} and out["type"] == "InvalidJSON"
    else:
        assert statuses(handler.context) == {} and ("predictions" in out or "outputs" in out)


def test_a_mixed_batch_parses_each_body_once(handler, photos, parses):
    batch = list(requests_of(photos["cat.jpg"].read_bytes()).values())
    new_batch(handler.context, len(batch), [headers for _, headers, _ in batch])
    out = handler.handle([row for row, _, _ in batch], handler.context)
    assert len(parses) == sum(documents for _, _, documents in batch) == 4
    assert statuses(handler.context) == {4: (400, "Bad Request")} and len(out) == 5
