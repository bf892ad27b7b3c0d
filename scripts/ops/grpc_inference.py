"""A thin client for TorchServe's gRPC inference API (docs/grpc.md), stubs from
scripts.ops.grpc_stubs (generated from the served TorchServe's own protos).

- `predict(model, image_bytes)`: InferenceAPIsService.Predictions, the image as the input `data`;
  the answer is the same JSON as REST's /predictions (our handler's top-5).
- `model_infer(model, images)`: the Open Inference Protocol's GRPCInferenceService.ModelInfer,
  one BYTES input per image; TorchServe 0.12 registers it on the same port only with
  `ts_open_inference_protocol=true` (UNIMPLEMENTED otherwise); the handler's v2 answer comes
  back as the response's outputs.
- Keys: TorchServe's GRPCInterceptor reads the `authorization` metadata, `Bearer KEY`, with the
  inference key of key_file.json; a missing, wrong or expired key is PERMISSION_DENIED
  "Token Authorization failed...". The key is read from the file once and again when a call is
  refused (the renewer replaced it): then the call is sent once more.
- Errors are grpc.RpcError (`.code()`, `.details()`). TorchServe's own refusals (key, unknown
  model, full queue, a lost worker) are real gRPC statuses. A request our handler refuses (a bad
  image) is not: TorchServe 0.12 answers it with status OK and the handler's error JSON
  (GRPCJob.response ignores the per-request status that REST sends as the HTTP status), so the
  client raises HandlerRefused, whose code is the HTTP status's gRPC equivalent by TorchServe's
  own table (GRPCUtils.getGRPCStatusCode: 400 INVALID_ARGUMENT, 413 RESOURCE_EXHAUSTED, 415 and
  other 4xx FAILED_PRECONDITION, 501 UNIMPLEMENTED, 503 UNAVAILABLE, other 5xx INTERNAL).

    python -m scripts.ops.grpc_inference photos/cat.jpg [--workdir run] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import empty_pb2
from image_classifier_client.contract import AUTH_REFUSED, KEY_RENEWAL_WAIT_S

from scripts import repo
from scripts.ops import grpc_stubs
from scripts.ops.server_config import (
    CONFIG_FILE,
    GRPC_DEFAULT_PORTS,
    GRPC_KEYS,
    KEY_FILE,
    LOOPBACK,
    read_keys,
    read_properties,
)

INPUT_NAME = "data"  # the input the handler reads an image from (as REST's raw body)
# After a refusal, how many times the key file is read again (KEY_RENEWAL_WAIT_S apart) for a
# key other than the refused one: TorchServe drops the old key before it rewrites the file.
REREAD_TRIES = 10


# TorchServe 0.12's HTTP status -> gRPC status (GRPCUtils.getGRPCStatusCode), for HandlerRefused.
_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
          404: "NOT_FOUND", 409: "ABORTED", 413: "RESOURCE_EXHAUSTED", 416: "OUT_OF_RANGE",
          429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
          504: "DEADLINE_EXCEEDED"}


def grpc_status(http_status: int) -> grpc.StatusCode:
    """The gRPC status TorchServe gives an HTTP status (its own table, GRPCUtils)."""
    if http_status in _CODES:
        return grpc.StatusCode[_CODES[http_status]]
    for low, name in ((200, "OK"), (400, "FAILED_PRECONDITION"), (500, "INTERNAL")):
        if low <= http_status < low + 100:
            return grpc.StatusCode[name]
    return grpc.StatusCode.UNKNOWN


class HandlerRefused(grpc.RpcError):
    """The handler refused the request: its error JSON ({"code", "type", "message"}, the body
    REST sends with that HTTP status), as the gRPC status TorchServe would give that code."""

    def __init__(self, answer: dict) -> None:
        self.status, self.type = answer["code"], answer.get("type", "")
        self.message = answer.get("message", "")
        super().__init__(f"{self.code().name} ({self.status} {self.type}): {self.message}")

    def code(self) -> grpc.StatusCode:
        return grpc_status(self.status)

    def details(self) -> str:
        return self.message


def handler_answer(body: bytes | str) -> dict:
    """A handler's JSON answer; its error JSON raised as HandlerRefused."""
    answer = json.loads(body)
    while isinstance(answer, str):  # a v2 BYTES output holds our JSON as a JSON string
        answer = json.loads(answer)
    if isinstance(answer, dict) and "predictions" not in answer and isinstance(answer.get("code"), int):
        raise HandlerRefused(answer)
    return answer


