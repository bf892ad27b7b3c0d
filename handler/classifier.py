"""TorchServe handler: bytes -> preprocess -> tensor -> inference -> logits -> postprocess -> answers.

Each request of a batch succeeds or fails on its own: a bad image gets its own 4xx JSON error
and its neighbours still get predictions. `postprocess` gives one Answer (body and status) per
request; the envelope of the call (handler/envelopes.py) puts the statuses and Content-Types on
the context and serializes the answers. No request header changes what happens to another
request (see `handle`).
"""

from __future__ import annotations

import functools
import gc
import io
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from handler import golden, head, layout, responses
from handler.batch import Batch
from handler.device import place
from handler.envelopes import PLAIN, Envelope, PlainEnvelope, RequestProtocol, envelope_of, request_header
from handler.errors import HandlerError, InputError, NotServed, ServerError
from handler.metrics import DECODE, INFERENCE, POSTPROCESS, PREPROCESS, REQUEST, HandlerMetrics
from handler.payload import worker_decodes_bodies
from handler.preprocess_code import PreprocessCodeError
from handler.preprocessing import PreprocessConfig, preprocess_image
from handler.provenance import PACKAGE_DIR, environment, installed_versions, sha256_file, verify_model_dir
from handler.responses import Answer
from handler.runner import backend_of, load_runner
from handler.settings import handler_settings, inside

logger = logging.getLogger(__name__)


def loaded_description(manifest_path: Path, provenance: dict) -> dict:
    """What this worker loaded, as checked at load: the manifest's sha256 (it holds every other
    file's), the files' sha256, the export's and the running library versions, the validation
    result and the preprocessing. `scripts.ops.inspect_mar --server` compares it with an archive."""
    return {"manifest_sha256": sha256_file(manifest_path) if manifest_path.is_file() else None,
            "files": {name: entry.get("sha256") for name, entry in provenance.get("files", {}).items()},
            "versions": {"exported": provenance.get("versions", {}), "running": installed_versions()},
            "environment": {"exported": provenance.get("environment", {}), "running": environment()},
            "validation": provenance.get("validation", {}),
            "preprocessing": provenance.get("preprocessing", {})}


