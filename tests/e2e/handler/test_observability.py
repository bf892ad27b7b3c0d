"""Request ids, JSON logs and OpenTelemetry traces, against a real TorchServe whose workers
export to an OTLP/HTTP receiver in this test (POST /v1/traces, protobuf, on loopback): answers
carry the request id, worker and access logs are JSON lines carrying it, and each request's
spans (its stages under one `predict` span) continue the caller's trace, or start their own."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.support.servers import MODEL, serving
from tests.support.traces import PARENT_SPAN, TRACE_ID, TRACEPARENT

STAGES = {"decode", "preprocess", "inference", "postprocess"}


class Receiver(http.server.ThreadingHTTPServer):
    """Every span the workers export: name, trace id, span id, parent span id (hex)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    def wait_for(self, predicate, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout  # the batch span processor flushes every 0.2 s here
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            time.sleep(0.2)
        return []


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
        if ok:
            request = ExportTraceServiceRequest.FromString(body)
            spans = [{"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                      "parent": s.parent_span_id.hex(), "start": s.start_time_unix_nano,
                      "end": s.end_time_unix_nano,
                      "attributes": {a.key: a.value for a in s.attributes}}
                     for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            with self.server.lock:
                self.server.spans.extend(spans)
        self.send_response(200 if ok else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def traced(tmp_path_factory, default_mar):
    """(server, receiver): the default model served with OTEL_EXPORTER_OTLP_ENDPOINT set."""
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}",
           "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_SERVICE_NAME": "observability-test"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # TorchServe's frontend hands its environment to the workers
    try:
        with serving(tmp_path_factory.mktemp("traced"), default_mar.parent) as server:
            yield server, receiver
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        receiver.shutdown()
        receiver.server_close()


def _jpg(photos) -> bytes:
    return sorted(p for name, p in photos.items() if name.endswith(".jpg"))[0].read_bytes()


def _log_lines(path: Path, predicate, timeout: float = 15.0) -> tuple[list[str], list[dict]]:
    """(every line of the log, the parsed ones matching predicate), once one matches."""
    deadline = time.monotonic() + timeout  # the frontend copies worker lines asynchronously
    while True:
        lines = path.read_text().splitlines() if path.is_file() else []
        parsed = [json.loads(line) for line in lines]  # every line must be one JSON object
        found = [p for p in parsed if predicate(p)]
        if found or time.monotonic() > deadline:
            return lines, found
        time.sleep(0.3)


@pytest.mark.e2e
def test_answers_carry_the_request_id(traced, photos):
    server, _ = traced
    jpg = _jpg(photos)
    resp = server.client.predict(MODEL, jpg, headers={"X-Request-ID": "caller-abc-1"})
    assert resp.status_code == 200 and resp.json()["request_id"] == "caller-abc-1"
    # TorchServe 0.12's frontend writes its own id over the header the handler set.
    own = resp.headers["X-Request-ID"]
    assert own and own != "caller-abc-1"
    for bad in ("has space", "x" * 200):
        resp = server.client.predict(MODEL, jpg, headers={"X-Request-ID": bad})
        assert resp.status_code == 200 and resp.json()["request_id"] == resp.headers["X-Request-ID"]
    resp = server.client.predict(MODEL, b"not an image")
    assert resp.status_code == 415 and resp.json()["request_id"] == resp.headers["X-Request-ID"]


@pytest.mark.e2e
def test_worker_and_access_logs_are_json_lines_with_the_id(traced, photos):
    server, _ = traced
    resp = server.client.predict(MODEL, _jpg(photos), headers={"X-Request-ID": "log-line-1"})
    assert resp.status_code == 200
    logs = server.workdir / "logs"
    lines, found = _log_lines(logs / "model_log.log", lambda p: p.get("request_id") == "log-line-1")
    assert lines and len(found) == 1, "one request line per request"
    line = found[0]
    assert line["status"] == 200 and line["batch_size"] == 1 and line["model"] == MODEL
    assert line["torchserve_request_id"] == resp.headers["X-Request-ID"]
    assert set(line["timings_ms"]) == STAGES | {"total"}
    assert all(v >= 0 for v in line["timings_ms"].values())
    assert line["timings_ms"]["total"] >= line["timings_ms"]["inference"]
    # The worker's start-up lines, written before initialize, wrapped by the frontend.
    assert any(json.loads(raw).get("logger") == "MODEL_LOG" for raw in lines)
    assert not any(raw.startswith("[METRICS]") for raw in lines)  # still the frontend's own
    ours = f"/predictions/{MODEL}"
    access_lines, access = _log_lines(logs / "access_log.log",
                                      lambda p: p.get("uri") == ours and p["status"] == 200)
    assert access_lines and access
    assert access[-1]["method"] == "POST" and isinstance(access[-1]["duration_ms"], int)


@pytest.mark.e2e
def test_spans_continue_the_callers_trace(traced, photos):
    server, receiver = traced
    resp = server.client.predict(MODEL, _jpg(photos), headers={"traceparent": TRACEPARENT,
                                                              "X-Request-ID": "traced-1"})
    assert resp.status_code == 200
    roots = receiver.wait_for(lambda s: s["name"] == "predict" and s["trace_id"] == TRACE_ID)
    assert len(roots) == 1, roots
    root = roots[0]
    assert root["parent"] == PARENT_SPAN
    assert root["attributes"]["request.id"].string_value == "traced-1"
    children = receiver.wait_for(lambda s: s["trace_id"] == TRACE_ID and s["parent"] == root["span_id"]
                                 and s["name"] in STAGES)
    assert {s["name"] for s in children} == STAGES
    for span in children:
        assert root["start"] <= span["start"] <= span["end"] <= root["end"]
    by_name = {s["name"]: s for s in children}
    assert by_name["decode"]["end"] <= by_name["inference"]["start"]
    assert by_name["inference"]["attributes"]["batch.size"].int_value == 1
    # A request sent without a traceparent gets a trace of its own.
    resp = server.client.predict(MODEL, _jpg(photos), headers={"X-Request-ID": "untraced-1"})
    assert resp.status_code == 200
    own = receiver.wait_for(lambda s: s["name"] == "predict"
                            and s["attributes"]["request.id"].string_value == "untraced-1")
    assert own and own[0]["trace_id"] != TRACE_ID and own[0]["parent"] == ""
