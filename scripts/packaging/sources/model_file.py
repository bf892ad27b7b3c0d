"""The user's own architecture file and class: `--model-file my_net.py --model-class MyNet
[--model-kwargs '{"width": 32}']`, with `--checkpoint state_dict.pth`. The file travels in the
archive as TorchServe's model file does; the eager format rebuilds the model from it."""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn

from handler.code_files import CodeFileError, import_file
from scripts.packaging.sources import ModelSpec, Source, SourceError

USAGE = "--model-file FILE.py --model-class NAME [--model-kwargs JSON] (your own nn.Module)"


def matches(spec: ModelSpec) -> bool:
    return spec.model_file is not None


def make(spec: ModelSpec) -> ModelFileSource:
    return ModelFileSource(Path(spec.model_file), spec.model_class, spec.model_kwargs)


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
