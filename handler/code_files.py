"""Importing the model's own Python code: the architecture file (eager format), the
preprocessing module and a research code folder (`package --code-dir`), at packaging and in the
worker. In the worker the code folder's modules sit at the model directory's root, which
TorchServe puts first on the worker's path; at packaging `importing_from` finds them in the
folder itself, and only there."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
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
        raise CodeFileError(f"{path} failed to import: {import_failure(exc)}") from exc
    if register:
        sys.modules[module_name] = module
    return module


def import_module(name: str) -> ModuleType:
    """A module of the code folder by its dotted name (`research_lib.net`)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise CodeFileError(f"module {name} failed to import: {import_failure(exc)}") from exc


def import_failure(exc: BaseException) -> str:
    """Why an import failed, in one line; a missing module is named with the file whose import
    statement asked for it, the one line an operator needs to fix the code or the environment."""
    if isinstance(exc, ModuleNotFoundError):
        where = _importing_file(exc)
        return (f"{where} imports {exc.name!r}, which is neither in the model's code nor installed "
                f"here (ModuleNotFoundError)")
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"


def _importing_file(exc: BaseException) -> str:
    # The deepest frame that is real source: the import machinery's frames are frozen.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "the model's code"


class _FolderFinder:
    """Finds top-level modules and packages in one folder; their submodules follow their
    packages' __path__ as usual."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def find_spec(self, name: str, path=None, target=None):
        if path is not None:  # a submodule: its package's own path finds it
            return None
        return importlib.machinery.PathFinder.find_spec(name, [self.folder])


@contextmanager
def importing_from(folder: Path | None) -> Iterator[None]:
    """While the block runs, `import x` finds x in `folder` first, as the worker finds it in
    its model directory (nothing when `folder` is None). Modules imported stay imported."""
    if folder is None:
        yield
        return
    finder = _FolderFinder(Path(folder).resolve())
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
