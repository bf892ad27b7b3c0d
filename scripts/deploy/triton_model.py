"""The Python-backend model of a Triton repository written by scripts.deploy.triton_repo:
copied there as NAME/1/model.py, beside the archive's own files unpacked into NAME/.

It is never imported by this project: Triton's Python stub imports it (as the module `1.model`,
with NAME/1 and NAME on the stub's sys.path). Before anything of the archive runs it holds NAME/
to the archive's manifest, and that manifest to the pair pinned in config.pbtxt when the
repository was written (handler/integrity.py, compiled from its source as torchserve_entry.py
does: importing it would run handler/__init__.py first). Then it serves the archive's own code:
its preprocessing (preprocess.json, or its module), its runner and its top-k, with the settings
of its model-config.yaml (HANDLER_THREADS overrides the threads, as under TorchServe).

A request is one image (a BYTES element: the image, its base64 text as the v2 JSON form sends
it, or {"image": "<base64>"}), its answer the three outputs our Open Inference answer has:
labels, probabilities, indices. A bad image fails alone, as Triton's INVALID_ARG (HTTP 400) with
"Type: message"; a fault while preparing one request is that request's INTERNAL (500).
"""

import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import triton_python_backend_utils as pb_utils

# What the repository writer puts beside the archive's files (everything else must be in the
# manifest). The stub imports this file before any check can run, so Python's bytecode of it is
# let through by name: it is only ever loaded in place of this file.
OWN_FILES = ("config.pbtxt", "1/model.py", "1/__pycache__",
             f"1/__pycache__/model.{sys.implementation.cache_tag}.pyc")
MANIFESTS_PARAMETER = "archive_manifests"
OUTPUTS = ("labels", "probabilities", "indices")


def _verifier(model_dir: Path) -> ModuleType:
    """The archive's handler/integrity.py, compiled from its source, outside sys.modules."""
    source = model_dir / "handler" / "integrity.py"
    module = ModuleType("archive_integrity")
    module.__file__ = str(source)
    exec(compile(source.read_bytes(), str(source), "exec"), module.__dict__)
    return module


def _verify(model_dir: Path, pinned: str) -> dict:
    """The manifest, once every file of NAME/ is the archive's and the manifest is the pinned one."""
    integrity = _verifier(model_dir)
    environ = {integrity.MANIFESTS_ENV: pinned, integrity.REQUIRED_ENV: "1"}
    return integrity.verify(model_dir, environ, frozenset(OWN_FILES))


def _imported_from(model_dir: Path) -> None:
    """The handler package imported must be the archive's: site-packages precede NAME on the
    stub's path, so an installed `handler` would otherwise be run unchecked."""
    import handler

    where = Path(handler.__file__).resolve().parent
    if where != (model_dir / "handler").resolve():
        raise pb_utils.TritonModelException(f"handler was imported from {where}, not from the "
                                            f"archive's {model_dir / 'handler'}: remove it from the path")


