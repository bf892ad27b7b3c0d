"""The state of one TorchServe batch as it moves through the handler's stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from handler.errors import HandlerError


@dataclass
class Batch:
    """Tensors of the decodable requests, and the error of each request that was not."""

    size: int
    tensor: torch.Tensor | None = None
    indices: list[int] = field(default_factory=list)
    errors: dict[int, HandlerError] = field(default_factory=dict)
    described: dict[int, dict] = field(default_factory=dict)  # describe requests: their answer
    # Each request's protocol (handler/envelopes.py): how its answer is shaped.
    protocols: list = field(default_factory=list)
    # The head's probabilities, one row per decodable request (its views averaged), and the
    # model's own number of outputs (1 for a binary head served as two classes).
    probs: torch.Tensor | None = None
    width: int = 0
    # When the handler took the batch: every request of it spends the whole batch's handler time.
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds since the handler took the batch."""
        return time.perf_counter() - self.started