class ImageClassifierHandler(BaseHandler):
    """Classify images with an ONNX, TorchScript, torch.export or eager model and the
    preprocessing it was validated with (its preprocess.json, and its own code if it has some)."""

    def initialize(self, context) -> None:
        self.context = context
        self.manifest = context.manifest
        model_dir = Path(context.system_properties["model_dir"])
        # Strict: a misspelt key in model-config.yaml, or a bad value there or in an environment
        # override (HANDLER_THREADS), fails the load instead of being ignored.
        settings = handler_settings(getattr(context, "model_yaml_config", None))
        self.settings = settings
        provenance = verify_model_dir(model_dir, settings["manifest"])
        self.loaded = loaded_description(model_dir / settings["manifest"], provenance or {})
        # The archive's own settings name these files: they may not reach outside it.
        where = f"{layout.MODEL_CONFIG} (handler: %s)"
        self.preprocess_config = PreprocessConfig.load(
            inside(model_dir, settings["preprocess_config"], where % "preprocess_config"))
        if settings["full_jpeg_decode"]:
            self.preprocess_config = replace(self.preprocess_config, fast_jpeg_draft=False)
        self.labels = json.loads(inside(model_dir, settings["labels"], where % "labels").read_text())
        threads = settings["threads"]
        serialized = self.manifest["model"]["serializedFile"]
        self.placement = place(context.system_properties, backend_of(serialized),
                               settings["precision"], (provenance or {}).get("validation"))
        logger.info("Running on %s", self.placement.describe())
        if worker_decodes_bodies():
            logger.warning("decode_input_request is not false in config.properties: TorchServe's "
                           "worker parses every JSON body before the handler's bounds (SECURITY.md)")
        self.runner = load_runner(model_dir / serialized, threads=threads, placement=self.placement,
                                  compile_model=settings["compile"])
        self.head = head.load(model_dir)
        # This machine's answers to the archive's golden photos must be the packaged ones.
        golden.replay(model_dir, self.runner, self.preprocess_config, provenance or {}, self.head)
        self.top_k = settings["top_k"]
        # The most rows one forward takes: TorchServe's batch size, whatever views multiply it by.
        self.most_rows = int(context.system_properties.get("batch_size") or 1)
        self.model_name = self.manifest["model"].get("modelName", "model")
        self.model_version = self.manifest["model"].get("modelVersion", "1.0")
        self.metrics = HandlerMetrics.for_worker(context.metrics, self.model_name)  # + JSON logs, traces
        self._warm_up()
        # The worker's start-up objects (torch, onnxruntime, ts: about 420,000 tracked by the GC)
        # are kept for its whole life; a full collection scanning them took 212 ms, a stall of
        # every request queued behind it. Frozen, they are never scanned again (0.2 ms).
        gc.freeze()
        self.initialized = True
        logger.info("Loaded %s v%s (%s, %d threads, %d labels; handler package %s)", self.model_name,
                    self.model_version, self.runner.backend, threads, len(self.labels), PACKAGE_DIR)

    def handle(self, data: list[dict], context) -> list:
        """Every request of the batch goes preprocess -> inference -> postprocess, and the
        answers go out through the call's envelope (handler/envelopes.py).

        BaseHandler's `handle` sends the WHOLE batch down another path when its first request
        carries an `explain` header (what TorchServe sets for /explanations/NAME) or a `describe`
        header: one client could fail everyone batched with it. Here those are per request:
        an explanation is refused with its own 501 (`preprocess`), a describe request gets the
        model's description, and the other requests of the batch are answered as usual."""
        start = time.perf_counter()
        self.context = context
        envelope = envelope_of(context)
        requests = self.metrics.begin(context, len(data))  # observability: ids, log lines, spans
        batch = self.preprocess(data, envelope)
        answers = self.postprocess(self.inference(batch))
        answers = requests.finish(answers)  # each answer's request id (body, header); its log line
        # Each request's protocol (read in preprocess, per request) shapes its own answer.
        out = envelope.respond(context, answers, batch.protocols)
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return out

    def _header(self, idx: int, name: str) -> str | None:
        try:
            return self.context.get_request_header(idx, name)
        except (AttributeError, IndexError, TypeError):  # no per-request headers (in-process use)
            return None

    def describe_handle(self) -> dict:
        """What `GET /models/NAME?customized=true` adds to the management API's description."""
        return {"model": self.model_name, "version": self.model_version,
                "backend": self.runner.backend, "top_k": self.top_k, "head": self.head.record(),
                "device": self.placement.device, "precision": self.placement.dtype, **self.loaded}

    def _warm_up(self) -> None:
        """Run the whole path (decode, resize, normalize, forward, top-k) before taking traffic,
        at batch 1 and at the largest batch TorchServe may form: the first call of each pays for
        graph optimisation, allocator growth and lazy imports, which a first client would see."""
        size = max(self.preprocess_config.resize_size * 2, 512)
        image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        tensor = preprocess_image(buf.getvalue(), self.preprocess_config)[0]
        # Every request's tensor (C x H x W, or V x C x H x W with views) must have this shape to
        # be stacked with its neighbours; the model's own preprocessing code is held to it per
        # request (_tensor_of).
        self.input_shape = tuple(tensor.shape)
        for batch in sorted({1, self.most_rows}):
            for _ in range(2):
                probs, width = head.answer_probabilities(
                    self.runner, tensor.expand(batch, *tensor.shape).contiguous(), self.head, self.most_rows)
                responses.ranked(probs, self.top_k, self.head.predicted(probs, width))

    def preprocess(self, data: list[dict], envelope: Envelope | None = None) -> Batch:
        """Each request read on its own, inside its own error handling: its describe header, its
        protocol (from its body and headers: handler/envelopes.py), its image and tensor. Whatever
        one request sent, or whatever bug it hits, fails that request alone."""
        envelope = envelope or PlainEnvelope()
        batch = Batch(size=len(data), protocols=[PLAIN] * len(data))
        tensors = []
        for idx, row in enumerate(data):
            try:
                if self._header(idx, "describe") == "True":
                    batch.described[idx] = self.describe_handle()
                    continue
                header = functools.partial(request_header, self.context, idx)  # by lower-case name
                protocol = batch.protocols[idx] = envelope.protocol_of(row, header)
                tensors.append(self._tensor_of(idx, row, protocol))
                batch.indices.append(idx)
            except InputError as err:
                self._failed(batch, idx, err)
            except Exception:  # a bug hit by one request must not fail its neighbours
                logger.exception("Unexpected preprocessing failure (request %d of %d)", idx, len(data))
                self._failed(batch, idx, ServerError())
        if tensors:
            batch.tensor = torch.stack(tensors)
        self.metrics.batch_size(len(data))
        return batch

    def _tensor_of(self, idx: int, row: dict, protocol: RequestProtocol = PLAIN) -> torch.Tensor:
        if self._header(idx, "explain") == "True":
            raise NotServed("explanations")
        with self.metrics.timed(PREPROCESS, request=idx):
            with self.metrics.timed(DECODE, request=idx):  # observability: the payload's own span
                image = protocol.image(row)
            tensor, (width, height) = preprocess_image(image, self.preprocess_config)
        if tuple(tensor.shape) != self.input_shape:  # a server fault of this request alone
            raise PreprocessCodeError(f"preprocessing returned shape {tuple(tensor.shape)}; the "
                                      f"model's input is {self.input_shape}")
        self.metrics.image(width, height)
        return tensor

    def _failed(self, batch: Batch, idx: int, err: HandlerError) -> None:
        batch.errors[idx] = err
        self.metrics.error(err)

    def inference(self, batch: Batch, *args, **kwargs) -> Batch:
        with self.metrics.timed(INFERENCE):
            if batch.tensor is not None:
                batch.probs, batch.width = head.answer_probabilities(self.runner, batch.tensor,
                                                                     self.head, self.most_rows)
        return batch

    def postprocess(self, batch: Batch) -> list[Answer]:
        """One Answer per request, in request order: its prediction, description or error."""
        with self.metrics.timed(POSTPROCESS):
            answers: list[Answer | None] = [None] * batch.size
            if batch.probs is not None:
                marks = self.head.predicted(batch.probs, batch.width)
                for idx, best in zip(batch.indices, responses.ranked(batch.probs, self.top_k, marks)):
                    answers[idx] = Answer(responses.prediction(best.probs, best.indices, self.labels,
                                                               self.model_name, self.model_version,
                                                               best.predicted))
            for idx, description in batch.described.items():
                answers[idx] = Answer(description)
            for idx, err in batch.errors.items():
                answers[idx] = Answer.of_error(err)
        # Every request of the batch spent the whole batch's handler time.
        self.metrics.observe(REQUEST, batch.elapsed(), times=batch.size)
        return answers
