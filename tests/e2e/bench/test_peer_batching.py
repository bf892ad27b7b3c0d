"""The benchmark's batching peer (BentoML, scripts/bench/peers/batching_peer.py) answers what our
TorchServe answers, batches concurrent requests, and answers a bad image alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from scripts.bench.peers import batching_peer
from scripts.ops import serve
from tests.support.answers import post_bytes
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e

BURST = 8


@pytest.fixture(scope="module")
def peer(default_model_dir):
    """(port, URL) of one peer: one worker, batches of up to 4."""
    port = serve.free_ports(1)[0]
    proc = batching_peer.start(default_model_dir, port, workers=1, max_batch=4)
    yield port, batching_peer.url(port, MODEL)
    batching_peer.stop(proc)


def burst(url: str, bodies: list[bytes]) -> list[tuple[int, dict]]:
    """All bodies sent at once, one thread each; the answers in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: post_bytes(url, body), bodies))


@pytest.mark.parametrize("name", ["cat.jpg", "coffee.png"])
def test_peer_answers_our_json(server, photos, peer, name):
    body = photos[name].read_bytes()
    status, answer = post_bytes(peer[1], body)
    ours = server.client.predict(MODEL, body)
    assert status == 200 and ours.status_code == 200
    ours_body = ours.json()
    assert ours_body.pop("request_id")  # ours carries one (handler/request.py); the peer's none
    assert answer == ours_body


def test_concurrent_requests_are_batched(photos, peer):
    port, url = peer
    before = batching_peer.batches(port)
    answers = burst(url, [photos["cat.jpg"].read_bytes()] * BURST)
    after = batching_peer.batches(port)
    assert [status for status, _ in answers] == [200] * BURST
    assert len({json.dumps(a, sort_keys=True) for _, a in answers}) == 1
    ((worker, (n_before, items_before)),) = before.items()
    n_after, items_after = after[worker]
    assert items_after - items_before == BURST
    # fewer batches than requests: at least one batch held more than one request
    assert n_after - n_before < BURST, (before, after)


def test_bad_input_is_answered_alone_like_ours(server, photos, peer):
    good = photos["cat.jpg"].read_bytes()
    answers = burst(peer[1], [good, b"not an image", good, good])
    ours = server.client.predict(MODEL, b"not an image")
    ours_body = ours.json()
    ours_body.pop("request_id")
    status, answer = answers[1]
    assert 400 <= status < 500 and status == ours.status_code
    assert answer.keys() == ours_body.keys() and answer["code"] == status and answer["message"]
    assert [s for i, (s, _) in enumerate(answers) if i != 1] == [200, 200, 200]
