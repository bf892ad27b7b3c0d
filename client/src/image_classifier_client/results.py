"""Typed predictions, read from either protocol's answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from image_classifier_client.errors import ServerError


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float
    # Whether the class is in the predicted set, where the model's head predicts one (multi-label
    # sigmoid, binary); None where it does not (softmax: the best class is the prediction).
    predicted: bool | None = None


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

    @property
    def predicted(self) -> tuple:
        """The labels of the predicted set, most probable first: the classes the server marked,
        else (a head that marks none) the best class alone."""
        if self.predictions and self.predictions[0].predicted is None:
            return (self.top1.label,)
        return tuple(p.label for p in self.predictions if p.predicted)

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "request_id": self.request_id,
                "protocol": self.protocol, "attempts": self.attempts,
                "predictions": [vars(p) for p in self.predictions]}


def from_v1(doc: dict) -> tuple:
    """(model, version, predictions) of a /predictions answer:
    {"model", "version", "predictions": [{"index", "label", "probability"[, "predicted"]}, ...]}."""
    try:
        preds = tuple(Prediction(int(p["index"]), str(p["label"]), float(p["probability"]),
                                 _mark(p.get("predicted"))) for p in doc["predictions"])
        return str(doc["model"]), str(doc["version"]), preds
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"the answer is not a prediction: {exc!r}", 200) from exc


def from_v2(doc: dict) -> tuple:
    """(model, version, predictions) of an Open Inference answer: outputs `labels` (BYTES),
    `probabilities` (FP32), `indices` (INT64) and, where the head predicts a set, `predicted`
    (BOOL), each of shape [k], best first."""
    try:
        out = {o["name"]: o["data"] for o in doc["outputs"]}
        marks = out.get("predicted") or [None] * len(out["indices"])
        rows = zip(out["indices"], out["labels"], out["probabilities"], marks)
        preds = tuple(Prediction(int(i), str(label), float(p), _mark(m)) for i, label, p, m in rows)
        return str(doc["model_name"]), str(doc.get("model_version", "")), preds
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"the answer is not a v2 prediction: {exc!r}", 200) from exc


def _mark(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"'predicted' must be true or false, got {value!r}")
