"""Endpoints and headers the service does not implement never reach the model path: each such
request gets its own answer, and the predictions batched with it are unaffected."""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from scripts.ops import inspect_mar
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e


def test_mixed_explanations_and_predictions(server, photos):
    image = photos["cat.jpg"].read_bytes()
    auth = server.client.auth_headers("inference")
    base = server.client.inference_url

    def send(i: int) -> tuple[str, requests.Response]:
        route = "explanations" if i % 4 == 0 else "predictions"
        resp = requests.post(f"{base}/{route}/{MODEL}", data=image, timeout=60,
                             headers={**auth, "Content-Type": "image/jpeg"})
        return route, resp

    with ThreadPoolExecutor(16) as pool:  # concurrent: requests of both kinds share batches
        results = list(pool.map(send, range(80)))
    for route, resp in results:
        if route == "predictions":
            assert resp.status_code == 200, resp.text
            assert resp.json()["predictions"][0]["index"] in range(281, 286)
        else:
            assert resp.status_code == 501, resp.text
            assert resp.json()["type"] == "NotImplemented"
    assert sum(route == "explanations" for route, _ in results) == 20


def test_client_sent_routing_headers_stay_with_their_request(server, photos):
    # The frontend passes a client's `describe` header through to the handler (not `explain`):
    # that request alone gets the model's description, never its neighbours.
    url = f"{server.client.inference_url}/predictions/{MODEL}"
    auth = {**server.client.auth_headers("inference"), "Content-Type": "image/jpeg"}
    image = photos["cat.jpg"].read_bytes()
    explain = requests.post(url, data=image, timeout=60, headers={**auth, "explain": "True"})
    assert explain.status_code == 200 and explain.json()["predictions"], explain.text

    def send(i: int) -> requests.Response:
        extra = {"describe": "True"} if i % 4 == 0 else {}
        return requests.post(url, data=image, timeout=60, headers={**auth, **extra})

    with ThreadPoolExecutor(8) as pool:
        answers = [r.json() for r in pool.map(send, range(24))]
    for i, body in enumerate(answers):
        if i % 4 == 0:
            assert body["model"] == MODEL and "predictions" not in body, body
        else:
            assert body["predictions"][0]["index"] in range(281, 286), body


def test_customized_description_from_the_management_api(server):
    resp = requests.get(f"{server.client.management_url}/models/{MODEL}",
                        params={"customized": "true"}, timeout=60,
                        headers=server.client.auth_headers("management"))
    assert resp.status_code == 200, resp.text
    custom = resp.json()[0]["customizedMetadata"]
    assert custom["model"] == MODEL and custom["backend"] == "onnx"
    # what the worker loaded, as verified at load
    assert len(custom["manifest_sha256"]) == 64 and "model.onnx" in custom["files"]
    assert custom["validation"]["passed"] and custom["preprocessing"]["input_size"] == 224
    assert custom["versions"]["exported"]["torch"] and custom["versions"]["running"]["onnxruntime"]


def test_inspect_mar_compares_a_running_server_with_an_archive(server, default_mar, tmp_path, capsys):
    """Same archive: exit 0. A copy with one changed file: exit 1, the file named."""
    key = server.client.keys.key("management")
    url = server.client.management_url
    assert inspect_mar.main([str(default_mar), "--server", url, "--key", key]) == 0
    assert "SAME" in capsys.readouterr().out
    changed = tmp_path / default_mar.name
    with zipfile.ZipFile(default_mar) as zin, zipfile.ZipFile(changed, "w") as zout:
        for entry in zin.infolist():
            data = zin.read(entry)
            zout.writestr(entry, data + b" " if entry.filename == "index_to_name.json" else data)
    problems = inspect_mar.compare_running(url, MODEL, inspect_mar.inspect(changed), key)
    assert len(problems) == 1 and problems[0].startswith("index_to_name.json: server "), problems
    assert inspect_mar.main([str(changed), "--server", url, "--key", key]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and "index_to_name.json" in out and "model.onnx" not in out
    assert inspect_mar.main([str(default_mar), "--server", url, "--key", "wrong"]) == 2
