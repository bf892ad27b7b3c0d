"""Preprocessing and payload decoding without a server: accepted inputs, each input error, and a
property test that mutated image bytes give a valid tensor or an InputError, never anything else."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from handler.errors import (
    BadInput,
    HandlerError,
    InputError,
    NotServed,
    ServerFault,
    TooLarge,
    UnsupportedMedia,
)
from handler.preprocessing import (
    INTERPOLATIONS,
    LIMIT_CASTS,
    PreprocessConfig,
    decode_rgb,
    open_image,
    preprocess_bytes,
    steps,
    to_tensor,
)
from handler.protocols.plain import payload_to_bytes
from handler.settings import ConfigError
from scripts import repo
from tests.support.images import (
    BLUE,
    HOSTILE,
    RED,
    accepted_variants,
    animated_gif,
    ascii_bmp,
    encode,
    gradient,
    hostile_bytes,
    png16,
    png_declaring,
    two_halves,
    with_orientation,
)

CFG = PreprocessConfig.load(repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json")


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


def test_limits_are_the_defaults_unless_the_config_file_changes_them():
    """The limits are PreprocessConfig's defaults (the service's cost budget); the model's
    preprocess.json states its transform, and a `limits` object there changes a limit."""
    raw = json.loads((repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json").read_text())
    assert "limits" not in raw
    defaults = {f.name: f.default for f in dataclasses.fields(PreprocessConfig) if f.name in LIMIT_CASTS}
    assert {name: getattr(CFG, name) for name in LIMIT_CASTS} == defaults
    png = encode(gradient(64, 48), "PNG")
    check_tensor(preprocess_bytes(png, CFG))
    tight = PreprocessConfig.from_dict({**raw, "limits": {"max_bytes": len(png) - 1}})
    assert tight.max_bytes == len(png) - 1 and tight.max_pixels == CFG.max_pixels
    assert error_of(png, tight).error_type == "PayloadTooLarge"
    assert error_of(png, dataclasses.replace(CFG, min_side=50)).error_type == "ImageTooSmall"
    assert error_of(png, dataclasses.replace(CFG, max_pixels=64 * 48 - 1)).error_type == "ImageTooLarge"
    assert error_of(png, dataclasses.replace(CFG, max_aspect_ratio=1.2)).error_type == "AspectRatioTooLarge"
    no_gif = dataclasses.replace(CFG, formats=("JPEG", "PNG"))
    assert error_of(animated_gif(), no_gif).status == 415
    with pytest.raises(ValueError, match="unknown key 'max_pixel' .*did you mean 'max_pixels'"):
        PreprocessConfig.from_dict({**raw, "limits": {"max_pixel": 5}})


# ---- errors: one class per outcome, the status from the class ----

@pytest.mark.parametrize("cls, status", [(BadInput, 400), (TooLarge, 413), (UnsupportedMedia, 415)])
def test_each_client_error_class_has_its_status(cls, status):
    err = cls("SomeType", "what went wrong")
    assert isinstance(err, InputError) and not isinstance(err, ServerFault)
    assert err.to_json() == {"code": status, "type": "SomeType", "message": "what went wrong"}


def test_not_served_and_server_errors_keep_their_bodies():
    assert NotServed("explanations").to_json()["code"] == 501
    assert NotServed("explanations").error_type == "NotImplemented" and isinstance(NotServed("x"), InputError)
    fault = ServerFault()
    assert not isinstance(fault, InputError) and isinstance(fault, HandlerError)
    assert fault.to_json() == {"code": 500, "type": "InternalServerError",
                               "message": "The server failed on this image; the error is logged."}


@pytest.mark.parametrize("base", [HandlerError, InputError])
def test_a_base_class_has_no_status_to_answer_with(base):
    with pytest.raises(TypeError, match="raise one of its subclasses"):
        base("SomeType", "message")


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


def test_per_format_pixel_budget_from_the_header():
    """Non-JPEG formats and progressive JPEGs decode in full: their pixel caps are lower than a
    baseline JPEG's, which decodes reduced (limits.max_pixels_by_format)."""
    caps = dict(CFG.max_pixels_by_format)
    assert caps["PNG"] < CFG.max_pixels and caps["JPEG_PROGRESSIVE"] < CFG.max_pixels
    tight = dataclasses.replace(CFG, max_pixels_by_format=(("PNG", 64 * 48 - 1),
                                                           ("JPEG_PROGRESSIVE", 64 * 48 - 1)))
    png, jpeg, prog = io.BytesIO(), io.BytesIO(), io.BytesIO()
    img = Image.new("RGB", (64, 48), (200, 10, 10))
    img.save(png, "PNG")
    img.save(jpeg, "JPEG")
    img.save(prog, "JPEG", progressive=True)
    assert error_of(png.getvalue(), tight).error_type == "ImageTooLarge"
    assert error_of(prog.getvalue(), tight).error_type == "ImageTooLarge"
    assert preprocess_bytes(jpeg.getvalue(), tight).shape[-1] == CFG.input_size  # baseline: no cap
    at_cap = dataclasses.replace(tight, max_pixels_by_format=(("PNG", 64 * 48),))
    assert preprocess_bytes(png.getvalue(), at_cap).shape[-1] == CFG.input_size


# ---- declarative steps: greyscale, letterbox, a resize without crop (preprocess.json) ----

STEPS_BASE = {"input_size": 32, "resize_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]}


def solid(width: int, height: int, rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), rgb)


def pixels(img: Image.Image, raw: dict) -> np.ndarray:
    """HxWx3 of the config's output, back in 0..255."""
    cfg = PreprocessConfig.from_dict({**STEPS_BASE, **raw})
    return to_tensor(img, cfg).permute(1, 2, 0).numpy() * 255


