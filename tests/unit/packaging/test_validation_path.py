"""Export validates the served transform from the first byte: the validation set is encoded
JPEG bytes through `preprocess_bytes`, and one of them takes the reduced-size (draft) decode."""

from __future__ import annotations

import io

import torch
from PIL import Image

from handler.preprocessing import PreprocessConfig, decode_rgb, open_image, preprocess_image, to_tensor
from scripts import repo
from scripts.packaging.export import validation_batch
from scripts.packaging.sample_photos import LARGE_PHOTO, validation_images

CFG = PreprocessConfig.load(repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json")


def test_validation_rows_are_the_served_tensors_of_the_same_bytes():
    names, batch = validation_batch(CFG)
    images = validation_images()
    assert names == list(images)
    for row, name in enumerate(names):
        served, _ = preprocess_image(images[name], CFG)  # what the worker computes
        assert torch.equal(batch[row], served), name


def test_a_validation_jpeg_is_decoded_through_the_draft_path():
    data = validation_images()[LARGE_PHOTO[0]]
    header_size = Image.open(io.BytesIO(data)).size
    decoded = decode_rgb(open_image(data, CFG), CFG)
    assert decoded.size[0] < header_size[0] / 1.9  # libjpeg decoded it at a reduced scale
    # ... which gives other pixels than a full decode: validating on decoded arrays would not
    # have validated what is served.
    full = Image.open(io.BytesIO(data)).convert("RGB")
    names, batch = validation_batch(CFG)
    assert not torch.equal(batch[names.index(LARGE_PHOTO[0])], to_tensor(full, CFG))
