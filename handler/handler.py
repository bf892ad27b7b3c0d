"""TorchServe handler: bytes -> preprocess -> tensor -> inference -> logits -> postprocess -> JSON.

Each request of a batch succeeds or fails on its own: a bad image gets its own 4xx JSON error
(`context.set_response_status(code, message, idx)`) and its neighbours still get predictions.
"""

from __future__ import annotations

import json
import logging
import os
import time
from http.client import responses as HTTP_PHRASES
from pathlib import Path

import torch
from batch import Batch
from handler_metrics import INFERENCE, POSTPROCESS, PREPROCESS, REQUEST, HandlerMetrics
from payload import payload_to_bytes
from preprocessing import InputError, PreprocessConfig, preprocess_bytes
from provenance import verify_model_dir
from runner import load_runner
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

DEFAULTS = {
    "threads": 1,
    "top_k": 5,
    "preprocess_config": "preprocess.json",
    "labels": "index_to_name.json",
    "manifest": "provenance.json",
    "on_integrity_mismatch": "refuse",
}


class ImageClassifierHandler(BaseHandler):
    """Classify images with a TorchScript or ONNX model and its own preprocessing config."""

    def initialize(self, context) -> None:
        self.context = context
        self.manifest = context.manifest
        model_dir = Path(context.system_properties["model_dir"])
        settings = {**DEFAULTS, **(getattr(context, "model_yaml_config", None) or {}).get("handler", {})}
        self.settings = settings
        verify_model_dir(model_dir, settings["manifest"], settings["on_integrity_mismatch"])
        self.preprocess_config = PreprocessConfig.load(model_dir / settings["preprocess_config"])
        self.labels = json.loads((model_dir / settings["labels"]).read_text())
        threads = int(os.environ.get("HANDLER_THREADS", settings["threads"]))
        serialized = self.manifest["model"]["serializedFile"]
        self.runner = load_runner(model_dir / serialized, threads=threads)
        self.top_k = int(settings["top_k"])
        self.model_name = self.manifest["model"].get("modelName", "model")
        self.model_version = self.manifest["model"].get("modelVersion", "1.0")
        self.metrics = HandlerMetrics(context.metrics, self.model_name)
        self._warm_up()
        self.initialized = True
        logger.info("Loaded %s v%s (%s, %d threads, %d labels)", self.model_name,
                    self.model_version, self.runner.backend, threads, len(self.labels))

    def _warm_up(self) -> None:
        # The first forward pass pays for graph optimisation; pay it before taking traffic.
        size = self.preprocess_config.input_size
        self.runner(torch.zeros(1, 3, size, size))

    def preprocess(self, data: list[dict]) -> Batch:
        self._batch_start = time.perf_counter()
        batch = Batch(size=len(data))
        tensors = []
        for idx, row in enumerate(data):
            try:
                start = time.perf_counter()
                body = payload_to_bytes(row)
                tensors.append(preprocess_bytes(body, self.preprocess_config))
                self.metrics.observe(PREPROCESS, time.perf_counter() - start)
                self.metrics.image(body)
                batch.indices.append(idx)
            except InputError as err:
                batch.errors[idx] = err
                self.metrics.input_error(err.error_type)
            except Exception:  # a bug hit by one request must not fail its neighbours
                logger.exception("Unexpected preprocessing failure (request %d of %d)", idx, len(data))
                batch.errors[idx] = InputError(500, "InternalServerError",
                                               "The server failed on this image; the error is logged.")
                self.metrics.input_error("InternalServerError")
        if tensors:
            batch.tensor = torch.stack(tensors)
        self.metrics.batch_size(len(data))
        return batch

    def inference(self, batch: Batch, *args, **kwargs) -> Batch:
        start = time.perf_counter()
        if batch.tensor is not None:
            batch.logits = self.runner(batch.tensor)
        self.metrics.observe(INFERENCE, time.perf_counter() - start)
        return batch

    def postprocess(self, batch: Batch) -> list:
        start = time.perf_counter()
        responses: list = [None] * batch.size
        # TorchServe's KServe v2 envelope (service_envelope=kservev2) sets input_names and hands
        # us the inputs of ONE request as rows: that request gets one status, and each output is
        # a BYTES tensor, so each row's JSON goes out as a string.
        v2 = getattr(self.context, "input_names", None) is not None
        if batch.logits is not None:
            probs = torch.softmax(batch.logits.float(), dim=1)
            k = min(self.top_k, probs.shape[1])
            top_p, top_i = probs.topk(k, dim=1)
            for row, idx in enumerate(batch.indices):
                responses[idx] = self._prediction(top_p[row].tolist(), top_i[row].tolist())
        for idx in range(1 if v2 else batch.size):
            self.context.set_response_content_type(idx, "application/json")  # else text/plain
        for idx, err in batch.errors.items():
            target = 0 if v2 else idx
            # A fixed reason phrase in the status line; the details travel in the JSON body.
            self.context.set_response_status(err.status, HTTP_PHRASES.get(err.status, "Error"), target)
            responses[idx] = err.to_json()
        if v2:
            responses = [json.dumps(r) for r in responses]
        end = time.perf_counter()
        self.metrics.observe(POSTPROCESS, end - start)
        # Every request of the batch spent the whole batch's handler time.
        self.metrics.observe(REQUEST, end - getattr(self, "_batch_start", start), times=batch.size)
        return responses

    def _prediction(self, probs: list[float], indices: list[int]) -> dict:
        return {
            "model": self.model_name,
            "version": self.model_version,
            "predictions": [
                {"index": i, "label": self.labels.get(str(i), str(i)), "probability": round(p, 6)}
                for p, i in zip(probs, indices)
            ],
        }
