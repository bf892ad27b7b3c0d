"""End to end: a real TorchServe on loopback serving the built .mar, spoken to over HTTP."""

import json

import pytest
import requests

from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e


def check_prediction(resp, expected: set[int]) -> dict:
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert body["model"] == MODEL and body["version"] == "1.0"
    preds = body["predictions"]
    assert len(preds) == 5
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1.0001
    assert preds[0]["index"] in expected, preds
    assert isinstance(preds[0]["label"], str) and preds[0]["label"]
    return body


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_real_photos_over_http(server, photos, name, ext):
    resp = server.client.predict(MODEL, photos[f"{name}.{ext}"].read_bytes(),
                                 headers={"Content-Type": f"image/{'jpeg' if ext == 'jpg' else ext}"})
    check_prediction(resp, EXPECTED_TOP1[name])


def test_multipart_upload(server, photos):
    c = server.client
    resp = requests.post(f"{c.inference_url}/predictions/{MODEL}", headers=c.auth_headers("inference"),
                         files={"data": ("cat.jpg", photos["cat.jpg"].read_bytes(), "image/jpeg")},
                         timeout=10)
    body = check_prediction(resp, EXPECTED_TOP1["cat"])
    assert body["predictions"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}


def test_request_without_token_is_refused(server, photos):
    c = server.client
    resp = requests.post(f"{c.inference_url}/predictions/{MODEL}", data=photos["cat.jpg"].read_bytes(),
                         headers={"Content-Type": "image/jpeg"}, timeout=10)
    assert resp.status_code in (400, 401, 403)
    assert "predictions" not in resp.text


def test_workers_ready_and_ping(server):
    assert server.client.ready_workers(MODEL) == 2
    assert json.loads(server.client.ping().text)["status"] == "Healthy"
