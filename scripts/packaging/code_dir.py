"""A research code folder travelling with the model (`package --code-dir DIR`): every `.py`
under DIR, packages included, is staged at the archive's root, where the worker imports it (its
model directory comes first on its path). At packaging the model class and the preprocessing
module import from DIR alone (handler.model_code.importing_from), and every module the build
imported must then be one the worker can import too: from the folder, the standard library or
an installed distribution, never from the packaging machine's working directory by accident."""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from handler import layout
from handler.model_code import importing_from
from scripts import repo
from scripts.ops.verified_copy import unsafe_name

# The archive's own names at its root: code of the folder may not replace them.
RESERVED = frozenset({layout.PACKAGE, layout.ENTRY_MODULE, layout.MODEL_FILE, layout.PREPROCESS_CODE,
                      layout.MAR_INF, *layout.SERIALIZED_FILE.values()})
# The packaging tool's own package: imported by the tool itself, never shipped.
TOOL_PACKAGES = frozenset({"scripts"})


class CodeDirError(ValueError):
    """The folder cannot travel in an archive, or the build imported code the worker lacks."""


def code_files(folder: Path) -> list[Path]:
    """Every .py under the folder (relative paths), checked: a name the server would refuse to
    unpack, or one of the archive's own, is an error naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CodeDirError(f"--code-dir {folder} is not a folder")
    files = sorted(p.relative_to(folder) for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    if not files:
        raise CodeDirError(f"--code-dir {folder} holds no .py file")
    for rel in files:
        if rel.parts[0] in RESERVED:
            raise CodeDirError(f"--code-dir {folder}: {rel} has a name the archive itself uses "
                               f"({rel.parts[0]}); rename that module or package")
        why = unsafe_name(rel.as_posix())
        if why is not None:
            raise CodeDirError(f"--code-dir {folder}: {rel} is {why}; rename that module or package "
                               "(serve start refuses such an archive)")
    return files


def stage(folder: Path, files: list[Path], stage_dir: Path) -> None:
    """Copy the folder's modules into the stage, at the archive's root."""
    for rel in files:
        (stage_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(folder) / rel, stage_dir / rel)


@contextmanager
def importing(folder: Path | None, model_file: Path | None = None) -> Iterator[None]:
    """The block imports the model's code from `folder` (or from nowhere but the installed
    packages); then every module it imported must be servable (check_imported)."""
    before = set(sys.modules)
    try:
        with importing_from(folder):
            yield
        check_imported(set(sys.modules) - before, folder, model_file)
    finally:  # another build in this process imports its own folder's modules of these names
        _forget(set(sys.modules) - before, folder)


def _forget(names: set[str], folder: Path | None) -> None:
    if folder is None:
        return
    root = Path(folder).resolve()
    for name in names:
        origin = getattr(sys.modules.get(name), "__file__", None)
        if origin is not None and Path(origin).resolve().is_relative_to(root):
            del sys.modules[name]


def check_imported(names: set[str], folder: Path | None, model_file: Path | None = None) -> None:
    """Each module must come from `folder`, the standard library, an installed distribution,
    the archive's handler package or the architecture file (shipped as model.py); any other was
    found by accident (the working directory, a path of this machine) and would not import in
    the worker."""
    allowed = [Path(p).resolve() for p in _installed_roots()] + [repo.HANDLER_DIR]
    allowed += [Path(p).resolve() for p in (folder, model_file) if p is not None]
    distributions = importlib.metadata.packages_distributions()
    for name in sorted(names):
        top = name.split(".")[0]
        origin = getattr(sys.modules.get(name), "__file__", None)
        if origin is None or top in TOOL_PACKAGES or top in distributions:
            continue  # built in, frozen or a namespace; the tool's own; installed
        path = Path(origin).resolve()
        if not any(path.is_relative_to(root) for root in allowed):
            raise CodeDirError(f"the model's code imported {name} from {origin}, which is neither in "
                               f"--code-dir nor installed: the worker could not import it; move it "
                               f"into --code-dir (or install it)")


def _installed_roots() -> set[str]:
    paths = sysconfig.get_paths()
    return {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
