"""The worker's observability, behind one object wrapped around the handler's stages: metrics
through TorchServe's metrics API, one JSON log line per request (handler/logs.py) and
OpenTelemetry spans (handler/tracing.py). `Observability.following(batch)` is held around a
batch's stages, `stage(name)` around each stage; nothing is called between them.

How the metrics reach Prometheus (TorchServe 0.12, `metrics_mode=prometheus`): the worker prints
one `[METRICS]` log line per observation; the Java frontend parses it and updates the metric of
the same name declared under `model_metrics` in config/metrics.yaml, using the dimension values
of the line plus `Hostname` as labels. Two rules follow, both checked by
tests/e2e/handler/test_metrics_prometheus.py:
- the dimensions emitted here must be exactly, in order, those declared in the YAML (the worker's
  metrics cache refuses the line otherwise and the metric never reaches /metrics);
- histograms get the Prometheus client's default buckets (0.005 ... 10), so values are emitted in
  seconds and megapixels, the units those buckets resolve.

Errors are counted by kind (handler/errors.py): client errors (InputError, 4xx and 501) in
handler_input_errors_total, server faults (ServerFault, 500) in handler_server_errors_total,
both by `ErrorType`, so a wave of bad images never reads as a bug and a bug never hides among them.

Observing must never fail a request: every emit, log line and span is guarded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from handler import logs, tracing
from handler.errors import HandlerError, InputError

if TYPE_CHECKING:
    from handler.request import RequestView
    from handler.responses import Answer

logger = logging.getLogger(__name__)

# Names as declared in config/metrics.yaml (model_metrics).
PREPROCESS = "handler_preprocess_seconds"    # per request: its own decode + resize + normalize
INFERENCE = "handler_inference_seconds"      # per batch: the forward pass
POSTPROCESS = "handler_postprocess_seconds"  # per batch: softmax, top-k, one answer per request
REQUEST = "handler_request_seconds"          # per request: its batch's start to its answers
BATCH_SIZE = "handler_batch_size"            # per batch: requests TorchServe put together
IMAGE_MEGAPIXELS = "handler_image_megapixels"  # per request: width x height of the decoded image
INPUT_ERRORS = "handler_input_errors_total"  # per request refused as the client's error, by type
SERVER_ERRORS = "handler_server_errors_total"  # per request failed by a server fault, by type
DECODE = "decode"  # per request: its payload to image bytes; a span and log timing, no metric
# Each timed name's stage in logs and spans.
STAGES = {DECODE: "decode", PREPROCESS: "preprocess", INFERENCE: "inference", POSTPROCESS: "postprocess"}


HANDLER_TIME = "HandlerTime"  # per batch, in ms: TorchServe's own metric of the handler's time


class Followed(Protocol):
    """What `following` reads from a batch: its requests and, once answered, their answers and
    the errors that failed some of them."""

    views: Sequence[RequestView]
    errors: dict[int, HandlerError]
    answers: Sequence[Answer] | None


class Observability:
    def __init__(self, metrics, model_name: str, tracer: tracing.Tracer | None = None) -> None:
        self._metrics = metrics
        # Level is added by TorchServe when missing; passing it fixes the dimension order.
        self._dims = [Dimension("ModelName", model_name), Dimension("Level", "Model")]
        self.model_name = model_name
        self.tracer = tracer
        self._log: logs.BatchLog | None = None  # the log of the batch being followed, if any

    @classmethod
    def for_worker(cls, metrics, model_name: str) -> Observability:
        """The worker's: metrics, its log lines in JSON from now on, its traces exported when an
        OTLP endpoint is configured (handler/tracing.py)."""
        logs.install()
        return cls(metrics, model_name, tracing.from_env(model_name))

    @contextmanager
    def following(self, batch: Followed) -> Iterator[None]:
        """Around one batch's stages: its size; then, once it is answered, each error counted
        by kind, each request's handler time, one log line per request (with its spans)."""
        start = time.perf_counter()
        self._log = logs.BatchLog(batch.views, self.model_name, self.tracer)
        self.observe(BATCH_SIZE, len(batch.views))
        try:
            yield
        finally:
            log, self._log = self._log, None
        elapsed = time.perf_counter() - start
        for err in batch.errors.values():
            self.error(err)
        # Every request of the batch spent the whole batch's handler time.
        self.observe(REQUEST, elapsed, times=len(batch.views))
        self._add_time(HANDLER_TIME, round(elapsed * 1000, 2))
        log.finish([answer.status for answer in batch.answers or ()])

    def _add_time(self, name: str, ms: float) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.add_time(name, ms, None, "ms")
        except Exception:  # a metrics bug must not cost a prediction
            logger.debug("metric %s not emitted", name, exc_info=True)

    def _emit(self, name: str, value: float, unit: str, metric_type: MetricTypes,
              extra: list[Dimension] | None = None) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.add_metric(name, value, unit, dimensions=[*self._dims, *(extra or [])],
                                     metric_type=metric_type)
        except Exception:  # a metrics bug must not cost a prediction
            logger.debug("metric %s not emitted", name, exc_info=True)

    def observe(self, name: str, value: float, times: int = 1) -> None:
        """One histogram observation, repeated `times` times (once per request of a batch)."""
        for _ in range(times):
            self._emit(name, round(value, 6), "Seconds" if name.endswith("seconds") else "Count",
                       MetricTypes.HISTOGRAM)

    @contextmanager
    def stage(self, name: str, times: int = 1, request: int | None = None) -> Iterator[None]:
        """Observe the block's wall time under `name` when it completes; a block that raises is
        not observed (a refused request is counted by its error, not in a stage's latency).
        `request`: the index of the request the block works for (None: the whole batch), for
        the followed batch's log lines and spans, which also record a block that raised."""
        start, start_ns = time.perf_counter(), time.time_ns()
        try:
            yield
        except BaseException:
            self._record(name, request, start_ns, failed=True)
            raise
        elapsed = time.perf_counter() - start
        self._record(name, request, start_ns, failed=False)
        if name != DECODE:
            self.observe(name, elapsed, times)

    def _record(self, name: str, request: int | None, start_ns: int, failed: bool) -> None:
        if self._log is not None:
            self._log.stage(STAGES.get(name, name), request, start_ns, time.time_ns(), failed)

    def image(self, width: int, height: int) -> None:
        """Megapixels of an image that preprocessing accepted (its header's size)."""
        self.observe(IMAGE_MEGAPIXELS, width * height / 1e6)

    def error(self, err: HandlerError) -> None:
        """Count one failed request in its kind's counter."""
        name = INPUT_ERRORS if isinstance(err, InputError) else SERVER_ERRORS
        self._emit(name, 1, "Count", MetricTypes.COUNTER, [Dimension("ErrorType", err.error_type)])
