"""The Open Inference Protocol (KServe v2) read per request by the handler, in process: v2
requests, in JSON or in Triton's binary-data form, batch with each other and with raw images,
each answered alone in its own protocol; a malformed v2 body, or one whose reading fails, gets
400 {"error"} without costing a neighbour. Also: which bodies are read as v2, each malformed
request refused by its kind, binary data read by its declared lengths and checked, the requested
outputs (the model's, in their order) and the metadata matching the answers."""

from __future__ import annotations

import json

import pytest

from handler import torchserve_entry
from handler.errors import BadInput
from handler.protocols.open_inference import (
    V2_OUTPUTS,
    is_v2,
    read_body,
    v2_image,
    v2_metadata,
    v2_requested_outputs,
)
from handler.protocols.plain import JsonBody
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.context import make_context, new_batch, statuses
from tests.support.open_inference import top_index, v2
from tests.support.servers import MODEL

BINARY_HEADER = "Inference-Header-Content-Length"


def binary_v2(image: bytes) -> tuple[bytes, dict]:
    """Triton's binary-data form: the JSON header, then each BYTES element as a 4-byte
    little-endian length and its bytes."""
    element = len(image).to_bytes(4, "little") + image
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(element)}}]}).encode()
    return header + element, {BINARY_HEADER: str(len(header))}


@pytest.fixture(scope="module")
def handler(default_model_dir):
    h = torchserve_entry.ImageClassifierHandler()
    h.initialize(make_context(default_model_dir))
    return h


# ---- in-process: detection, per-request answers in a batch ----

def test_a_batch_mixes_raw_v2_and_malformed_v2_each_answered_alone(handler, cat):
    binary, binary_headers = binary_v2(cat)
    bad = {"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [1]}]}
    rows = [{"body": cat}, {"body": v2(cat)}, {"body": json.dumps(v2(cat, "b")).encode()},
            {"body": bad}, {"body": binary}]
    new_batch(handler.context, len(rows), [{}, {}, {}, {}, binary_headers])
    out = handler.handle(rows, handler.context)
    assert statuses(handler.context) == {3: (400, "Bad Request")}
    assert {"model", "version", "predictions"} <= set(out[0]) and "outputs" not in out[0]
    assert out[3] == {"error": "UnsupportedDatatype: The input's datatype is 'UINT8'; the model "
                               "takes the encoded image (JPEG, PNG, ...) as one BYTES element."}
    assert [out[1]["id"], out[2]["id"]] == ["a", "b"]
    assert len({top_index(out[i]) for i in (0, 1, 2, 4)}) == 1
    assert top_index(out[0]) in EXPECTED_TOP1["cat"]
    assert out[1]["outputs"] == out[4]["outputs"]
    assert all(handler.context.get_response_content_type(i) == "application/json" for i in range(5))


def test_a_request_whose_reading_fails_is_refused_alone(handler, cat):
    """Protocol detection and v2 parsing run in each request's own error handling: a JSON number
    sent with Triton's binary-data header, or a shape past int64, is that request's 400."""
    huge = {"inputs": [{"name": "image", "shape": [10**20], "datatype": "BYTES", "data": ["aGk="]}]}
    rows = [{"body": cat}, {"body": 1.5}, {"body": [1, 2, 3]}, {"body": huge}, {"body": cat}]
    header = {"Inference-Header-Content-Length": "1"}
    new_batch(handler.context, len(rows), [{}, header, header, {}, {}])
    out = handler.handle(rows, handler.context)
    assert statuses(handler.context) == {i: (400, "Bad Request") for i in (1, 2, 3)}
    assert out[1]["error"].startswith("InvalidV2Request: ") and "float" in out[1]["error"]
    assert out[2]["error"].startswith("InvalidV2Request: ")
    assert out[3]["error"].startswith("ShapeMismatch: ")
    assert top_index(out[0]) == top_index(out[4]) and top_index(out[0]) in EXPECTED_TOP1["cat"]


def test_requested_outputs_in_their_order_and_the_request_id_fallback(handler, cat):
    rows = [{"body": v2(cat, None, outputs=[{"name": "indices"}, {"name": "labels"}])}]
    new_batch(handler.context, 1)
    handler.context.request_ids = {0: "ts-request-7"}
    try:
        (out,) = handler.handle(rows, handler.context)
    finally:
        handler.context.request_ids = None
    assert out["id"] == "ts-request-7"  # TorchServe's id when the request names none
    assert [o["name"] for o in out["outputs"]] == ["indices", "labels"]


def test_metadata_describes_what_the_handler_answers(handler, cat):
    meta = v2_metadata(MODEL, "1.0", handler.top_k)
    new_batch(handler.context, 1)
    (out,) = handler.handle([{"body": v2(cat)}], handler.context)
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        (o["name"], o["datatype"], o["shape"]) for o in out["outputs"]]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]


