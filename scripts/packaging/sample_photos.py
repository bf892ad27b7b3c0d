"""Real photos shipped inside scikit-image and scikit-learn, written as JPEG/PNG files.

They are the export's validation set (export.validate), the benchmarks' load and the tests'
photos; to get some to send to a running server:

    python -m scripts.packaging.sample_photos photos/

Nothing is downloaded: these arrays are part of the installed packages (build requirements).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (loader, ImageNet class indices that count as a correct top-1)
EXPECTED_TOP1 = {
    "cat": set(range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "temple": {698, 663, 442, 832, 668},  # palace, monastery, bell cote, stupa, mosque
}


def load_photos() -> dict[str, np.ndarray]:
    """HxWx3 uint8 arrays of the sample photos."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {
        "cat": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "temple": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
        "astronaut": data.astronaut(),
    }


def write_photos(out_dir: str | Path, formats: tuple[str, ...] = ("jpg",)) -> list[Path]:
    """Write every sample photo in each format; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in load_photos().items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            Image.fromarray(arr).save(path, quality=95) if fmt == "jpg" else Image.fromarray(arr).save(path)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", help="folder to write the photos into")
    parser.add_argument("--formats", nargs="+", default=["jpg"], help="file formats, e.g. jpg png")
    args = parser.parse_args()
    for path in write_photos(args.out_dir, tuple(args.formats)):
        print(path)


if __name__ == "__main__":
    main()
