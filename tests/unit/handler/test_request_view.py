"""Each request's view, as the worker's real headers make it: TorchServe's worker keeps each
input's content type among the request's headers, under the input's name, as a dict."""

from __future__ import annotations

from ts.context import Context, RequestProcessor

from handler.protocols.open_inference import OPEN_INFERENCE
from handler.protocols.plain import PLAIN
from handler.request import request_views


def context_of(*headers: dict) -> Context:
    ctx = Context("m", ".", {}, len(headers), None, "0.12.0")
    ctx.request_processor = [RequestProcessor(h) for h in headers]
    ctx.request_ids = {i: f"ts-{i}" for i in range(len(headers))}
    return ctx


def test_views_read_headers_by_lower_case_name_and_skip_input_content_types():
    ctx = context_of({"body": {"content-type": "image/jpeg"}, "X-Request-ID": "caller-1",
                      "Traceparent": "00-x"},
                     {"data": {"content-type": "application/json"}, "X-Request-ID": "bad id"},
                     {"Describe": "True"})
    first, second, third = request_views(ctx, [{"body": b"\xff\xd8"}, {"body": b'{"inputs": []}'},
                                               {"body": b"{}"}])
    assert first.error is None and first.protocol is PLAIN and first.body is None
    assert dict(first.headers) == {"x-request-id": "caller-1", "traceparent": "00-x"}
    assert (first.request_id, first.torchserve_id, first.refused_id) == ("caller-1", "ts-0", False)
    assert first.header("TRACEPARENT") == "00-x"
    assert second.protocol is OPEN_INFERENCE and second.body.doc == {"inputs": []}
    assert (second.request_id, second.refused_id) == ("ts-1", True)
    assert third.describe and third.protocol is PLAIN and third.body is None  # its body is not read
