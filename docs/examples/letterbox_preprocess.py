"""An example preprocessing module (`--preprocess-code`): what a notebook's transforms.Compose
of letterbox + resize + normalize becomes. The worker calls `preprocess` with the decoded,
upright RGB image and stacks what it returns; export validation calls it on the same photos'
bytes through the same path first. INPUT_SIZE lets the worker decode a large JPEG reduced to
just above it; ImageOps.pad fits the image into SIZE before padding, so no canvas is larger than
the output.

Notebook equivalent:
    transforms.Compose([Letterbox(fill=(124, 116, 104)), transforms.Resize((224, 224), BICUBIC),
                        transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
"""

import numpy as np
from PIL import Image, ImageOps

SIZE = (224, 224)
INPUT_SIZE = SIZE  # what the worker decodes a large JPEG down to (never below), not the full photo
FILL = (124, 116, 104)  # the dataset's mean colour, so padding looks like "nothing"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(image: Image.Image) -> np.ndarray:
    """RGB image -> 3 x 224 x 224 float32: the whole image, letterboxed, never cropped."""
    boxed = ImageOps.pad(image, SIZE, method=Image.Resampling.BICUBIC, color=FILL)
    arr = np.asarray(boxed, dtype=np.float32) / 255.0
    return ((arr - MEAN) / STD).transpose(2, 0, 1).copy()
