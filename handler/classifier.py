"""TorchServe handler: one request's path is decode -> preprocess -> inference -> postprocess ->
envelope, for every request of a batch at once.

Each request of a batch succeeds or fails on its own: a bad image gets its own 4xx JSON error
and its neighbours still get predictions. Each request is read once into its view
(handler/request.py: headers, ids, protocol, body), which every stage takes; `postprocess` gives
one Answer (body and status) per request; the envelope (handler/protocols) puts the statuses,
Content-Types and request ids on the answers and writes each in its protocol. No request header
changes what happens to another request (see `handle`).
"""

from __future__ import annotations

import gc
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from handler import golden, head, layout, responses
from handler.device import place
from handler.errors import HandlerError, NotServed, ServerFault
from handler.model_code import PreprocessCodeError
from handler.observability import DECODE, INFERENCE, POSTPROCESS, PREPROCESS, Observability
from handler.preprocessing import PreprocessConfig, preprocess_image
from handler.protocols import respond
from handler.protocols.plain import worker_decodes_bodies
from handler.provenance import PACKAGE_DIR, environment, installed_versions, sha256_file, verify_model_dir
from handler.request import RequestView, request_views
from handler.responses import Answer
from handler.runner import backend_of, load_runner
from handler.settings import handler_settings, inside, model_config_blocks

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One TorchServe batch as it moves through the stages: each request's view, the tensors of
    the decodable requests, and each other request's description or error, by index."""

    views: list[RequestView]
    tensor: torch.Tensor | None = None
    indices: list[int] = field(default_factory=list)  # the requests of `tensor`'s rows, in order
    errors: dict[int, HandlerError] = field(default_factory=dict)
    described: dict[int, dict] = field(default_factory=dict)  # describe requests: their answer
    # The head's probabilities, one row per decodable request (its views averaged), and the
    # model's own number of outputs (1 for a binary head served as two classes).
    probs: torch.Tensor | None = None
    width: int = 0
    answers: list[Answer] | None = None


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
        blocks = model_config_blocks(getattr(context, "model_yaml_config", None))
        settings = handler_settings(blocks["handler"])
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
        self.observability = Observability.for_worker(context.metrics, self.model_name)
        self._warm_up()
        # The worker's start-up objects (torch, onnxruntime, ts: about 420,000 tracked by the GC)
        # are kept for its whole life; a full collection scanning them took 212 ms, a stall of
        # every request queued behind it. Frozen, they are never scanned again (0.2 ms).
        gc.freeze()
        self.initialized = True
        logger.info("Loaded %s v%s (%s, %d threads, %d labels; handler package %s)", self.model_name,
                    self.model_version, self.runner.backend, threads, len(self.labels), PACKAGE_DIR)

    def handle(self, data: list[dict], context) -> list:
        """Each request read once into its view, then decode -> preprocess (per request) ->
        inference -> postprocess (the batch) -> envelope, observed around the whole.

        BaseHandler's `handle` sends the WHOLE batch down another path when its first request
        carries an `explain` header (what TorchServe sets for /explanations/NAME) or a `describe`
        header: one client could fail everyone batched with it. Here those are per request:
        an explanation is refused with its own 501 (`preprocess`), a describe request gets the
        model's description, and the other requests of the batch are answered as usual."""
        self.context = context
        batch = Batch(request_views(context, data))
        with self.observability.following(batch):  # metrics, a log line and spans per request
            self.preprocess(data, batch)
            self.inference(batch)
            batch.answers = self.postprocess(batch)
            return respond(context, batch.views, batch.answers)

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

    def preprocess(self, data: list[dict], batch: Batch) -> Batch:
        """Each request on its own, inside its own error handling: a describe request gets the
        description; any other is decoded by its protocol (its image's bytes), then preprocessed
        (its tensor). Whatever one request sent, or whatever bug it hits, fails that request alone."""
        tensors = []
        for view, row in zip(batch.views, data):
            with self._alone(batch, view.idx):
                if view.error is not None:
                    raise view.error
                if view.describe:
                    batch.described[view.idx] = self.describe_handle()
                    continue
                if view.explain:
                    raise NotServed("explanations")
                with self.observability.stage(PREPROCESS, request=view.idx):
                    with self.observability.stage(DECODE, request=view.idx):
                        image = view.protocol.image(view, row)
                    tensors.append(self._tensor_of(image))
                batch.indices.append(view.idx)
        if tensors:
            batch.tensor = torch.stack(tensors)
        return batch

    @contextmanager
    def _alone(self, batch: Batch, idx: int) -> Iterator[None]:
        """A request's failure as its own answer: its error, or a ServerFault for a bug."""
        try:
            yield
        except HandlerError as err:
            batch.errors[idx] = err
        except Exception:  # a bug hit by one request must not fail its neighbours
            logger.exception("Unexpected preprocessing failure (request %d of %d)", idx, len(batch.views))
            batch.errors[idx] = ServerFault()

    def _tensor_of(self, image: bytes) -> torch.Tensor:
        tensor, (width, height) = preprocess_image(image, self.preprocess_config)
        if tuple(tensor.shape) != self.input_shape:  # a server fault of this request alone
            raise PreprocessCodeError(f"preprocessing returned shape {tuple(tensor.shape)}; the "
                                      f"model's input is {self.input_shape}")
        self.observability.image(width, height)
        return tensor

    def inference(self, batch: Batch, *args, **kwargs) -> Batch:
        with self.observability.stage(INFERENCE):
            if batch.tensor is not None:
                batch.probs, batch.width = head.answer_probabilities(self.runner, batch.tensor,
                                                                     self.head, self.most_rows)
        return batch

    def postprocess(self, batch: Batch) -> list[Answer]:
        """One Answer per request, in request order: its prediction, description or error."""
        with self.observability.stage(POSTPROCESS):
            answers: list[Answer | None] = [None] * len(batch.views)
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
        return answers