def test_greyscale_step_gives_three_equal_channels():
    out = pixels(solid(64, 64, (200, 40, 10)), {"greyscale": True})
    assert np.allclose(out[..., 0], out[..., 1]) and np.allclose(out[..., 1], out[..., 2])
    assert abs(out[0, 0, 0] - round(0.299 * 200 + 0.587 * 40 + 0.114 * 10)) <= 1  # ITU-R 601 luma


def test_letterbox_pads_to_a_square_with_its_colour_before_the_resize():
    out = pixels(solid(64, 32, (255, 0, 0)), {"letterbox_rgb": [0, 0, 255], "crop": "none"})
    assert np.allclose(out[0, 16], (0, 0, 255), atol=1) and np.allclose(out[-1, 16], (0, 0, 255), atol=1)
    assert np.allclose(out[16, 16], (255, 0, 0), atol=1)


def test_crop_none_keeps_the_whole_image():
    img = solid(96, 32, (0, 255, 0))
    img.paste((255, 0, 0), (0, 0, 8, 32))  # a red band at the left edge
    assert pixels(img, {"crop": "none"})[16, 0, 0] > 200  # resized whole: the band is there
    assert pixels(img, {})[16, 0, 0] < 50  # the centre crop cuts it off


@pytest.mark.parametrize("raw, message", [
    ({"crop": "side"}, 'crop must be "center" or "none"'),
    ({"letterbox_rgb": [300, 0, 0]}, "letterbox_rgb needs three values"),
    ({"greyscal": True}, "did you mean 'greyscale'"),
])
def test_declarative_steps_are_strict(raw, message):
    with pytest.raises(ConfigError, match=message):
        PreprocessConfig.from_dict({**STEPS_BASE, **raw})


def test_code_replaces_the_numbers_and_runs_on_the_rgb_image(tmp_path):
    (tmp_path / "pre.py").write_text(
        "import numpy as np\n"
        "def preprocess(image):\n"
        "    assert image.mode == 'RGB'\n"
        "    return np.full((1, 8, 6), image.width, dtype=np.float32)\n")
    (tmp_path / "preprocess.json").write_text(json.dumps({"code": "pre.py"}))
    cfg = PreprocessConfig.load(tmp_path / "preprocess.json")
    buf = io.BytesIO()
    solid(40, 30, (1, 2, 3)).convert("L").save(buf, "PNG")  # greyscale in, RGB to the code
    tensor = preprocess_bytes(buf.getvalue(), cfg)
    assert tensor.shape == (1, 8, 6) and float(tensor[0, 0, 0]) == 40.0


def test_code_that_does_not_import_is_a_config_error(tmp_path):
    (tmp_path / "pre.py").write_text("raise ImportError('needs cv2')\n")
    (tmp_path / "preprocess.json").write_text(json.dumps({"code": "pre.py"}))
    with pytest.raises(ConfigError, match="pre.py failed to import: ImportError: needs cv2"):
        PreprocessConfig.load(tmp_path / "preprocess.json")


# ---- the per-request cost budget with letterboxing and with preprocessing code ----

def noise_jpeg(width: int, height: int) -> bytes:
    """A baseline JPEG with a photo's entropy (noise at 1/64 of the size, upscaled)."""
    noise = np.random.default_rng(1).integers(0, 255, (height // 64, width // 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).resize((width, height)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


RECORDING_CODE = """
from pathlib import Path

import numpy as np
{declaration}


def preprocess(image):
    Path(__file__).with_suffix(".seen").write_text("%d %d" % image.size)
    return np.zeros((3, 8, 8), dtype=np.float32)
"""


def received_size(tmp_path, declaration: str, body: bytes) -> tuple[int, int]:
    """The size of the image a preprocessing module is handed for `body`."""
    (tmp_path / "pre.py").write_text(RECORDING_CODE.format(declaration=declaration))
    (tmp_path / "preprocess.json").write_text(json.dumps({"code": "pre.py"}))
    cfg = PreprocessConfig.load(tmp_path / "preprocess.json")
    preprocess_bytes(body, cfg)
    width, height = (tmp_path / "pre.seen").read_text().split()
    return int(width), int(height)


def test_code_that_declares_its_input_size_gets_a_large_jpeg_decoded_reduced(tmp_path):
    # 4000 x 3000: libjpeg's 1/8 scale keeps the short side (375) above the declared 224.
    assert received_size(tmp_path, "INPUT_SIZE = (224, 224)", noise_jpeg(4000, 3000)) == (500, 375)


def test_code_without_a_declared_size_gets_a_large_jpeg_decoded_reduced_to_the_default(tmp_path):
    # 1/2 scale keeps the short side (1500) above the default 1024; 1/4 would not.
    assert received_size(tmp_path, "", noise_jpeg(4000, 3000)) == (2000, 1500)


def test_code_declaring_a_bad_input_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"INPUT_SIZE must be \(width, height\)"):
        received_size(tmp_path, "INPUT_SIZE = 224.5", noise_jpeg(64, 64))


@pytest.mark.parametrize("crop, side", [("none", 32), ("center", 40)])
def test_letterbox_canvas_is_bounded_by_the_output_not_the_input(crop, side):
    # A 20:1 strip: the square canvas of its long side would be 2000 x 2000.
    cfg = PreprocessConfig.from_dict({**STEPS_BASE, "resize_size": 40, "letterbox_rgb": [0, 0, 255],
                                      "crop": crop})
    boxed = steps(solid(2000, 100, (255, 0, 0)), cfg)
    assert boxed.size == (side, side)
    assert boxed.getpixel((side // 2, 0)) == (0, 0, 255) and boxed.getpixel((side // 2, side // 2))[0] > 200
