"""Handler-side metrics (declared in config/metrics.yaml) that explain where latency goes.

Metrics must never fail a request: every emit is guarded.
"""

from __future__ import annotations

import logging
import time

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)


class HandlerMetrics:
    def __init__(self, metrics, model_name: str) -> None:
        self._metrics = metrics
        self._model = Dimension("ModelName", model_name)

    def _emit(self, name: str, value: float, unit: str, metric_type: MetricTypes,
              extra: list[Dimension] | None = None) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.add_metric(name, value, unit, dimensions=[self._model, *(extra or [])],
                                     metric_type=metric_type)
        except Exception:  # a metrics bug must not cost a prediction
            logger.debug("metric %s not emitted", name, exc_info=True)

    def stage(self, stage: str, start: float, batch_size: int) -> None:
        """Milliseconds per request spent in one handler stage."""
        ms = (time.perf_counter() - start) * 1000.0 / max(batch_size, 1)
        self._emit(f"Handler{stage.capitalize()}Ms", ms, "ms", MetricTypes.HISTOGRAM)

    def batch_size(self, size: int) -> None:
        self._emit("HandlerBatchSize", size, "count", MetricTypes.HISTOGRAM)

    def input_error(self, error_type: str) -> None:
        self._emit("HandlerInputErrors", 1, "count", MetricTypes.COUNTER,
                   [Dimension("ErrorType", error_type)])
