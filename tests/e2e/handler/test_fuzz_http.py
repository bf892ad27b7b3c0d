"""Bounded HTTP fuzzing of every endpoint and method of a real server, on loopback.

Random methods, paths (every API route plus garbage), content types, headers (the key, and those
the handler reads per request: Triton's binary-data length, describe, explain, X-Request-ID) and
bodies (random bytes, cut and corrupted JPEGs, any JSON value, multipart) against the inference,
management and metrics ports, with and without the bearer key. State-changing management calls of
the first fuzz go without a key (refused); a second fuzz sends them WITH the management key: POST,
PUT and DELETE on /models and /workflows with fuzzed names and parameters (URLs outside and inside
the model store, through `..` and %-encoded, garbage; worker counts that do not change the served
model's two). What must hold: no 5xx except those documented in docs/inputs-and-errors.md (a
form-urlencoded body fails in the frontend before any handler; 501 for explanations, which this
model does not serve), no worker lost (the same pids), every good prediction sent beside the fuzz
answered 200, no model or workflow registered and nothing copied into the workflow store, and the
server still classifies afterwards. The long run is `FUZZ_EXAMPLES=5000 pytest
tests/e2e/handler/test_fuzz_http.py` (results in docs/inputs-and-errors.md).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_classifier_client.contract import AUTH_REFUSED

from scripts import repo
from scripts.ops.torchserve_http import sample_jpeg
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
JPEG = sample_jpeg()
MULTIPART = (b'--xyz\r\nContent-Disposition: form-data; name="data"; filename="a.jpg"\r\n\r\n'
             + JPEG + b"\r\n--xyz--\r\n")
QUERIES = ["", "?data=x", "?min_worker=0", "?url=http://127.0.0.1:1/x.mar", "?customized=true"]
ROUTES = ["/", "/ping", f"/predictions/{MODEL}", f"/predictions/{MODEL}/1.0", f"/explanations/{MODEL}",
          f"/v2/models/{MODEL}/infer", f"/v1/models/{MODEL}:predict", "/models", f"/models/{MODEL}",
          f"/models/{MODEL}/all", "/metrics", "/api-description", "/token", "/workflows", "/nope"]
CONTENT_TYPES = [None, "image/jpeg", "application/octet-stream", "application/json", "text/plain",
                 "multipart/form-data; boundary=xyz", "image/png", "application/x-www-form-urlencoded",
                 "text/html; charset=utf-16"]
bodies = st.one_of(
    st.binary(max_size=2048),
    st.integers(1, len(JPEG) - 1).map(lambda n: JPEG[:n]),
    st.tuples(st.integers(0, len(JPEG) - 1), st.integers(0, 255)).map(
        lambda t: JPEG[:t[0]] + bytes([t[1]]) + JPEG[t[0] + 1:]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda kids: (st.lists(kids, max_size=4)
                               | st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                 max_leaves=20).map(lambda doc: json.dumps(doc).encode()),
    st.just(MULTIPART),
)
requests_ = st.fixed_dictionaries({
    "api": st.sampled_from(["inference", "management", "metrics"]),
    "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    "route": st.one_of(st.sampled_from(ROUTES), st.text(st.characters(codec="ascii", exclude_characters="?#"),
                                                         max_size=30).map(lambda t: "/" + t)),
    "query": st.sampled_from(QUERIES),
    "content_type": st.sampled_from(CONTENT_TYPES),
    "body": bodies,
    "keyed": st.booleans(),
    # Headers the handler reads per request: Triton's binary-data length, the describe and explain
    # routes, the caller's request id.
    "headers": st.dictionaries(
        st.sampled_from(["Inference-Header-Content-Length", "describe", "explain", "X-Request-ID"]),
        st.one_of(st.sampled_from(["1", "0", "-5", "3", "99999999999999999999", "True", "x", ""]),
                  st.text(st.characters(codec="latin-1", exclude_categories=("Cc",)),
                          max_size=20).map(str.strip)),
        max_size=3),
})


def documented_5xx(req: dict, resp: requests.Response) -> bool:
    """The 5xx docs/inputs-and-errors.md lists: the frontend's own failure on a form-urlencoded
    body, and our 501 for explanations (not served, per request)."""
    if resp.status_code == 500 and req["content_type"] == "application/x-www-form-urlencoded":
        return req["body"] != b""
    return (resp.status_code == 501 and "/explanations/" in req["route"]
            and (req["method"] == "HEAD" or "NotImplemented" in resp.text))  # HEAD: no body


def send(server, req: dict) -> requests.Response:
    client = server.client
    base = {"inference": client.inference_url, "management": client.management_url,
            "metrics": client.metrics_url}[req["api"]]
    state_changing = req["api"] == "management" and req["method"] not in ("GET", "HEAD", "OPTIONS")
    headers = dict(client.auth_headers(req["api"]) if req["keyed"] and not state_changing else {})
    headers.update(req["headers"])
    if req["content_type"]:
        headers["Content-Type"] = req["content_type"]
    return requests.request(req["method"], base + req["route"] + req["query"], data=req["body"],
                            headers=headers, timeout=30)


@pytest.fixture(scope="module")
def pids_before(server):
    return sorted(int(w["pid"]) for w in server.client.workers(MODEL))


class Neighbours:
    """Good predictions sent one after another beside the fuzz, from the first fuzzed request to
    `stop`: whatever the fuzz sends, each must be answered 200 (a request fails only itself).
    Bounded: at most MAX requests, and never past `stop` or 30 minutes."""

    MAX = 20_000

    def __init__(self, server) -> None:
        self.url = f"{server.client.inference_url}/predictions/{MODEL}"
        self.client = server.client
        self.statuses: list[tuple[int, str]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 1800
        with requests.Session() as session:
            while not self.done.wait(0.02) and len(self.statuses) < self.MAX and time.monotonic() < deadline:
                resp = session.post(self.url, data=JPEG, timeout=60, headers={
                    **self.client.auth_headers("inference"), "Content-Type": "image/jpeg"})
                self.statuses.append((resp.status_code, resp.text[:200]))

    def stop(self) -> list[tuple[int, str]]:
        self.done.set()
        self.thread.join(timeout=90)
        return self.statuses


@pytest.fixture(scope="module")
def neighbours(server):
    watcher = Neighbours(server)
    yield watcher
    watcher.stop()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=requests_)
def test_no_undocumented_5xx(server, pids_before, neighbours, req):
    resp = send(server, req)
    assert resp.status_code < 500 or documented_5xx(req, resp), (
        req, resp.status_code, resp.text[:300])


STORE = repo.MODEL_STORE
URLS = [f"{MODEL}.mar", f"file://{STORE}/{MODEL}.mar", f"file://{STORE}/../../../../../etc/passwd",
        f"file://{STORE}/%2E%2E%2F%2E%2E%2Fetc%2Fx.mar", "file:///etc/passwd", "file:///tmp/x.war",
        "http://127.0.0.1:1/x.mar", "https://example.invalid/x.war", "/tmp", str(STORE), "x.war",
        "", "%00", "file://", "s3://bucket/x.mar", "../x.mar"]
# Worker counts: garbage and overflow (on other names; the served model's PUT always states 2).
WORKER_COUNTS = ["2", "-1", "x", "", "2.5", "99999999999999999999", "%00", " 2"]
NAMES = [MODEL, "nope", "intruder", "", "%2E%2E", "a" * 300]
keyed_changes = st.fixed_dictionaries({
    "method": st.sampled_from(["POST", "PUT", "DELETE"]),
    "what": st.sampled_from(["models", "workflows"]),
    "name": st.sampled_from(NAMES),
    "version": st.sampled_from(["", "/1.0", "/9.9", "/all", "/x"]),
    "params": st.dictionaries(
        st.sampled_from(["url", "min_worker", "max_worker", "initial_workers", "batch_size",
                         "max_batch_delay", "response_timeout", "synchronous", "timeout",
                         "model_name", "workflow_name", "handler", "runtime", "s3_sse_kms"]),
        st.one_of(st.sampled_from(URLS), st.sampled_from(WORKER_COUNTS), st.text(max_size=12)),
        max_size=4),
})


def keyed_request(req: dict) -> tuple[str, str, dict] | None:
    """(method, path, params) of a keyed state-changing call the fuzz may send: never one that
    unregisters or rescales the served model (that is the operators' tool, allowed with the key)."""
    params = dict(req["params"])
    path = f"/{req['what']}"
    if req["method"] != "POST":
        path += f"/{req['name']}{req['version']}" if req["name"] else ""
    if req["what"] == "models" and req["name"] == MODEL and req["version"] in ("", "/1.0", "/all"):
        if req["method"] == "DELETE":
            return None
        # TorchServe reads a missing or unparsable min_worker as 1 (max_worker as min_worker):
        # a PUT on the served model states both, 2.
        params.update(min_worker="2", max_worker="2")
    return req["method"], path, params


@pytest.fixture(scope="module")
def workflow_store_before(server):
    store = server.properties["workflow_store"]
    return store, sorted(p.name for p in Path(store).iterdir())


@settings(max_examples=max(EXAMPLES // 2, 50), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=keyed_changes)
def test_keyed_state_changing_calls(server, pids_before, workflow_store_before, req):
    call = keyed_request(req)
    if call is None:
        return
    method, path, params = call
    client = server.client
    resp = requests.request(method, client.management_url + path, params=params, timeout=60,
                            headers=client.auth_headers("management"))
    assert resp.status_code < 500, (call, resp.status_code, resp.text[:300])
    assert AUTH_REFUSED not in resp.text, (call, resp.text[:300])  # the key was good: judged on merit
    if method == "POST":  # registration stays closed, with the key too
        assert resp.status_code >= 400, (call, resp.status_code, resp.text[:300])


def test_after_the_fuzzing_the_same_workers_classify(server, pids_before, workflow_store_before,
                                                      neighbours):
    answered = neighbours.stop()
    failed = [a for a in answered if a[0] != 200]
    assert answered and not failed, (len(answered), failed[:5])
    assert sorted(int(w["pid"]) for w in server.client.workers(MODEL)) == pids_before
    assert server.client.models() == [MODEL]
    store, listed = workflow_store_before
    assert sorted(p.name for p in Path(store).iterdir()) == listed
    workflows = requests.get(server.client.management_url + "/workflows", timeout=30,
                             headers=server.client.auth_headers("management"))
    assert workflows.status_code == 200 and workflows.json()["workflows"] == [], workflows.text
    resp = server.client.predict(MODEL, JPEG)
    assert resp.status_code == 200 and resp.json()["predictions"]