@pytest.mark.parametrize("row, header", [
    ({"body": b"\xff\xd8\xff\xe0 a jpeg"}, None),
    ({"body": {"image": "aGVsbG8="}}, None),         # our own JSON form
    ({"body": b'{"image": "aGVsbG8="}'}, None),
    ({"body": b"{not json"}, None),                  # not JSON: refused by the plain reader
    ({"data": b"multipart upload"}, None),
])
def test_only_v2_bodies_are_read_as_v2(row, header):
    assert not is_v2(read_body(row, header), header)


def refusal(doc: dict, tail: bytes = b"") -> str:
    with pytest.raises(BadInput) as info:
        v2_image(JsonBody(doc, tail))
    assert info.value.status == 400
    return info.value.error_type


ONE = {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}


@pytest.mark.parametrize("doc, kind", [
    ({"inputs": []}, "InvalidV2Request"),
    ({"inputs": "x"}, "InvalidV2Request"),
    ({"inputs": [ONE, ONE]}, "TooManyInputs"),
    ({"inputs": [{**ONE, "datatype": "FP32"}]}, "UnsupportedDatatype"),
    ({"inputs": [{**ONE, "shape": [2], "data": ["aGk=", "aGk="]}]}, "TooManyImages"),
    ({"inputs": [{**ONE, "shape": [1], "data": ["aGk=", "aGk="]}]}, "ShapeMismatch"),
    ({"inputs": [{**ONE, "shape": [10**12]}]}, "ShapeMismatch"),
    ({"inputs": [{**ONE, "shape": [0], "data": []}]}, "EmptyInput"),
    ({"inputs": [{**ONE, "shape": "1"}]}, "InvalidV2Request"),
    ({"inputs": [{**ONE, "shape": [-1]}]}, "InvalidV2Request"),
    ({"inputs": [{**ONE, "data": [[[1]]]}]}, "InvalidV2Request"),
    ({"inputs": [{**ONE, "data": [["a"] * 100] * 100}]}, "ShapeMismatch"),
    ({"inputs": [{**ONE, "data": ["%%%"]}]}, "InvalidBase64"),
    ({"inputs": [{**ONE, "name": 3}]}, "InvalidV2Request"),
    ({"inputs": [ONE], "id": 7}, "InvalidV2Request"),
    ({"inputs": [ONE], "parameters": []}, "InvalidV2Request"),
    ({"inputs": [{**ONE, "parameters": {"binary_data_size": 9}}]}, "InvalidBinaryData"),
])
def test_malformed_v2_requests_are_refused_by_kind(doc, kind):
    assert refusal(doc) == kind


def test_binary_data_is_read_by_its_lengths_and_checked():
    image = b"\x89PNG not really"
    element = len(image).to_bytes(4, "little") + image
    doc = {"inputs": [{**ONE, "parameters": {"binary_data_size": len(element)}}]}
    assert v2_image(JsonBody(doc, element)) == image
    assert refusal(doc, element[:-1]) == "InvalidBinaryData"  # size and data disagree
    cut = {"inputs": [{**ONE, "parameters": {"binary_data_size": 6}}]}
    assert refusal(cut, b"\xff\x00\x00\x00ab") == "InvalidBinaryData"
    assert refusal({"inputs": [ONE]}, b"stray") == "InvalidBinaryData"
    split = read_body({"body": json.dumps(doc).encode() + element}, "zero")
    assert split.error is not None and split.error.error_type == "InvalidBinaryData"


def test_outputs_must_be_the_models():
    assert v2_requested_outputs({}, V2_OUTPUTS) == V2_OUTPUTS
    for outputs in ([{"name": "logits"}], [{"name": "labels"}, {"name": "labels"}], "labels"):
        with pytest.raises(BadInput):
            v2_requested_outputs({"outputs": outputs}, V2_OUTPUTS)
