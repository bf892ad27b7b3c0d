"""The benchmark's Triton peer (pytriton, in the peers' environment) answers our v2 answer from
the same request bytes, batches concurrent requests, and survives a bad image (which fails its
batch with 500: pytriton has no per-request error)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from scripts.bench.load import loadtest
from scripts.bench.peers import triton_peer
from scripts.ops import serve
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e

MAX_BATCH = 4
DELAY_US = 20_000  # long enough that 8 requests sent together must share batches


@pytest.fixture(scope="module")
def triton(default_model_dir):
    port = serve.free_ports(1)[0]
    proc = triton_peer.start(default_model_dir, port, instances=1, max_batch=MAX_BATCH,
                             delay_us=DELAY_US, model=MODEL)
    yield port
    triton_peer.stop(proc)


def post(address: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(address, data=body,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def outputs(answer: dict) -> dict[str, list]:
    """Each v2 output's data, flat (ours are [5], Triton's [1, 5])."""
    return {o["name"]: o["data"] for o in answer["outputs"]}


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{MODEL}/stats", timeout=10) as resp:
        return json.loads(resp.read())["model_stats"][0]


@pytest.mark.parametrize("name", ["cat.jpg", "coffee.png"])
def test_triton_answers_our_v2_answer_from_the_same_bytes(server, photos, triton, name):
    body = loadtest.request_bodies([photos[name].read_bytes()], "v2")[0]  # what the benchmark sends
    status, theirs = post(triton_peer.url(triton, MODEL), body)
    ours = requests.post(f"{server.client.inference_url}/v2/models/{MODEL}/infer", data=body,
                         headers={"Content-Type": "application/json",
                                  **server.client.auth_headers("inference")}, timeout=60)
    assert status == 200 and ours.status_code == 200, (theirs, ours.text)
    theirs, ours = outputs(theirs), outputs(ours.json())
    assert theirs["labels"] == ours["labels"] and theirs["indices"] == ours["indices"]
    assert theirs["probabilities"] == pytest.approx(ours["probabilities"], abs=1e-4)


def test_triton_batches_concurrent_requests(photos, triton):
    body = loadtest.request_bodies([photos["cat.jpg"].read_bytes()], "v2")[0]
    before = stats(triton)
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda _: post(triton_peer.url(triton, MODEL), body)[0], range(8)))
    after = stats(triton)
    assert codes == [200] * 8
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 8 and executions < inferences, (inferences, executions)
    sizes = {b["batch_size"] for b in after["batch_stats"]}
    assert max(sizes) > 1 and max(sizes) <= MAX_BATCH, sizes


def test_a_bad_image_fails_its_batch_with_500_and_the_server_answers_the_next(photos, triton):
    address = triton_peer.url(triton, MODEL)
    bad = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                  "data": [base64.b64encode(b"not an image").decode()]}]}).encode()
    status, answer = post(address, bad)
    assert status == 500 and "UnsupportedMedia" in answer["error"], answer
    good = loadtest.request_bodies([photos["cat.jpg"].read_bytes()], "v2")[0]
    assert post(address, good)[0] == 200
