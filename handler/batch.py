"""The state of one TorchServe batch as it moves through the handler's stages.

Kept out of handler.py: TorchServe requires the handler module to define exactly one class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from preprocessing import InputError


@dataclass
class Batch:
    """Tensors of the decodable requests, and the error of each request that was not."""

    size: int
    tensor: torch.Tensor | None = None
    indices: list[int] = field(default_factory=list)
    errors: dict[int, InputError] = field(default_factory=dict)
    logits: torch.Tensor | None = None
