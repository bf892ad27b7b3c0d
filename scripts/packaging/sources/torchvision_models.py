"""Any torchvision classification architecture by name (resnet50, vit_l_16, ...), random init
or a local state dict; torchvision's weights are never downloaded."""

from __future__ import annotations

import warnings
from functools import cache
from importlib import metadata

from torch import nn

from scripts.packaging.sources import ModelSpec, Source

USAGE = "a torchvision classifier name (resnet50, vit_l_16, ...)"


@cache
def classifiers() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def matches(spec: ModelSpec) -> bool:
    return spec.model_file is None and spec.arch is not None and spec.arch in classifiers()


def make(spec: ModelSpec) -> TorchvisionSource:
    return TorchvisionSource(spec.arch)


class TorchvisionSource(Source):

    def __init__(self, arch: str) -> None:
        self.name = arch

    def build(self, num_classes: int) -> nn.Module:
        import torchvision

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notices
            return torchvision.models.get_model(self.name, weights=None, num_classes=num_classes)

    def record(self, num_classes: int) -> dict:
        return {"source": "torchvision", "torchvision_version": metadata.version("torchvision"),
                "builder": f"torchvision.models.get_model({self.name!r}, weights=None, "
                           f"num_classes={num_classes})"}
