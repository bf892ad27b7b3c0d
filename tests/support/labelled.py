"""A labelled photo folder as `package --eval-dir` reads it: views of the sample photos, each
labelled with the default model's own top-1 on it (so the expected top-1 is 1.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from handler import layout
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from handler.runner import load_runner
from scripts.ops.labelled import LABELS_FILE
from scripts.packaging import quantize
from scripts.packaging.sample_photos import jpeg_bytes, load_photos

VIEWS_PER_PHOTO = 4


def write_labelled(folder: Path, model_dir: Path) -> Path:
    cfg = PreprocessConfig.load(model_dir / layout.PREPROCESS_CONFIG)
    runner = load_runner(model_dir / "model.onnx")
    rows = []
    for i, (name, arr) in enumerate(load_photos().items()):
        for j, view in enumerate(quantize.views(Image.fromarray(arr), VIEWS_PER_PHOTO, seed=i)):
            data = jpeg_bytes(np.asarray(view))
            (folder / f"{name}_{j}.jpg").write_bytes(data)
            rows.append(f"{name}_{j}.jpg\t{int(runner(preprocess_bytes(data, cfg)[None]).argmax())}\n")
    (folder / LABELS_FILE).write_text("file\tindex\n" + "".join(rows))
    return folder
