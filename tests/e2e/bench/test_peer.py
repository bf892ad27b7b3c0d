"""The benchmark's FastAPI peer answers exactly what our TorchServe answers, on loopback."""

from __future__ import annotations

import pytest

from scripts.bench.peers import fastapi_peer
from scripts.ops import serve
from tests.support.answers import post_bytes
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def peer_url(default_model_dir):
    port = serve.free_ports(1)[0]
    proc = fastapi_peer.start(default_model_dir, port, workers=1)
    yield f"http://127.0.0.1:{port}/predictions/{MODEL}"
    fastapi_peer.stop(proc)


@pytest.mark.parametrize("name", ["cat.jpg", "coffee.png"])
def test_peer_answers_our_json(server, photos, peer_url, name):
    body = photos[name].read_bytes()
    status, answer = post_bytes(peer_url, body)
    ours = server.client.predict(MODEL, body)
    assert status == 200 and ours.status_code == 200
    # The same answer but for its request id (our handler's, handler/request.py; the peer's
    # answers carry none).
    ours_body = ours.json()
    assert ours_body.pop("request_id")
    assert answer == ours_body


def test_peer_refuses_bad_input_like_ours(peer_url):
    status, answer = post_bytes(peer_url, b"not an image")
    assert 400 <= status < 500 and answer["code"] == status and answer["message"]
