"""A Hugging Face image classifier saved locally with `save_pretrained` (`hf:DIR`): config.json,
its weights and preprocessor_config.json. Loaded with local_files_only (never the hub); the
labels come from config.json's id2label, the preprocessing numbers from the image processor's."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from scripts.packaging.sources import ModelSpec, Source, SourceError

PREFIX = "hf:"
USAGE = "hf:DIR (a Hugging Face image classifier saved with save_pretrained)"
# PIL's resampling codes, as image processors store them -> preprocess.json's names
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
PROCESSOR_CONFIG = "preprocessor_config.json"


def matches(spec: ModelSpec) -> bool:
    return spec.model_file is None and (spec.arch or "").startswith(PREFIX)


def make(spec: ModelSpec) -> HuggingFaceSource:
    return HuggingFaceSource(Path(spec.arch.removeprefix(PREFIX)))


class LogitsOf(nn.Module):
    """The model's logits alone: what export and serving need from `ImageClassifierOutput`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class HuggingFaceSource(Source):
    sets_num_classes = False  # the folder's config fixes them; its weights load with it

    def __init__(self, folder: Path) -> None:
        if not (folder / "config.json").is_file():
            raise SourceError(f"{folder} is not a save_pretrained folder (no config.json)")
        self.folder = folder
        self.name = PREFIX + folder.name
        self.config = json.loads((folder / "config.json").read_text())

    def build(self, num_classes: int | None) -> nn.Module:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForImageClassification

        try:
            model = AutoModelForImageClassification.from_pretrained(str(self.folder), local_files_only=True)
        except Exception as exc:
            raise SourceError(f"Cannot load {self.folder} with transformers: {exc}") from exc
        return LogitsOf(model.eval())

    def record(self, num_classes: int) -> dict:
        return {"source": "transformers", "transformers_version": metadata.version("transformers"),
                "model_type": self.config.get("model_type"),
                "architectures": self.config.get("architectures"),
                "builder": f"AutoModelForImageClassification.from_pretrained({self.folder.name!r})"}

    def labels(self) -> dict[str, str] | None:
        id2label = self.config.get("id2label")
        return {str(k): str(v) for k, v in id2label.items()} if id2label else None

    def preprocess_numbers(self) -> dict | None:
        path = self.folder / PROCESSOR_CONFIG
        if not path.is_file():
            return None
        proc = json.loads(path.read_text())
        if not proc.get("do_rescale", True) or abs(proc.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
            raise SourceError(f"{path}: only rescaling by 1/255 has a preprocess.json form; pass "
                              "--preprocess-code")
        size, crop = proc.get("size", {}), proc.get("crop_size")
        numbers = {"interpolation": RESAMPLE.get(proc.get("resample", 2), "bilinear"),
                   "mean": list(proc.get("image_mean", (0.5, 0.5, 0.5))) if proc.get("do_normalize", True)
                   else [0.0, 0.0, 0.0],
                   "std": list(proc.get("image_std", (0.5, 0.5, 0.5))) if proc.get("do_normalize", True)
                   else [1.0, 1.0, 1.0]}
        if "height" in size:  # resized to exactly this size, no crop (ViT, DeiT, ...)
            if size["height"] != size.get("width"):
                raise SourceError(f"{path}: a non-square size {size} needs --preprocess-code")
            return {**numbers, "input_size": size["height"], "resize_size": size["height"], "crop": "none"}
        if "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            if crop and proc.get("do_center_crop", True):
                return {**numbers, "input_size": int(crop["height"]), "resize_size": edge}
            if "crop_pct" in proc:  # ConvNeXt: short side to edge / crop_pct, crop edge
                return {**numbers, "input_size": edge, "resize_size": int(edge / proc["crop_pct"])}
        raise SourceError(f"{path}: size {size} has no preprocess.json form; pass --preprocess")
