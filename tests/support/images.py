"""Image builders shared by the preprocessing unit tests and the end-to-end input contract:
real encodings of synthetic pictures, hostile inputs with the status and type each must get."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth RGB image with a different ramp in each channel."""
    # Each channel computed once per row or column and broadcast (a full grid per channel took
    # 1.5 s at 2,900 x 2,900); every value is within 0-255.
    x, y = np.arange(width), np.arange(height)[:, None]
    arr = np.empty((height, width, 3), np.uint8)
    arr[..., 0] = x * 255 // max(width - 1, 1)
    arr[..., 1] = y * 255 // max(height - 1, 1)
    arr[..., 2] = (x + y) * 255 // max(width + height - 2, 1)
    return Image.fromarray(arr, "RGB")


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
