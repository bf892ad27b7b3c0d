"""Real photos shipped inside scikit-image and scikit-learn, written as JPEG/PNG files.

They are the export's validation set (export.validate, as encoded bytes: `validation_images`),
the benchmarks' load and the tests' photos; to get some to send to a running server:

    python -m scripts.packaging.sample_photos photos/

Nothing is downloaded: these arrays are part of the installed packages (build requirements).
"""

from __future__ import annotations

import argparse
import io
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


# The validation set's one large photo: big enough that libjpeg decodes it reduced (the draft
# path, handler/preprocessing.py) for any resize_size up to 512, so export validates that path too.
LARGE_PHOTO = ("cat_large", "cat", 4)


def jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def validation_images() -> dict[str, bytes]:
    """name -> JPEG bytes: every sample photo as `write_photos` encodes it, and LARGE_PHOTO (a
    photo upscaled so that its decoding takes the reduced-size JPEG path). Export validates on
    these bytes through the served path, from the first byte."""
    photos = load_photos()
    images = {name: jpeg_bytes(arr) for name, arr in photos.items()}
    name, source, scale = LARGE_PHOTO
    arr = photos[source]
    large = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale),
                                        Image.Resampling.BICUBIC)
    images[name] = jpeg_bytes(np.asarray(large))
    return images


def write_photos(out_dir: str | Path, formats: tuple[str, ...] = ("jpg",)) -> list[Path]:
    """Write every sample photo in each format; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in load_photos().items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            if fmt == "jpg":
                path.write_bytes(jpeg_bytes(arr))
            else:
                Image.fromarray(arr).save(path)
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
