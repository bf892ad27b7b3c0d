"""Cheap bounds on what a request may carry, through a real server: a query string naming `data`
and `image` does not shadow the posted image, deep JSON and thousands of form fields are 400
JSON errors, and eight worst-case JSON bodies at once are each refused with a 4xx JSON error
while no worker's memory grows past the bound SECURITY.md states."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.bodies import DEEP, WORST_JSON
from tests.support.servers import MODEL
from tests.support.workers import WorkerCost


@pytest.fixture(scope="module")
def url(server) -> str:
    return f"{server.client.inference_url}/predictions/{MODEL}"


@pytest.mark.e2e
def test_served_query_string_does_not_shadow_the_image(server, url, photos):
    resp = requests.post(url, params={"data": "x", "image": "y"}, data=photos["cat.jpg"].read_bytes(),
                         headers={**server.client.auth_headers("inference"), "Content-Type": "image/jpeg"},
                         timeout=30)
    assert resp.status_code == 200 and resp.json()["predictions"], resp.text


@pytest.mark.e2e
def test_served_deep_json_is_400_json(server, url):
    headers = {**server.client.auth_headers("inference"), "Content-Type": "application/json"}
    resp = requests.post(url, data=DEEP, headers=headers, timeout=30)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["type"] == "InvalidJSON"


@pytest.mark.e2e
def test_served_thousands_of_form_fields_are_400(server, url, photos):
    fields = {f"f{i}": (None, "x") for i in range(2000)}
    fields["data"] = ("cat.jpg", io.BytesIO(photos["cat.jpg"].read_bytes()), "image/jpeg")
    resp = requests.post(url, files=fields, headers=server.client.auth_headers("inference"), timeout=60)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["type"] == "TooManyFields"


MEMORY_BOUND_MIB = 256  # SECURITY.md: a worker's RSS growth under 8 such bodies at once


@pytest.mark.e2e
def test_eight_worst_case_json_bodies_at_once_stay_within_the_memory_bound(server, url):
    """Two of each body at once, as application/json: each a 4xx JSON answer, and no worker's
    RSS grows by more than MEMORY_BOUND_MIB (TorchServe's own json.loads grew one by 740 MB)."""
    bodies = [(name, body) for name, body in WORST_JSON.items() for _ in range(2)]
    headers = {**server.client.auth_headers("inference"), "Content-Type": "application/json"}
    pids = sorted(int(w["pid"]) for w in server.client.workers(MODEL))

    def send(item):
        return item[0], requests.post(url, data=item[1], headers=headers, timeout=120)

    with WorkerCost(pids) as cost, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(send, bodies))
    print(f"\n8 worst-case JSON bodies at once: peak RSS growth of one worker {cost.grew_mib:.0f} MiB, "
          f"largest worker after {cost.rss_after_mib:.0f} MiB, worker CPU {cost.cpu_s:.2f} s")
    for name, resp in answers:
        assert resp.status_code in (400, 415), (name, resp.status_code, resp.text[:200])
        assert resp.json()["type"] in ("InvalidJSON", "UnsupportedMediaType"), (name, resp.text[:200])
    assert cost.grew_mib < MEMORY_BOUND_MIB, cost.grew_mib
    assert sorted(int(w["pid"]) for w in server.client.workers(MODEL)) == pids
