"""The worker's logs as JSON, one object per line, and one line per request.

TorchServe's worker logs through Python's logging to its stdout (`%(message)s`), which the
frontend copies line by line into model_log.log (config/log4j2.xml writes a line that is already
a JSON object as it is and wraps any other line in one). `install` gives the worker's stdout
handler a JsonFormatter, so every record logged after `initialize` is a JSON object. Lines the
frontend parses are left exactly as they are: `[METRICS]...` (the metrics it turns into
Prometheus series), `[PID]...` and `Torch worker started.`.

`BatchLog` follows one batch for handler/observability.py: the stage timings its `stage` records,
and at the end one `request` line per request with its id (its view's: handler/request.py),
status, batch size and timings, and its spans when tracing is on (handler/tracing.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from handler import tracing

if TYPE_CHECKING:
    from handler.request import RequestView

logger = logging.getLogger("handler.requests")
# Lines TorchServe's frontend reads for itself (WorkerLifeCycle's ReaderThread patterns).
_FRONTEND_LINES = ("[METRICS]", "[PID]", "Torch worker started.")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, pid, the record's `fields`
    (a dict passed as `extra={"fields": ...}`) and the exception, if any, as text."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith(_FRONTEND_LINES):
            return message
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "level": record.levelname, "logger": record.name, "message": message, "pid": record.process}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        # One line each: json.dumps escapes every newline a message or traceback holds.
        return json.dumps(line, default=str, ensure_ascii=False, separators=(",", ":"))


def install() -> int:
    """Give TorchServe's worker stdout/stderr log handlers the JsonFormatter; returns how many.

    Only plain StreamHandlers on the process's stdout or stderr are changed (what the worker's
    logging.basicConfig made): a test runner's capture handlers keep their format."""
    count = 0
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr,
                                                                         sys.__stdout__, sys.__stderr__):
            handler.setFormatter(JsonFormatter())
            count += 1
    return count


@dataclass
class Stage:
    name: str
    request: int | None  # None: the whole batch's stage (inference, postprocess)
    start_ns: int
    end_ns: int
    failed: bool = False

    @property
    def ms(self) -> float:
        return round((self.end_ns - self.start_ns) / 1e6, 3)


class BatchLog:
    """One batch's requests, from the handler taking it to the answers leaving."""

    def __init__(self, views: Sequence[RequestView], model: str, tracer=None) -> None:
        self.size = len(views)
        self.model = model
        self.tracer = tracer
        self.start_ns = time.time_ns()
        self.stages: list[Stage] = []
        self.requests = views

    def stage(self, name: str, request: int | None, start_ns: int, end_ns: int, failed: bool) -> None:
        self.stages.append(Stage(name, request, start_ns, end_ns, failed))

    def finish(self, statuses: Sequence[int]) -> None:
        """One log line and, when tracing is on, the spans of each request answered with
        `statuses`. Never fails the batch."""
        end_ns = time.time_ns()
        for req, status in zip(self.requests, statuses):
            try:
                self._report(req, status, end_ns)
            except Exception:  # a log or trace bug must not cost a prediction
                logger.debug("request %s not reported", req.request_id, exc_info=True)

    def timings(self, idx: int, end_ns: int) -> dict[str, float]:
        mine = {s.name: s.ms for s in self.stages if s.request in (idx, None)}
        mine["total"] = round((end_ns - self.start_ns) / 1e6, 3)
        return mine

    def _report(self, req: RequestView, status: int, end_ns: int) -> None:
        fields = {"request_id": req.request_id, "torchserve_request_id": req.torchserve_id,
                  "model": self.model, "status": status, "batch_size": self.size,
                  "timings_ms": self.timings(req.idx, end_ns)}
        if req.refused_id:
            fields["caller_request_id_refused"] = True
        if self.tracer is not None:
            fields.update(self.tracer.emit(self, req, status, end_ns))
        else:  # not traced here, but the caller's trace id still joins this line to its trace
            fields.update(tracing.ids_of(req.header(tracing.TRACEPARENT)))
        logger.info("request", extra={"fields": fields})
