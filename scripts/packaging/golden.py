"""Golden answers at packaging: a few of the project's own sample photos (redistributable, from
scikit-image; never an evaluation set's) and the packaged artifact's answers to them, staged in
the archive's golden/ folder (handler/golden.py replays them in every worker).

GOLDEN_PHOTOS includes the validation set's large photo: its decoding takes libjpeg's reduced
(draft) path, so a change in that path shows too. About 0.6 MB in all (MAX_BYTES bounds it).
"""

from __future__ import annotations

import json
from pathlib import Path

from handler import golden, layout
from handler.head import SOFTMAX, Head
from handler.preprocessing import PreprocessConfig
from handler.runner import load_runner
from scripts.packaging.sample_photos import LARGE_PHOTO, validation_images

GOLDEN_PHOTOS = ("cat", "coffee", "rocket", LARGE_PHOTO[0])
MAX_BYTES = 1 << 20


def stage_golden(stage: Path, artifact: Path, cfg: PreprocessConfig, fmt: str,
                 model_head: Head = SOFTMAX) -> dict:
    """Write golden/NAME.jpg and golden/answers.json into `stage`; returns the answers document.
    The artifact runs as a worker runs it by default: one thread, on the CPU."""
    images = validation_images()
    photos = {f"{layout.GOLDEN_DIR}/{name}.jpg": images[name] for name in GOLDEN_PHOTOS}
    size = sum(map(len, photos.values()))
    if size > MAX_BYTES:  # a bound on every worker's start and on the archive
        raise ValueError(f"golden photos are {size} bytes, over {MAX_BYTES}")
    folder = stage / layout.GOLDEN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in photos.items():
        (stage / name).write_bytes(data)
    answers = golden.record(load_runner(artifact, threads=1), cfg, photos, fmt, model_head)
    (stage / layout.GOLDEN_ANSWERS).write_text(json.dumps(answers, indent=1, sort_keys=True))
    print(f"[package] golden answers: {len(photos)} photos ({size / 1e6:.2f} MB), top-1 "
          f"{[a['indices'][0] for a in answers['photos'].values()]}", flush=True)
    return answers
