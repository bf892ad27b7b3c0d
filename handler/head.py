"""The model's output head: what turns its outputs into the probabilities a client reads.

Recorded at packaging in architecture.json (`"head"`), beside what the serialized model is: the
meaning of its outputs belongs to the model, like its class and weights, and is no operator
setting (model-config.yaml's `handler:` block, which the environment may override).

    softmax   one class per image: softmax(outputs / temperature)           (the default)
    sigmoid   multi-label: each class's own sigmoid(output / temperature); the classes at or
              above `threshold` are the predicted set
    none      the model's outputs are probabilities already (its forward ends in a softmax)

A head of width 1 (binary: one logit) is two classes whatever the activation: 1 - p and p, with
p = sigmoid(logit / temperature); class 1 is predicted when p reaches the threshold.

With test-time augmentation a request is V views of one image: the head runs on each view's
outputs, and the request's answer is the mean of its views' probabilities (mean_of_views).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from handler import layout
from handler.settings import ConfigError, check_keys

ACTIVATIONS = ("softmax", "sigmoid", "none")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Head:
    activation: str = "softmax"
    temperature: float = 1.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ConfigError(problem)

    def problem(self) -> str | None:
        """Why these values make no head, or None."""
        if self.activation not in ACTIVATIONS:
            return f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
        if not _number(self.temperature) or self.temperature <= 0:
            return f"temperature must be a number above 0, got {self.temperature!r}"
        if not _number(self.threshold) or not 0 < self.threshold <= 1:
            return f"threshold must be a probability in (0, 1], got {self.threshold!r}"
        if self.activation == "none" and self.temperature != 1:
            return "temperature divides logits: a model that outputs probabilities (activation none) has none"
        return None

    @classmethod
    def from_record(cls, raw: object, where: str) -> Head:
        """The head architecture.json records (absent: the default softmax head), every key and
        value checked: a misspelt key fails the load instead of serving another head."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: `head` must be a mapping, got {type(raw).__name__}")
        check_keys(raw, ("activation", "temperature", "threshold"), f"{where} (head)")
        try:
            return cls(**raw)
        except ConfigError as exc:
            raise ConfigError(f"{where} (head): {exc}") from exc

    def record(self) -> dict:
        return asdict(self)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """N x W model outputs -> N x K probabilities (K = 2 for a width-1 head, else W)."""
        scaled = outputs.float() / self.temperature
        if outputs.shape[1] == 1:
            p = torch.sigmoid(scaled)
            return torch.cat([1 - p, p], dim=1)
        if self.activation == "softmax":
            return torch.softmax(scaled, dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(scaled)
        return outputs.float()

    def marks(self, width: int) -> bool:
        """Whether the answers of a model with `width` outputs mark a predicted set."""
        return width == 1 or self.activation == "sigmoid"

    def predicted(self, probs: torch.Tensor, width: int) -> torch.Tensor | None:
        """N x K booleans, the classes predicted from the head's probabilities (None where the
        head predicts no set: the client reads the best class)."""
        if width == 1:
            positive = probs[:, 1:2] >= self.threshold
            return torch.cat([~positive, positive], dim=1)
        return probs >= self.threshold if self.activation == "sigmoid" else None


SOFTMAX = Head()


def load(model_dir: Path) -> Head:
    """The head architecture.json records in a model directory (the default without one)."""
    path = Path(model_dir) / layout.ARCHITECTURE
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}") from exc
    return Head.from_record(record.get("head"), str(path))


def served_classes(width: int) -> int:
    """The classes an answer has for a model of `width` outputs: a single logit is two."""
    return 2 if width == 1 else width


def views_of(batch: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A batch of requests as the model's input rows: N x C x H x W is itself (1 view each);
    N x V x C x H x W (test-time augmentation) becomes N*V rows, each request's views together."""
    if batch.dim() == 5:
        return batch.flatten(0, 1), batch.shape[1]
    return batch, 1


def mean_of_views(probs: torch.Tensor, views: int) -> torch.Tensor:
    """N*V x K probabilities -> N x K: each request's mean over its own V consecutive rows."""
    return probs.reshape(-1, views, probs.shape[1]).mean(dim=1)


def in_chunks(run: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, most: int) -> torch.Tensor:
    """`run` on at most `most` rows at a time, the outputs concatenated in order: views multiply a
    batch's rows, and no forward may exceed the batch the model was sized and warmed for."""
    return torch.cat([run(rows[at:at + most]) for at in range(0, rows.shape[0], most)])


def answer_probabilities(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                         head: Head, most: int) -> tuple[torch.Tensor, int]:
    """A batch of requests (with or without views) -> (N x K probabilities, the model's width):
    forwards of at most `most` rows, the head on every view, each request's views averaged."""
    rows, views = views_of(batch)
    outputs = in_chunks(run, rows, most)
    return mean_of_views(head.probabilities(outputs), views), int(outputs.shape[1])