class TritonPythonModel:
    """One instance (a stub process of its own) of the archive's classifier."""

    def initialize(self, args: dict) -> None:
        sys.dont_write_bytecode = True  # nothing of the archive leaves bytecode beside it
        model_dir = Path(args["model_repository"]).resolve()
        config = json.loads(args["model_config"])
        manifest = _verify(model_dir, config["parameters"][MANIFESTS_PARAMETER]["string_value"])
        _imported_from(model_dir)
        self._load(model_dir, manifest, int(config["max_batch_size"]))

    def _load(self, model_dir: Path, manifest: dict, max_batch: int) -> None:
        from handler import layout, responses
        from handler.preprocessing import PreprocessConfig
        from handler.provenance import running_versions, version_mismatches
        from handler.runner import load_runner
        from handler.settings import handler_settings, inside, load_model_config

        if problems := version_mismatches(manifest, running_versions()):
            raise pb_utils.TritonModelException("Integrity check failed: " + "; ".join(problems))
        settings = handler_settings(load_model_config(model_dir / layout.MODEL_CONFIG).handler)
        where = f"{layout.MODEL_CONFIG} (handler: %s)"
        self.cfg = PreprocessConfig.load(inside(model_dir, settings["preprocess_config"],
                                                where % "preprocess_config"))
        self.labels = json.loads(inside(model_dir, settings["labels"], where % "labels").read_text())
        archived = json.loads((model_dir / layout.ARCHIVER_MANIFEST).read_text())["model"]
        self.runner = load_runner(model_dir / archived["serializedFile"], threads=settings["threads"])
        self.top_k = settings["top_k"]
        self.model, self.version = archived.get("modelName", "model"), archived.get("modelVersion", "1.0")
        self.responses = responses
        self.input_shape = self._warm_up(max_batch)

    def _warm_up(self, max_batch: int) -> tuple:
        """The whole path at batch 1 and at the largest batch, before any request (as the
        TorchServe handler does); returns the input shape every request is held to."""
        import io

        from PIL import Image

        from handler.preprocessing import preprocess_image

        side = max(self.cfg.resize_size * 2, 512)
        buf = io.BytesIO()
        Image.linear_gradient("L").resize((side, side)).convert("RGB").save(buf, "JPEG", quality=90)
        tensor = preprocess_image(buf.getvalue(), self.cfg)[0]
        for batch in sorted({1, max_batch}):
            self.responses.top_k(self.runner(tensor.expand(batch, -1, -1, -1).contiguous()), self.top_k)
        return tuple(tensor.shape)

    def execute(self, requests: list) -> list:
        """One response per request, in request order (Triton's contract for a non-decoupled
        model): the decodable requests run as one batch, each failure stays its request's own."""
        import torch

        answers: list = [None] * len(requests)
        tensors, rows = [], []
        for idx, request in enumerate(requests):
            try:
                tensors.append(self._tensor_of(request))
                rows.append(idx)
            except RequestFailed as failed:
                answers[idx] = pb_utils.InferenceResponse(error=pb_utils.TritonError(*failed.args))
        if tensors:
            probs, indices = self.responses.top_k(self.runner(torch.stack(tensors)), self.top_k)
            for row, idx in enumerate(rows):
                answers[idx] = self._answer(probs[row], indices[row])
        return answers

    def _tensor_of(self, request: object) -> object:
        """The request's model input (a CHW tensor), or RequestFailed."""
        from handler.errors import InputError
        from handler.preprocessing import preprocess_image
        from handler.protocols.open_inference import v2_error
        from handler.protocols.plain import payload_to_bytes

        try:
            elements = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            if elements.size != 1:
                raise RequestFailed(f"BadInput: the request holds {elements.size} images; send one "
                                    "(shape [1, 1]) per request", pb_utils.TritonError.INVALID_ARG)
            tensor = preprocess_image(payload_to_bytes({"body": bytes(elements[0])}), self.cfg)[0]
        except InputError as err:
            raise RequestFailed(v2_error(err.to_json())["error"],
                                pb_utils.TritonError.INVALID_ARG) from err
        except RequestFailed:
            raise
        except Exception as exc:  # a bug hit by one request must not fail its neighbours
            raise RequestFailed(f"ServerFault: {type(exc).__name__}", pb_utils.TritonError.INTERNAL) from exc
        if tuple(tensor.shape) != self.input_shape:
            raise RequestFailed(f"ServerFault: preprocessing returned shape {tuple(tensor.shape)}",
                                pb_utils.TritonError.INTERNAL)
        return tensor

    def _answer(self, probs: list, indices: list) -> object:
        body = self.responses.prediction(probs, indices, self.labels, self.model, self.version)
        preds = body["predictions"]
        values = {"labels": np.array([[p["label"].encode() for p in preds]], dtype=np.object_),
                  "probabilities": np.array([[p["probability"] for p in preds]], dtype=np.float32),
                  "indices": np.array([[p["index"] for p in preds]], dtype=np.int64)}
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, values[name]) for name in OUTPUTS])


class RequestFailed(Exception):
    """One request's failure: (message, code) of the pb_utils.TritonError it is answered with
    (which is not an exception). INVALID_ARG is a client's mistake: HTTP 400, gRPC
    INVALID_ARGUMENT; INTERNAL a fault: 500."""