def grpc_target(workdir: str | Path) -> str:
    """host:port of the gRPC inference API of the server whose working directory this is."""
    props = read_properties(Path(workdir) / CONFIG_FILE)
    host = props.get("grpc_inference_address", LOOPBACK)
    if host in ("0.0.0.0", "::"):  # listening everywhere: reach it on loopback
        host = LOOPBACK
    return f"{host}:{props.get(GRPC_KEYS[0], GRPC_DEFAULT_PORTS[0])}"


def refused(exc: grpc.RpcError) -> bool:
    """Whether TorchServe refused the bearer key (re-read the key file, send again)."""
    return exc.code() == grpc.StatusCode.PERMISSION_DENIED and AUTH_REFUSED in (exc.details() or "")


class GrpcClient:
    """One channel to one server's gRPC inference port; safe to share between threads."""

    def __init__(self, target: str, key_file: Path | None, timeout: float = 30.0) -> None:
        self.target, self.key_file, self.timeout = target, key_file, timeout
        self.stubs = grpc_stubs.load()
        self.channel = grpc.insecure_channel(target)  # loopback only (docs/grpc.md)
        self.inference = self.stubs.inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.open_inference = self.stubs.open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.key = self._read_key()
        self.rereads = 0  # keys read again after a refusal

    @classmethod
    def for_workdir(cls, workdir: str | Path = repo.RUN_DIR, timeout: float = 30.0) -> GrpcClient:
        return cls(grpc_target(workdir), Path(workdir) / KEY_FILE, timeout)

    def predict(self, model: str, image: bytes, version: str = "") -> dict:
        """The handler's JSON answer to one image ({"model", "version", "predictions"}); an
        image the handler refuses raises HandlerRefused."""
        return handler_answer(self.predict_raw(model, image, version).prediction)

    def predict_raw(self, model: str, image: bytes, version: str = ""):
        """The PredictionResponse as TorchServe sent it."""
        request = self.stubs.inference_pb2.PredictionsRequest(
            model_name=model, model_version=version, input={INPUT_NAME: image})
        return self.call(self.inference.Predictions, request)

    def ping(self) -> str:
        """TorchServe's health JSON (`{"status": "Healthy"}`); needs the key, as REST's /ping."""
        return self.call(self.inference.Ping, empty_pb2.Empty()).health

    def model_infer(self, model: str, images: list[bytes], request_id: str = "grpc-1"):
        """Open Inference Protocol ModelInfer: one BYTES input (`input-I`, shape [1]) per image."""
        pb = self.stubs.open_inference_grpc_pb2
        inputs = [pb.ModelInferRequest.InferInputTensor(
                      name=f"input-{i}", datatype="BYTES", shape=[1],
                      contents=pb.InferTensorContents(bytes_contents=[image]))
                  for i, image in enumerate(images)]
        request = pb.ModelInferRequest(model_name=model, id=request_id, inputs=inputs)
        return self.call(self.open_inference.ModelInfer, request)

    def call(self, method, request):
        """One unary call with the bearer key; refused, the key file is read again and the call
        sent once more (a second refusal is raised)."""
        try:
            return method(request, metadata=self.metadata(), timeout=self.timeout)
        except grpc.RpcError as exc:
            if not refused(exc) or self.key_file is None:
                raise
            self.reread_key()
            return method(request, metadata=self.metadata(), timeout=self.timeout)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),) if self.key else ()

    def reread_key(self) -> None:
        """Read the key file again, waiting (bounded) for a key other than the refused one."""
        stale = self.key
        for _ in range(REREAD_TRIES):
            self.key = self._read_key()
            if self.key != stale:
                break
            time.sleep(KEY_RENEWAL_WAIT_S)
        self.rereads += 1

    def _read_key(self) -> str | None:
        if self.key_file is None:
            return None
        try:
            return read_keys(self.key_file).get("inference")
        except (OSError, ValueError, KeyError):
            return None  # not written yet, or being rewritten: the refusal path reads it again

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="the photo to classify")
    parser.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                        help="the server's working directory (config.properties, key_file.json)")
    parser.add_argument("--model", default=repo.DEFAULT_MODEL)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    args = parser.parse_args(argv)
    try:
        with GrpcClient.for_workdir(args.workdir, args.timeout) as client:
            answer = client.predict(args.model, args.image.read_bytes())
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, grpc_stubs.StubError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
