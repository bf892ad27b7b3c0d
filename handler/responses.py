"""What a client gets: logits -> the top-k classes with labels and probabilities, and each
request's Answer (its JSON body and HTTP status), which an envelope (handler/envelopes.py) sends."""

from __future__ import annotations

from dataclasses import dataclass
from http.client import responses as HTTP_PHRASES

import torch

from handler.errors import HandlerError


@dataclass(frozen=True)
class Answer:
    """One request's answer: the JSON body and the HTTP status it goes out with."""

    body: dict
    status: int = 200

    @classmethod
    def of_error(cls, err: HandlerError) -> Answer:
        return cls(err.to_json(), err.status)


def top_k(logits: torch.Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """Softmax probabilities and class indices of the k best classes, per row."""
    probs = torch.softmax(logits.float(), dim=1)
    top_p, top_i = probs.topk(min(k, probs.shape[1]), dim=1)
    return top_p.tolist(), top_i.tolist()


def prediction(probs: list[float], indices: list[int], labels: dict[str, str], model: str,
               version: str) -> dict:
    """One request's answer."""
    return {
        "model": model,
        "version": version,
        "predictions": [
            {"index": i, "label": labels.get(str(i), str(i)), "probability": round(p, 6)}
            for p, i in zip(probs, indices)
        ],
    }


def reason_phrase(status: int) -> str:
    """A fixed reason phrase for the status line; the details travel in the JSON body."""
    return HTTP_PHRASES.get(status, "Error")


# The Open Inference Protocol (KServe v2): a prediction as typed tensors, an error as {"error"}.
# Three outputs, so that a v2 client reads each as an array (no JSON inside strings).
V2_OUTPUTS = ("labels", "probabilities", "indices")
_V2_FIELDS = {"labels": ("label", "BYTES"), "probabilities": ("probability", "FP32"),
              "indices": ("index", "INT64")}


def v2_prediction(body: dict, request_id: str, outputs: tuple[str, ...] = V2_OUTPUTS) -> dict:
    """A prediction (`prediction`'s dict) as a v2 response: the k best classes, best first,
    as the tensors `outputs` names, each of shape [k]."""
    preds = body["predictions"]
    return {"model_name": body["model"], "model_version": body["version"], "id": request_id,
            "outputs": [{"name": name, "datatype": _V2_FIELDS[name][1], "shape": [len(preds)],
                         "data": [p[_V2_FIELDS[name][0]] for p in preds]} for name in outputs]}


def v2_error(body: dict) -> dict:
    """An error's body ({"code", "type", "message"}) as the protocol's {"error": "..."}; the
    type leads the message, so clients can still tell the kinds apart."""
    return {"error": f"{body['type']}: {body['message']}"}


def v2_metadata(model: str, version: str, top_k: int) -> dict:
    """The model's v2 metadata (GET /v2/models/NAME): what v2_image reads, what v2_prediction
    writes. TorchServe 0.12 does not serve this route; a proxy in front of it may."""
    return {"name": model, "versions": [version], "platform": "torchserve",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": name, "datatype": _V2_FIELDS[name][1], "shape": [top_k]}
                        for name in V2_OUTPUTS]}
