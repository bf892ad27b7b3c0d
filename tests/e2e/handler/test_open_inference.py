"""The Open Inference Protocol (KServe v2) against a real TorchServe: a third-party v2 client
(tritonclient) reads the answers as arrays, in JSON and in Triton's binary-data form, and sees a
refusal as a client error; raw, v2 and malformed v2 requests sent together, so that TorchServe
batches them, each get their own answer: none lost or swapped, none a 5xx."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from handler.protocols.open_inference import V2_OUTPUTS
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.open_inference import top_index, v2
from tests.support.servers import MODEL


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
