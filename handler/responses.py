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
