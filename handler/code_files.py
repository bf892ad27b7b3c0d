"""Importing a Python file of the model's own by its path: the architecture file (eager format)
and the preprocessing module, at packaging and in the worker."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


class CodeFileError(ValueError):
    """The file is missing or raised while it was imported; the message names it and why."""


def import_file(path: str | Path, module_name: str, register: bool = False) -> ModuleType:
    """The module a file defines, imported as `module_name` (`register`: also in sys.modules,
    where torch.export and pickle look classes up)."""
    path = Path(path)
    if not path.is_file():
        raise CodeFileError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CodeFileError(f"{path} failed to import: {type(exc).__name__}: {exc}") from exc
    if register:
        sys.modules[module_name] = module
    return module
