"""The user's own architecture file and class: `--model-file my_net.py --model-class MyNet
[--model-kwargs '{"width": 32}']`, with `--checkpoint state_dict.pth`. The file travels in the
archive as TorchServe's model file does; the eager format rebuilds the model from it. Or a class
of a research code folder: `--code-dir DIR --model-class package.module:Class`, imported from
DIR (which travels in the archive, scripts/packaging/code_dir.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn

from handler.model_code import CodeFileError, import_file, import_module
from scripts.packaging.sources import ModelSpec, Source, SourceError

USAGE = ("--model-file FILE.py --model-class NAME [--model-kwargs JSON], or --code-dir DIR "
         "--model-class package.module:Class (your own nn.Module)")


def matches(spec: ModelSpec) -> bool:
    return spec.model_file is not None or ":" in (spec.model_class or "")


def make(spec: ModelSpec) -> ModelFileSource | CodeClassSource:
    if spec.model_file is not None:
        return ModelFileSource(Path(spec.model_file), spec.model_class, spec.model_kwargs)
    return CodeClassSource(spec.model_class, spec.model_kwargs, spec.code_dir)


def model_class(module, path: Path, name: str | None) -> type[nn.Module]:
    classes = {n: c for n, c in vars(module).items()
               if inspect.isclass(c) and issubclass(c, nn.Module) and c.__module__ == module.__name__}
    if name is None:
        if len(classes) != 1:
            raise SourceError(f"{path} defines {len(classes)} nn.Module classes "
                              f"({', '.join(sorted(classes)) or 'none'}): name one with --model-class")
        return next(iter(classes.values()))
    if name not in classes:
        raise SourceError(f"{path} has no nn.Module class {name!r} (it defines: "
                          f"{', '.join(sorted(classes)) or 'none'})")
    return classes[name]


class ModelFileSource(Source):
    sets_num_classes = False

    def __init__(self, path: Path, class_name: str | None, kwargs: dict) -> None:
        self.architecture_file = path
        try:  # registered: torch.export and pickling find classes by module
            module = import_file(path, f"user_model_{path.stem}", register=True)
        except CodeFileError as exc:
            raise SourceError(str(exc)) from exc
        self.cls = model_class(module, path, class_name)
        self.kwargs = dict(kwargs)
        self.name = f"{path.name}:{self.cls.__name__}"

    def build(self, num_classes: int | None) -> nn.Module:
        try:
            return self.cls(**self.kwargs)
        except Exception as exc:
            raise SourceError(f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())}) "
                              f"failed: {type(exc).__name__}: {exc}") from exc

    def record(self, num_classes: int) -> dict:
        return {"source": "model_file", "class": self.cls.__name__, "kwargs": self.kwargs}


class CodeClassSource(ModelFileSource):
    """`--model-class package.module:Class` from the --code-dir folder, imported by its module
    name as the worker imports it."""

    def __init__(self, target: str, kwargs: dict, code_dir: Path | None) -> None:
        module_name, _, class_name = target.partition(":")
        if code_dir is None:
            raise SourceError(f"--model-class {target} names a module of a code folder: add --code-dir DIR")
        try:
            module = import_module(module_name)
        except CodeFileError as exc:
            raise SourceError(str(exc)) from exc
        origin = Path(getattr(module, "__file__", None) or "").resolve()
        if not origin.is_relative_to(Path(code_dir).resolve()):
            raise SourceError(f"--model-class {target}: module {module_name} is not in --code-dir "
                              f"{code_dir} (found at {origin})")
        self.architecture_file = None
        self.code_module = module_name
        self.cls = model_class(module, origin, class_name or None)
        self.kwargs = dict(kwargs)
        self.name = f"{module_name}:{self.cls.__name__}"

    def record(self, num_classes: int) -> dict:
        return {"source": "code_dir", "module": self.code_module, "class": self.cls.__name__,
                "kwargs": self.kwargs}
