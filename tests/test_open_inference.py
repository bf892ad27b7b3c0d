"""The Open Inference Protocol (KServe v2) read per request by the handler: v2 requests batch
with each other and with raw images, each answered alone in its own protocol; malformed v2
bodies get 400 {"error"} without costing a neighbour. In-process first, then a third-party v2
client (tritonclient) against a real TorchServe, in JSON and in Triton's binary-data form."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

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
from tests.support.servers import MODEL

BINARY_HEADER = "Inference-Header-Content-Length"


def v2(image: bytes, request_id: str | None = "a", **extra) -> dict:
    doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                       "data": [base64.b64encode(image).decode()]}], **extra}
    return doc if request_id is None else {"id": request_id, **doc}


def binary_v2(image: bytes) -> tuple[bytes, dict]:
    """Triton's binary-data form: the JSON header, then each BYTES element as a 4-byte
    little-endian length and its bytes."""
    element = len(image).to_bytes(4, "little") + image
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(element)}}]}).encode()
    return header + element, {BINARY_HEADER: str(len(header))}


@pytest.fixture(scope="module")
def cat(photos) -> bytes:
    return photos["cat.jpg"].read_bytes()


@pytest.fixture(scope="module")
def handler(default_model_dir):
    h = torchserve_entry.ImageClassifierHandler()
    h.initialize(make_context(default_model_dir))
    return h


def top_index(answer: dict) -> int:
    if "predictions" in answer:
        return answer["predictions"][0]["index"]
    return {o["name"]: o for o in answer["outputs"]}["indices"]["data"][0]


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


# ---- e2e: a third-party v2 client against a real TorchServe ----

@pytest.fixture(scope="module")
def triton(server):
    tritonclient_http = pytest.importorskip("tritonclient.http")
    url = server.client.inference_url.removeprefix("http://")
    with tritonclient_http.InferenceServerClient(url, network_timeout=60) as client:
        yield tritonclient_http, client


@pytest.mark.e2e
@pytest.mark.parametrize("binary", [False, True], ids=["json-base64", "binary-data"])
def test_tritonclient_reads_the_answer_as_arrays(server, triton, cat, binary):
    """tritonclient's own request and response handling: JSON with the image in base64, or
    Triton's binary-data extension with the raw JPEG bytes (tritonclient's default)."""
    http, client = triton
    inp = http.InferInput("image", [1], "BYTES")
    data = [cat] if binary else [base64.b64encode(cat)]
    inp.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    outputs = None if binary else [http.InferRequestedOutput(n, binary_data=False) for n in V2_OUTPUTS]
    result = client.infer(MODEL, [inp], outputs=outputs, request_id=f"triton-{binary}",
                          headers=server.client.auth_headers("inference"))
    assert result.get_response()["id"] == f"triton-{binary}"
    indices, probs = result.as_numpy("indices"), result.as_numpy("probabilities")
    labels = result.as_numpy("labels")
    assert indices.shape == probs.shape == labels.shape == (5,)
    assert indices.dtype == np.int64 and probs.dtype == np.float32
    assert int(indices[0]) in EXPECTED_TOP1["cat"] and (np.diff(probs) <= 0).all()
    assert isinstance(labels[0], (str, bytes)) and labels[0]


@pytest.mark.e2e
def test_tritonclient_sees_a_refusal_as_a_client_error(server, triton):
    http, client = triton
    inp = http.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"not an image"], dtype=object), binary_data=True)
    with pytest.raises(http.InferenceServerException) as info:
        client.infer(MODEL, [inp], headers=server.client.auth_headers("inference"))
    assert "UnsupportedMediaType" in info.value.message(), info.value.message()


@pytest.mark.e2e
def test_concurrent_raw_v2_and_malformed_v2_requests_each_get_their_answer(server, photos):
    """Sent together so TorchServe batches them: no answer is lost or swapped, none is a 5xx."""
    url = f"{server.client.inference_url}/v2/models/{MODEL}/infer"
    headers = server.client.auth_headers("inference")
    names = sorted(EXPECTED_TOP1) * 2
    bad = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGk=", "aGk="]}]}

    def send(i: int) -> tuple[str, requests.Response]:
        image = photos[f"{names[i // 3]}.jpg"].read_bytes()
        if i % 3 == 0:
            return "raw", requests.post(f"{server.client.inference_url}/predictions/{MODEL}", data=image,
                                        headers={**headers, "Content-Type": "image/jpeg"}, timeout=60)
        if i % 3 == 1:
            return "v2", requests.post(url, json=v2(image, f"r{i}"), headers=headers, timeout=60)
        return "bad", requests.post(url, json=bad, headers=headers, timeout=60)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(3 * len(names))))
    for i, (kind, resp) in enumerate(answers):
        if kind == "bad":
            assert resp.status_code == 400 and resp.json()["error"].startswith("TooManyImages"), resp.text
            continue
        assert resp.status_code == 200, resp.text
        assert top_index(resp.json()) in EXPECTED_TOP1[names[i // 3]], (i, resp.text)
        if kind == "v2":
            assert resp.json()["id"] == f"r{i}"
