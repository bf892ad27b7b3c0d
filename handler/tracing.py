"""OpenTelemetry spans for the handler's stages, exported over OTLP/HTTP (protobuf), continuing
the W3C `traceparent` (and `tracestate`) a request was sent with, else starting its own trace.

On only when an OTLP endpoint is configured, through OpenTelemetry's own environment variables:
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the whole URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (the
exporter adds /v1/traces); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep it off;
the exporter and the batch processor read their other OTEL_* variables (headers, timeout,
OTEL_BSP_SCHEDULE_DELAY, ...) themselves. Off, nothing of OpenTelemetry is imported.

Per request, one trace: a `predict` span (kind SERVER, child of the caller's span when a valid
traceparent came) and under it `decode` and `preprocess` (that request's own), then `inference`
and `postprocess`. Those two run once for the whole batch; each request gets its own copy,
parented under its own `predict`, with the batch's times and `batch.size`: every request's trace
shows the forward pass it waited for, whichever trace the other requests of the batch belong to
(one shared span with links would sit in one trace and be a link away from the others). The
spans are made from the times Observability.stage recorded, after the batch, so tracing adds
nothing inside the stages themselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from handler.settings import ConfigError, boolean

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
# Order of a request's stage spans, the batch's included.
STAGE_ORDER = ("decode", "preprocess", "inference", "postprocess")
SUPPORTED_PROTOCOL = "http/protobuf"


def ids_of(traceparent: str | None) -> dict[str, str]:
    """{"trace_id", "parent_span_id"} of a valid W3C traceparent (version 00), else {}."""
    match = _TRACEPARENT.fullmatch(traceparent.strip()) if traceparent else None
    if match is None or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return {}
    return {"trace_id": match[1], "parent_span_id": match[2]}


def endpoint_of(environ: Mapping[str, str]) -> str | None:
    """The configured OTLP endpoint, or None when tracing is off."""
    if boolean(environ.get("OTEL_SDK_DISABLED", "false")):
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if environ.get(var, SUPPORTED_PROTOCOL) != SUPPORTED_PROTOCOL:
            raise ConfigError(f"environment variable {var}: only {SUPPORTED_PROTOCOL} is "
                              f"exported, got {environ[var]!r}")
    return endpoint


def from_env(model: str, environ: Mapping[str, str] | None = None) -> Tracer | None:
    """A Tracer when an OTLP endpoint is configured, else None (and no OpenTelemetry import)."""
    environ = os.environ if environ is None else environ
    if endpoint_of(environ) is None:
        return None
    return Tracer(model, environ)


class Tracer:
    """The worker's tracer provider, its OTLP/HTTP exporter and batch span processor."""

    def __init__(self, model: str, environ: Mapping[str, str]) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:  # asked for traces: a missing package must not pass silently
            raise ConfigError(f"an OTLP endpoint is configured but OpenTelemetry is not installed "
                              f"({exc.name}): install requirements-serve.txt") from exc
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        service = environ.get("OTEL_SERVICE_NAME") or f"torchserve-{model}"
        # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES.
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self.provider.get_tracer("handler")

    def emit(self, batch, req, status: int, end_ns: int) -> dict[str, str]:
        """One request's spans (see the module's docstring); its trace and span ids for its log line."""
        trace = self._trace
        carrier = {name: req.header(name) for name in (TRACEPARENT, TRACESTATE)}
        carrier = {name: value for name, value in carrier.items() if value}
        parent = self._propagator.extract(carrier)
        attributes = {"request.id": req.request_id, "model.name": batch.model, "batch.size": batch.size,
                      "http.response.status_code": status}
        if req.torchserve_id:
            attributes["torchserve.request.id"] = req.torchserve_id
        root = self._tracer.start_span("predict", context=parent, kind=trace.SpanKind.SERVER,
                                       start_time=batch.start_ns, attributes=attributes)
        inside = trace.set_span_in_context(root)
        stages = [s for s in batch.stages if s.request in (req.idx, None)]
        for stage in sorted(stages, key=lambda s: (s.start_ns, STAGE_ORDER.index(s.name)
                                                   if s.name in STAGE_ORDER else len(STAGE_ORDER))):
            shared = {"batch.size": batch.size} if stage.request is None else None
            span = self._tracer.start_span(stage.name, context=inside, start_time=stage.start_ns,
                                           attributes=shared)
            if stage.failed:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            span.end(end_time=stage.end_ns)
        if status >= 500:
            root.set_status(trace.Status(trace.StatusCode.ERROR))
        root.end(end_time=end_ns)
        context = root.get_span_context()
        return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}

    def shutdown(self) -> None:
        self.provider.shutdown()
