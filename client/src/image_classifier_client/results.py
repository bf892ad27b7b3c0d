"""Typed predictions, read from either protocol's answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from image_classifier_client.errors import ServerError


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Classification:
    """One image's answer: the model's best classes, best first (at most the server's top_k)."""

    model: str
    version: str
    predictions: tuple = field(default_factory=tuple)  # of Prediction
    request_id: str | None = None
    protocol: str = "v1"
    attempts: int = 1  # how many times the request was sent

    @property
    def top1(self) -> Prediction:
        return self.predictions[0]

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "request_id": self.request_id,
                "protocol": self.protocol, "attempts": self.attempts,
                "predictions": [vars(p) for p in self.predictions]}


def from_v1(doc: dict) -> tuple:
    """(model, version, predictions) of a /predictions answer:
    {"model", "version", "predictions": [{"index", "label", "probability"}, ...]}."""
    try:
        preds = tuple(Prediction(int(p["index"]), str(p["label"]), float(p["probability"]))
                      for p in doc["predictions"])
        return str(doc["model"]), str(doc["version"]), preds
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"the answer is not a prediction: {exc!r}", 200) from exc


def from_v2(doc: dict) -> tuple:
    """(model, version, predictions) of an Open Inference answer: outputs `labels` (BYTES),
    `probabilities` (FP32) and `indices` (INT64), each of shape [k], best first."""
    try:
        out = {o["name"]: o["data"] for o in doc["outputs"]}
        rows = zip(out["indices"], out["labels"], out["probabilities"])
        preds = tuple(Prediction(int(i), str(label), float(p)) for i, label, p in rows)
        return str(doc["model_name"]), str(doc.get("model_version", "")), preds
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"the answer is not a v2 prediction: {exc!r}", 200) from exc
