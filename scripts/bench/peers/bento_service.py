"""The BentoML service of the batching peer (scripts/bench/peers/batching_peer.py starts it).

Imported only by `bentoml serve` in the peers' environment (build/peers/venv): it imports
bentoml at the top, which our own .venv does not have. Its settings come from the environment
(batching_peer.ENV names them), read at import: BentoML builds the service, its workers and its
batcher from the decorators.

The raw request: an input spec whose from_http_request takes the whole body as the one item of
a one-element list, so BentoML's batcher (CorkDispatcher) concatenates the requests' lists into
the batch the API function gets; the output spec turns each request's slice of the answers,
[(status, JSON)], into its own response. A request never waits on a batch-mate's failure:
preprocessing runs per item inside the batch function, an InputError becomes that item's 4xx
answer, and only the good items are stacked for the one forward.

pydantic and starlette come with BentoML (its IO specs and its HTTP layer); torch comes with
handler (the tensors its preprocessing and runner trade).
"""

import json
import os
from pathlib import Path

import bentoml
import torch
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from handler import layout, responses
from handler.errors import InputError
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from handler.runner import load_runner

MODEL_DIR = Path(os.environ["BATCHING_PEER_MODEL_DIR"])
MODEL_NAME = json.loads((MODEL_DIR / layout.ARCHIVER_MANIFEST).read_text())["model"]["modelName"]
TOP_K = 5


class RawImage(bentoml.IODescriptor):
    """The request body as it came (raw image bytes, any Content-Type), as a one-item batch."""

    images: list[bytes]

    @classmethod
    async def from_http_request(cls, request: Request, serde: object) -> "RawImage":
        return cls.model_construct(images=[await request.body()])


class Answer(bentoml.IODescriptor):
    """One request's (status, JSON body), answered as is (200 or the InputError's 4xx)."""

    answers: list[tuple[int, dict]]

    @classmethod
    async def to_http_response(cls, obj: list, serde: object) -> Response:
        ((status, body),) = obj
        return JSONResponse(body, status_code=status)


@bentoml.service(
    name="batching_peer",
    workers=int(os.environ.get("BATCHING_PEER_WORKERS", "2")),
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
)
class BatchingPeer:
    """One ORT session of one intra-op thread per worker; BentoML's batcher in front of it."""

    def __init__(self) -> None:
        serialized = json.loads((MODEL_DIR / layout.ARCHIVER_MANIFEST).read_text())["model"]["serializedFile"]
        self.runner = load_runner(MODEL_DIR / serialized, threads=1)
        self.cfg = PreprocessConfig.load(MODEL_DIR / layout.PREPROCESS_CONFIG)
        self.labels = json.loads((MODEL_DIR / layout.LABELS).read_text())
        self.version = json.loads((MODEL_DIR / layout.MANIFEST).read_text())["model"]["version"]
        self.runner(torch.zeros(1, 3, self.cfg.input_size, self.cfg.input_size))  # the first forward's cost
        # start() counts these lines, one per worker, to know that every worker has its model.
        print(f"batching-peer worker {bentoml.server_context.worker_index} ready", flush=True)

    @bentoml.api(
        route=f"/predictions/{MODEL_NAME}",
        input_spec=RawImage,
        output_spec=Answer,
        batchable=True,
        max_batch_size=int(os.environ.get("BATCHING_PEER_MAX_BATCH", "4")),
        max_latency_ms=float(os.environ.get("BATCHING_PEER_MAX_LATENCY_MS", "10000")),
    )
    def predict(self, images: list[bytes]) -> list[tuple[int, dict]]:
        """A batch of raw bodies -> one (status, JSON) per body, in order."""
        answers: list[tuple[int, dict] | None] = []
        tensors = []
        for body in images:
            try:
                tensors.append(preprocess_bytes(body, self.cfg))
                answers.append(None)
            except InputError as exc:
                answers.append((exc.status, exc.to_json()))
        if tensors:
            probs, indices = responses.top_k(self.runner(torch.stack(tensors)), TOP_K)
            good = iter(zip(probs, indices))
            answers = [a or (200, responses.prediction(*next(good), self.labels, MODEL_NAME, self.version))
                       for a in answers]
        return answers

