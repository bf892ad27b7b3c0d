"""Preprocessing and payload decoding without a server: accepted inputs, each input error, and a
property test that mutated image bytes give a valid tensor or an InputError, never anything else."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import ROOT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from payload import payload_to_bytes
from PIL import Image, ImageFile
from preprocessing import (
    INTERPOLATIONS,
    InputError,
    PreprocessConfig,
    decode_rgb,
    open_image,
    preprocess_bytes,
    to_tensor,
)

CFG = PreprocessConfig.load(ROOT / "config" / "efficientnet_lite0" / "preprocess.json")
RED, BLUE = (220, 20, 20), (20, 20, 220)


# ---- image builders (shared with the end-to-end tests) ----

def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth RGB image with a different ramp in each channel."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    (x + y) * 255 // max(width + height - 2, 1)], axis=-1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def two_halves(width: int = 80, height: int = 40) -> Image.Image:
    """Left half red, right half blue."""
    img = Image.new("RGB", (width, height), RED)
    img.paste(BLUE, (width // 2, 0, width, height))
    return img


def with_orientation(img: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif.tobytes())


def ascii_bmp(img: Image.Image | None = None) -> bytes:
    """A BMP whose every byte is below 0x80, so it is also valid UTF-8 text."""
    img = (img or gradient(64, 64)).resize((64, 64))
    dark = Image.fromarray(np.asarray(img.convert("RGB")) // 2)
    data = encode(dark, "BMP", dpi=(72, 72))
    assert max(data) < 0x80
    return data


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png16(width: int = 64, height: int = 48, value: int = 0xFFFF) -> bytes:
    arr = np.full((height, width), value, dtype=np.uint16)
    return encode(Image.fromarray(arr), "PNG")  # uint16 -> mode I;16


def animated_gif() -> bytes:
    """Frame 0 red, frame 1 blue."""
    frames = [Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def accepted_variants(img: Image.Image) -> dict[str, bytes]:
    """The same picture in every accepted format and colour mode."""
    rgba = img.convert("RGBA")
    rgba.putalpha(255)
    p_transparent = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    p_transparent.info["transparency"] = 255  # an unused palette index
    return {
        "jpeg": encode(img, "JPEG", quality=95),
        "png": encode(img, "PNG"),
        "webp": encode(img, "WEBP", quality=95),
        "bmp": encode(img, "BMP"),
        "gif": encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "grayscale_jpeg": encode(img.convert("L"), "JPEG", quality=95),
        "rgba_png": encode(rgba, "PNG"),
        "la_png": encode(img.convert("LA"), "PNG"),
        "p_transparent_png": encode(p_transparent, "PNG", transparency=255),
        "cmyk_jpeg": encode(img.convert("CMYK"), "JPEG", quality=95),
        "png16_gray": encode(Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257), "PNG"),
    }


def check_tensor(t: torch.Tensor, cfg: PreprocessConfig = CFG) -> None:
    assert isinstance(t, torch.Tensor)
    assert t.dtype == torch.float32 and tuple(t.shape) == (3, cfg.input_size, cfg.input_size)
    assert torch.isfinite(t).all()
    lo = (0 - max(cfg.mean)) / min(cfg.std)
    hi = (1 - min(cfg.mean)) / min(cfg.std)
    assert lo - 1e-4 <= t.min().item() and t.max().item() <= hi + 1e-4


def pixel(data: bytes, xy: tuple[int, int]) -> tuple[int, ...]:
    return decode_rgb(open_image(data, CFG), CFG).getpixel(xy)


def near(rgb: tuple[int, ...], want: tuple[int, ...], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(rgb, want))


def error_of(data: bytes, cfg: PreprocessConfig = CFG) -> InputError:
    with pytest.raises(InputError) as info:
        preprocess_bytes(data, cfg)
    err = info.value
    assert set(err.to_json()) == {"code", "type", "message"} and err.message
    return err


# ---- accepted inputs ----

@pytest.mark.parametrize("name", sorted(accepted_variants(gradient())))
def test_every_accepted_variant_gives_a_tensor(name):
    data = accepted_variants(gradient(96, 64))[name]
    check_tensor(preprocess_bytes(data, CFG))


def test_variants_agree_with_the_jpeg_reference():
    """Every format and mode decodes to roughly the same picture (grey ones to its luminance)."""
    variants = accepted_variants(gradient(96, 64))
    ref = preprocess_bytes(variants["png"], CFG)
    gray_ref = preprocess_bytes(variants["grayscale_jpeg"], CFG)
    for name, data in variants.items():
        want = gray_ref if ("gray" in name or name == "la_png") else ref
        diff = (preprocess_bytes(data, CFG) - want).abs().mean().item()
        assert diff < 0.1, (name, diff)


def test_transparent_pixels_become_the_configured_background():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # red, fully transparent
    assert pixel(encode(img, "PNG"), (5, 5)) == tuple(CFG.background_rgb)
    img.putalpha(255)
    assert pixel(encode(img, "PNG"), (5, 5)) == (255, 0, 0)


def test_cmyk_jpeg_keeps_its_colours():
    cyan = Image.new("CMYK", (32, 32), (255, 0, 0, 0))
    assert near(pixel(encode(cyan, "JPEG", quality=95), (5, 5)), (0, 255, 255))


def test_16_bit_png_is_scaled_not_clipped():
    assert pixel(png16(value=0xFFFF), (3, 3)) == (255, 255, 255)
    assert near(pixel(png16(value=0x8000), (3, 3)), (128, 128, 128), tol=1)


def test_gif_uses_its_first_frame():
    assert near(pixel(animated_gif(), (10, 10)), RED)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_honoured(fmt):
    # Orientation 6: the stored picture is shown rotated 90 degrees clockwise, so the stored
    # left half (red) must end up on top.
    data = with_orientation(two_halves(80, 40), 6, fmt)
    upright = decode_rgb(open_image(data, CFG), CFG)
    assert upright.size == (40, 80)
    assert near(upright.getpixel((20, 5)), RED) and near(upright.getpixel((20, 75)), BLUE)


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (640, 427), (257, 256), (1000, 60)])
def test_resampling_the_crop_box_equals_resize_then_crop(size):
    """to_tensor resamples only the centre crop's box; it must give the pixels of the textbook
    transform (resize the short side to resize_size, then crop input_size)."""
    rng = np.random.default_rng(sum(size))
    noise = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    for img in (gradient(*size), noise):
        w, h = img.size
        scale = CFG.resize_size / min(w, h)
        rw, rh = max(CFG.resize_size, round(w * scale)), max(CFG.resize_size, round(h * scale))
        left, top = (rw - CFG.input_size) // 2, (rh - CFG.input_size) // 2
        ref = img.resize((rw, rh), INTERPOLATIONS[CFG.interpolation]).crop(
            (left, top, left + CFG.input_size, top + CFG.input_size))
        want = (np.asarray(ref, np.float32) - np.float32(CFG.mean[0] * 255)) / np.float32(CFG.std[0] * 255)
        got = to_tensor(img, CFG).permute(1, 2, 0).numpy()
        # One grey level at most, from rounding in the resampler's fixed-point arithmetic.
        assert np.abs(got - want).max() <= 1.01 / (CFG.std[0] * 255)


def test_large_jpeg_is_decoded_reduced_but_still_big_enough():
    data = encode(gradient(2400, 1600), "JPEG", quality=90)
    img = decode_rgb(open_image(data, CFG), CFG)
    assert min(img.size) >= CFG.resize_size and img.size[0] < 2400
    check_tensor(preprocess_bytes(data, CFG))


# ---- each input error ----

HOSTILE = {
    # name: (bytes, status, type)
    "empty": (b"", 400, "EmptyInput"),
    "random_bytes": (np.random.default_rng(0).bytes(4096), 415, "UnsupportedMediaType"),
    "html": (b"<!doctype html><html><body>not an image</body></html>", 415, "UnsupportedMediaType"),
    "tiff": (encode(gradient(), "TIFF"), 415, "UnsupportedMediaType"),
    "jpeg_cut_in_the_middle": (None, 400, "CorruptImage"),
    "jpeg_header_only": (None, 400, "CorruptImage"),
    "png_bad_crc": (None, 400, "CorruptImage"),
    "png_declaring_100000x100000": (png_declaring(100_000, 100_000), 413, "ImageTooLarge"),
    "png_declaring_7000x7000": (png_declaring(7000, 7000), 413, "ImageTooLarge"),
    "too_small_8x8": (encode(gradient(8, 8), "PNG"), 400, "ImageTooSmall"),
    "thin_strip_20x1000": (encode(gradient(1000, 20), "PNG"), 400, "AspectRatioTooLarge"),
}


def hostile_bytes(name: str) -> bytes:
    data = HOSTILE[name][0]
    if data is not None:
        return data
    jpeg = encode(gradient(320, 240), "JPEG", quality=90)
    if name == "jpeg_cut_in_the_middle":
        return jpeg[: len(jpeg) // 2]
    if name == "jpeg_header_only":
        return jpeg[:12]
    png = bytearray(encode(gradient(), "PNG"))
    png[-20] ^= 0xFF  # inside the last IDAT chunk: its CRC no longer matches
    return bytes(png)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_bad_input_has_its_status_and_type(name):
    _, status, kind = HOSTILE[name]
    err = error_of(hostile_bytes(name))
    assert (err.status, err.error_type) == (status, kind), err.to_json()


@pytest.mark.parametrize("side", [100_000, 7000])
def test_pixel_bomb_is_refused_from_the_header(monkeypatch, side):
    # "Before decoding the pixels": no pixel decoder is ever asked to load the image.
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size))
    open_image(encode(gradient(), "PNG"), CFG).load()
    assert loads == [(64, 48)]  # the spy sees loads
    with pytest.raises(InputError) as info:
        preprocess_bytes(png_declaring(side, side), CFG)
    assert info.value.status == 413 and loads == [(64, 48)]


def test_limits_come_from_the_config_file():
    raw = json.loads((ROOT / "config" / "efficientnet_lite0" / "preprocess.json").read_text())
    limits = raw["limits"]
    assert (CFG.max_bytes, CFG.max_pixels, CFG.min_side) == (
        limits["max_bytes"], limits["max_pixels"], limits["min_side"])
    assert CFG.max_aspect_ratio == limits["max_aspect_ratio"]
    png = encode(gradient(64, 48), "PNG")
    check_tensor(preprocess_bytes(png, CFG))
    tight = PreprocessConfig.from_dict({**raw, "limits": {**limits, "max_bytes": len(png) - 1}})
    assert error_of(png, tight).error_type == "PayloadTooLarge"
    assert error_of(png, dataclasses.replace(CFG, min_side=50)).error_type == "ImageTooSmall"
    assert error_of(png, dataclasses.replace(CFG, max_pixels=64 * 48 - 1)).error_type == "ImageTooLarge"
    assert error_of(png, dataclasses.replace(CFG, max_aspect_ratio=1.2)).error_type == "AspectRatioTooLarge"
    no_gif = dataclasses.replace(CFG, formats=("JPEG", "PNG"))
    assert error_of(animated_gif(), no_gif).status == 415
    with pytest.raises(ValueError, match="unknown limit"):
        PreprocessConfig.from_dict({**raw, "limits": {"max_pixel": 5}})


# ---- payload: request row -> bytes ----

def test_payload_forms():
    jpeg = encode(gradient(), "JPEG")
    b64 = base64.b64encode(jpeg).decode()
    rows = [
        {"body": jpeg},
        {"data": bytearray(jpeg)},
        {"file": jpeg},
        {"caption": "hello", "upload": jpeg},
        {"body": {"image": b64}},
        {"body": json.dumps({"image": b64}).encode()},
        {"body": "  " + json.dumps({"image": b64})},
        {"body": b64},
        {"body": "data:image/jpeg;base64," + b64},
        {"body": base64.urlsafe_b64encode(jpeg).decode().rstrip("=")},
        {"body": base64.encodebytes(jpeg).decode()},  # wrapped at 76 columns
    ]
    for row in rows:
        assert payload_to_bytes(row) == jpeg, list(row)


@pytest.mark.parametrize("row,status,kind", [
    ({}, 400, "EmptyInput"),
    ({"body": None}, 400, "EmptyInput"),
    ({"body": "   "}, 400, "EmptyInput"),
    ({"body": b"{not json"}, 400, "InvalidJSON"),
    ({"body": [1, 2]}, 400, "InvalidJSON"),
    ({"body": 5}, 400, "InvalidJSON"),
    ({"body": {"picture": "abc"}}, 400, "InvalidJSON"),
    ({"body": {"image": "not base64 at all!"}}, 400, "InvalidBase64"),
])
def test_payload_errors(row, status, kind):
    with pytest.raises(InputError) as info:
        payload_to_bytes(row)
    assert (info.value.status, info.value.error_type) == (status, kind)


def test_text_that_is_not_base64_goes_to_the_decoder():
    # TorchServe hands a text/* body that is valid UTF-8 over as str: HTML must still be a 415,
    # and an image whose bytes happen to be valid UTF-8 must still be decoded.
    assert error_of(payload_to_bytes({"body": "<html><body>hi</body></html>"})).status == 415
    bmp = ascii_bmp()
    assert payload_to_bytes({"body": bmp.decode("utf-8")}) == bmp
    check_tensor(preprocess_bytes(bmp, CFG))


# ---- the handler: one request's failure stays that request's ----

class RecordingContext:
    def __init__(self) -> None:
        self.status: dict[int, tuple[int, str]] = {}
        self.content_type: dict[int, str] = {}

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type[idx] = value


class NoMetrics:
    """Accepts any metric call: this test is about responses, not metrics."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def bare_handler(monkeypatch):
    spec = importlib.util.spec_from_file_location("served_handler", ROOT / "handler" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    h = module.ImageClassifierHandler()
    h.context, h.preprocess_config, h.metrics = RecordingContext(), CFG, NoMetrics()
    h.runner = lambda x: torch.linspace(0, 1, 10).repeat(x.shape[0], 1)
    h.top_k, h.labels, h.model_name, h.model_version = 3, {}, "m", "1.0"
    real = module.preprocess_bytes

    def with_a_bug(data: bytes, cfg: PreprocessConfig) -> torch.Tensor:
        if data == b"trigger a bug":
            raise RuntimeError("an unexpected failure, not the client's fault")
        return real(data, cfg)

    monkeypatch.setattr(module, "preprocess_bytes", with_a_bug)
    return h


def test_batch_errors_are_per_request(monkeypatch):
    h = bare_handler(monkeypatch)
    good = encode(gradient(), "PNG")
    rows = [{"body": good}, {"body": b"trigger a bug"}, {"body": b"garbage"}, {"data": good}, {}]
    out = h.postprocess(h.inference(h.preprocess(rows)))
    assert len(out) == 5
    for idx in (0, 3):
        assert [p["index"] for p in out[idx]["predictions"]] == [9, 8, 7] and idx not in h.context.status
    assert h.context.status == {1: (500, "Internal Server Error"), 2: (415, "Unsupported Media Type"),
                                4: (400, "Bad Request")}
    assert out[1]["type"] == "InternalServerError" and "logged" in out[1]["message"]
    assert out[2]["code"] == 415 and out[4]["type"] == "EmptyInput"
    assert h.context.content_type == dict.fromkeys(range(5), "application/json")  # answers and errors


# ---- property: mutated image bytes -> valid tensor or InputError ----

SMALL = gradient(40, 32)
SEEDS = [
    encode(SMALL, "JPEG", quality=80),
    encode(SMALL, "JPEG", quality=80, progressive=True),
    with_orientation(SMALL, 8),
    encode(SMALL, "PNG"),
    encode(SMALL.convert("RGBA"), "PNG"),
    png16(32, 24, 0x1234),
    encode(SMALL, "WEBP"),
    encode(SMALL, "BMP"),
    encode(SMALL.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
    animated_gif(),
    encode(SMALL.convert("CMYK"), "JPEG"),
]


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "splice", "field"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "cut":
            data = data[:pos]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[:pos] + other[draw(st.integers(0, len(other) - 1)):]
        elif op == "field" and len(data) > 24:
            # Overwrite a header-sized field with an extreme value (sizes, counts, lengths).
            pos = draw(st.integers(0, min(len(data), 64) - 4))
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                                      b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"]))
    return bytes(data)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF", "ignore:Truncated File Read",
                            "ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mutated_images(), st.binary(max_size=256)))
@example(data=b"")
@example(data=png_declaring(100_000, 100_000))
@example(data=SEEDS[0][: len(SEEDS[0]) // 2])
def test_mutated_bytes_give_a_tensor_or_an_input_error(data):
    try:
        tensor = preprocess_bytes(data, CFG)
    except InputError as err:
        assert err.status in (400, 413, 415) and err.error_type and err.message
        assert json.dumps(err.to_json())
        return
    check_tensor(tensor)
