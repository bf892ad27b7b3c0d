"""Request ids and OpenTelemetry tracing, in process: which request ids a caller may set (else
TorchServe's own is used), how a traceparent header is parsed, tracing off without an endpoint
or with OTEL_SDK_DISABLED, and no opentelemetry module imported while it is off."""

from __future__ import annotations

import os
import subprocess
import sys

from handler import request, tracing
from tests.support.servers import MODEL, ROOT
from tests.support.traces import PARENT_SPAN, TRACE_ID, TRACEPARENT


def test_request_ids_validated():
    assert request.acceptable("caller-1.2:3/x+y=z@w")
    for bad in ("", "has space", "quote\"", "x" * 129, "new\nline", "é"):
        assert not request.acceptable(bad)
    assert request.request_id_for("ok-1", "ts-1") == ("ok-1", False)
    assert request.request_id_for("bad id", "ts-1") == ("ts-1", True)
    assert request.request_id_for(None, "ts-1") == ("ts-1", False)


def test_traceparent_parsing_and_off_without_endpoint():
    assert tracing.ids_of(TRACEPARENT) == {"trace_id": TRACE_ID, "parent_span_id": PARENT_SPAN}
    for bad in (None, "", "00-" + "0" * 32 + f"-{PARENT_SPAN}-01", "01-x", TRACEPARENT.upper()):
        assert tracing.ids_of(bad) == {}
    assert tracing.from_env(MODEL, {}) is None
    assert tracing.from_env(MODEL, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                                    "OTEL_SDK_DISABLED": "true"}) is None


def test_tracing_off_imports_no_opentelemetry():
    code = ("import sys, handler.observability, handler.logs, handler.tracing; "
            "sys.exit(any(m.startswith('opentelemetry') for m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60).returncode == 0
