"""Model sources: where an architecture comes from, one module each.

A source module defines `USAGE` (one line for the CLI's help and errors), `matches(spec)` and
`make(spec) -> Source`. `resolve` asks each module of this package in turn, so a new source is
one new module here and nothing else.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn


class SourceError(ValueError):
    """The architecture cannot be built as asked: unknown name, bad file, class or kwargs."""


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for on the command line."""

    arch: str | None = None
    model_file: Path | None = None
    model_class: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    # A research code folder shipped with the model (scripts/packaging/code_dir.py).
    code_dir: Path | None = None


class Source:
    """Where an architecture comes from. A source module's class sets the attributes and
    overrides what it knows; the defaults here say "nothing more than the user gave"."""

    name: str
    # The file that defines the architecture, shipped in the archive (TorchServe's model file);
    # None where a library builds it (its name and version go to architecture.json instead).
    architecture_file: Path | None = None
    # The code folder's module defining the architecture (--model-class module:Class), where the
    # eager format's loader imports it from; None otherwise.
    code_module: str | None = None
    # False: the architecture fixes its outputs (its own kwargs); --num-classes is checked, not set.
    sets_num_classes: bool = True

    def build(self, num_classes: int | None) -> nn.Module:
        raise NotImplementedError

    def record(self, num_classes: int | None) -> dict:
        """What the model is, for architecture.json (and the eager format's loader)."""
        raise NotImplementedError

    def default_checkpoint(self) -> Path | None:
        """Weights to load when the user gives none (None: random init)."""
        return None

    def preprocess_numbers(self) -> dict | None:
        """preprocess.json's numbers from the model's own config (None: not known)."""
        return None

    def labels(self) -> dict[str, str] | None:
        """index -> label from the model's own config (None: not known)."""
        return None


def _modules() -> list:
    return [importlib.import_module(f"{__name__}.{info.name}")
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)]


def resolve(spec: ModelSpec) -> Source:
    """The source for a spec, or SourceError listing what each source accepts."""
    for module in _modules():
        if module.matches(spec):
            return module.make(spec)
    usage = "; ".join(module.USAGE for module in _modules())
    raise SourceError(f"Unknown architecture {spec.arch!r}. Use {usage}.")


def parse_kwargs(text: str | None) -> dict:
    """--model-kwargs: a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SourceError(f"--model-kwargs is not JSON ({exc}): {text!r}") from exc
    if not isinstance(value, dict):
        raise SourceError(f"--model-kwargs must be a JSON object, got {type(value).__name__}")
    return value
