"""What a client gets: the head's probabilities (handler/head.py) -> the top-k classes with
labels and probabilities (and, for a head that predicts a set, which classes are in it), and
each request's Answer (its JSON body and HTTP status), which the envelope (handler/protocols)
sends in the request's protocol."""

from __future__ import annotations

from dataclasses import dataclass
from http.client import responses as HTTP_PHRASES

import torch

from handler.errors import HandlerError
from handler.head import SOFTMAX


@dataclass(frozen=True)
class Answer:
    """One request's answer: the JSON body and the HTTP status it goes out with."""

    body: dict
    status: int = 200

    @classmethod
    def of_error(cls, err: HandlerError) -> Answer:
        return cls(err.to_json(), err.status)


def top_k(logits: torch.Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """Softmax probabilities and class indices of the k best classes, per row (the default
    head: what the benchmarks' peers answer)."""
    ranks = ranked(SOFTMAX.probabilities(logits), k)
    return [r.probs for r in ranks], [r.indices for r in ranks]


@dataclass(frozen=True)
class Ranked:
    """One request's classes, most probable first, and which are predicted (None: no set)."""

    probs: list[float]
    indices: list[int]
    predicted: list[bool] | None = None


def ranked(probs: torch.Tensor, k: int, predicted: torch.Tensor | None = None) -> list[Ranked]:
    """Per row: the k most probable classes, and any further ones the head predicts, so that a
    client reads the whole predicted set from the answer whatever k is."""
    out = []
    for row in range(probs.shape[0]):
        count = k if predicted is None else max(k, int(predicted[row].sum()))
        top_p, top_i = probs[row].topk(min(count, probs.shape[1]))
        marks = None if predicted is None else predicted[row, top_i].tolist()
        out.append(Ranked(top_p.tolist(), top_i.tolist(), marks))
    return out


def prediction(probs: list[float], indices: list[int], labels: dict[str, str], model: str,
               version: str, predicted: list[bool] | None = None) -> dict:
    """One request's answer; each class carries `predicted` where the head predicts a set."""
    rows = [{"index": i, "label": labels.get(str(i), str(i)), "probability": round(p, 6)}
            for p, i in zip(probs, indices)]
    for row, mark in zip(rows, predicted or ()):
        row["predicted"] = bool(mark)
    return {"model": model, "version": version, "predictions": rows}


def reason_phrase(status: int) -> str:
    """A fixed reason phrase for the status line; the details travel in the JSON body."""
    return HTTP_PHRASES.get(status, "Error")
