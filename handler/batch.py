"""The state of one TorchServe batch as it moves through the handler's stages."""

from __future__ import annotations

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
    logits: torch.Tensor | None = None
