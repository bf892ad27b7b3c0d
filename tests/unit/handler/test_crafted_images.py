"""Crafted images just under and just over every input limit (scripts/bench/micro/crafted_images.py),
in process: the corpus holds both sides of every costly kind (16-bit, palette and animated PNG,
lossless and animated WebP, plain and RLE BMP, a GIF of a thousand frames, progressive JPEG,
thousands of JPEG scans, ...), each within the upload limit, and each is accepted or refused
with its own status and type, through the default model's preprocess.json and through a
preprocessing module (docs/examples/letterbox_preprocess.py, as `package --preprocess-code`
ships it), which declares its input size."""

from __future__ import annotations

import pytest

from handler import layout
from handler.errors import InputError
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from scripts.bench.micro import request_cost
from tests.support.crafted import CFG, CODE


def test_the_corpus_covers_every_costly_kind_on_both_sides(crafted_cases):
    names = {c.name for c in crafted_cases}
    assert len(crafted_cases) >= 20
    for kind in ("png16", "png_palette_transparent", "apng_16_frames", "webp_lossless", "webp_animated",
                 "bmp_1bit", "bmp_rle8", "bmp_rle4", "gif_1000_frames", "jpeg_progressive",
                 "jpeg_baseline", "jpeg_scans", "jpeg_scan_pixels", "bmp_rle_noops"):
        assert {f"{kind}_under", f"{kind}_over"} <= names, kind
    assert all(len(c.data) <= CFG.max_bytes for c in crafted_cases)


@pytest.fixture(scope="module")
def code_cfg(tmp_path_factory) -> PreprocessConfig:
    """The example module staged beside its preprocess.json, with the default limits."""
    return PreprocessConfig.load(request_cost.code_config(CODE, tmp_path_factory.mktemp("code")))


@pytest.mark.parametrize("with_code", [False, True], ids=["preprocess_json", "preprocess_code"])
def test_each_case_in_process(crafted_cases, code_cfg, with_code):
    cfg = code_cfg if with_code else CFG
    for case in crafted_cases:
        if case.status == 200:
            shape = tuple(preprocess_bytes(case.data, cfg).shape)
            assert shape == (3, CFG.input_size, CFG.input_size), case.name
        else:
            with pytest.raises(InputError) as err:
                preprocess_bytes(case.data, cfg)
            assert (err.value.status, err.value.error_type) == (case.status, case.error_type), case.name


def test_the_example_module_declares_its_input_size(code_cfg):
    assert code_cfg.code == layout.PREPROCESS_CODE and code_cfg.transform.decode_side == 224
