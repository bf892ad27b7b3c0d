"""A timm architecture by name (`timm:NAME`), random init or a local state dict. Nothing is ever
downloaded: `pretrained=False`, and the hub is switched offline before timm is imported. The
preprocessing numbers come from the model's pretrained config (timm's resolve_data_config)."""

from __future__ import annotations

import difflib
import math
import os
from importlib import metadata

from torch import nn

from scripts.packaging.sources import ModelSpec, Source, SourceError

PREFIX = "timm:"
USAGE = "timm:NAME (a timm architecture, e.g. timm:resnet18, timm:vit_large_patch16_224)"
# timm's interpolation names -> preprocess.json's
INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "lanczos": "lanczos"}


def matches(spec: ModelSpec) -> bool:
    return spec.model_file is None and (spec.arch or "").startswith(PREFIX)


def make(spec: ModelSpec) -> TimmSource:
    return TimmSource(spec.arch.removeprefix(PREFIX), spec.model_kwargs)


def _timm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no download, ever (pretrained=False anyway)
    import timm

    return timm


class TimmSource(Source):

    def __init__(self, model_name: str, kwargs: dict) -> None:
        timm = _timm()
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SourceError(f"timm has no architecture {model_name!r}{hint}")
        self.model_name = model_name
        self.kwargs = dict(kwargs)
        self.name = PREFIX + model_name
        self._cfg = timm.models.get_pretrained_cfg(model_name)

    def build(self, num_classes: int) -> nn.Module:
        return _timm().create_model(self.model_name, pretrained=False, num_classes=num_classes,
                                    **self.kwargs)

    def record(self, num_classes: int) -> dict:
        kwargs = {**self.kwargs, "pretrained": False, "num_classes": num_classes}
        return {"source": "timm", "timm_version": metadata.version("timm"),
                "builder": f"timm.create_model({self.model_name!r}, "
                           + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"}


    def preprocess_numbers(self) -> dict:
        """timm's eval transform: resize the short side to floor(size / crop_pct), centre crop."""
        cfg = self._cfg.to_dict() if self._cfg is not None else {}
        _, height, width = cfg.get("input_size", (3, 224, 224))
        if height != width:
            raise SourceError(f"{self.name} takes {height}x{width} inputs; preprocess.json describes "
                              "square crops: pass --preprocess-code with a function for this size")
        mode = cfg.get("crop_mode", "center")
        if mode not in ("center", "squash"):
            raise SourceError(f"{self.name}: timm crop_mode {mode!r} has no preprocess.json form; "
                              "pass --preprocess or --preprocess-code")
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        numbers = {"input_size": height,
                   "resize_size": math.floor(height / crop_pct),
                   "interpolation": INTERPOLATIONS.get(cfg.get("interpolation", "bilinear"), "bilinear"),
                   "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
                   "std": list(cfg.get("std", (0.229, 0.224, 0.225)))}
        if mode == "squash":  # the whole image resized to the input, no crop
            numbers.update(resize_size=height, crop="none")
        return numbers
