"""The model's own Python code, at packaging and in the worker.

Importing its files: the architecture file (eager format), the preprocessing module and a
research code folder (`package --code-dir`). In the worker the code folder's modules sit at the
model directory's root, which TorchServe puts first on the worker's path; at packaging
`importing_from` finds them in the folder itself, and only there.

Preprocessing as code: a module of the model's own, shipped in the archive and hashed in its
manifest, defining

    def preprocess(image: PIL.Image.Image) -> numpy.ndarray | torch.Tensor   # C x H x W float32

for what no preprocess.json can say. It may also return V x C x H x W: V views of the image
(test-time augmentation: a flip, five or ten crops), each run through the model and its head,
the answer the mean of the views' probabilities (handler/head.py). `preprocess` may be any
callable, e.g. a notebook's `preprocess = transforms.Compose([...])` (torchvision transforms
v1 or v2), and may return a numpy array or a torch tensor (a v2 `tv_tensors.Image` included).
It receives the image after the header checks, the decode, EXIF orientation and the conversion
to RGB (handler/preprocessing.py), and returns the model's input. Export validation runs this same
file on the validation photos; the worker runs it on every request.

The module may also declare the size of the input it makes,

    INPUT_SIZE = (224, 224)                                   # width, height in pixels

so that a large JPEG is decoded reduced (libjpeg's 1/2, 1/4, 1/8 scale) to a short side of no
less than the larger of the two: a 50 MP photo then costs the worker a few MB instead of 150 MB
of pixels. A module that declares nothing is handed a short side of at least DEFAULT_INPUT_SIDE.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image

from handler.integrity import sha256_file


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


FUNCTION = "preprocess"
SIZE = "INPUT_SIZE"
# The short side a module that declares no INPUT_SIZE is handed at least: above any classifier's
# input, and a 50 MP JPEG still decodes at 1/4 scale (3 MP).
DEFAULT_INPUT_SIDE = 1024


class PreprocessCodeError(ValueError):
    """The module does not import, has no `preprocess`, or it returned something unusable."""


@dataclass(frozen=True)
class Transform:
    """The module's `preprocess` function and the short side its image keeps at least."""

    function: Callable[[Image.Image], np.ndarray | torch.Tensor]
    decode_side: int = DEFAULT_INPUT_SIDE

    def __call__(self, img: Image.Image) -> np.ndarray | torch.Tensor:
        return self.function(img)


def load(path: str | Path) -> Transform:
    """The module's `preprocess` function and declared INPUT_SIZE; imported under a name derived
    from the file's bytes, so two archives' modules never share an entry in sys.modules."""
    path = Path(path)
    try:
        name = f"preprocess_code_{sha256_file(path)[:12]}"
        module = import_file(path, name)
    except (OSError, CodeFileError) as exc:
        raise PreprocessCodeError(str(exc)) from exc
    function = getattr(module, FUNCTION, None)
    if not callable(function):
        raise PreprocessCodeError(f"{path} defines no callable {FUNCTION}(image) -> numpy.ndarray "
                                  "or torch.Tensor")
    return Transform(function, _decode_side(getattr(module, SIZE, None), path))


def _decode_side(size: object, path: Path) -> int:
    if size is None:
        return DEFAULT_INPUT_SIDE
    valid = (isinstance(size, (tuple, list)) and len(size) == 2
             and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size))
    if not valid:
        raise PreprocessCodeError(f"{path}: {SIZE} must be (width, height) in pixels, got {size!r}")
    return max(size)


def to_tensor(transform: Transform, img: Image.Image, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Run the transform; its output must be a finite C x H x W (or V x C x H x W: views) float32
    array or tensor (of `shape`, when given: the shape every request of a batch must share)."""
    arr = as_array(transform(img))
    if arr.dtype != np.float32:
        raise PreprocessCodeError(f"{FUNCTION}() returned dtype {arr.dtype}, not float32")
    if arr.ndim not in (3, 4) or 0 in arr.shape:
        raise PreprocessCodeError(f"{FUNCTION}() returned shape {arr.shape}, not C x H x W (or "
                                  "V x C x H x W: V views of the image)")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise PreprocessCodeError(f"{FUNCTION}() returned shape {arr.shape}; the validated shape is "
                                  f"{tuple(shape)}")
    if not np.isfinite(arr).all():
        raise PreprocessCodeError(f"{FUNCTION}() returned NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr))


def as_array(out: object) -> np.ndarray:
    """The transform's output as a numpy array: a tensor (a torchvision v2 tv_tensor is one) is
    read as it is, on the CPU, its dtype kept for the checks that follow."""
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().as_subclass(torch.Tensor).numpy()
    if isinstance(out, np.ndarray):
        return out
    raise PreprocessCodeError(f"{FUNCTION}() returned {type(out).__name__}, not a numpy.ndarray or "
                              "torch.Tensor")
