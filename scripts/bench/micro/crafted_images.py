"""Crafted images just under and just over each input limit of preprocess.json.

Each case is a real encoding an attacker could send for little bandwidth and much work: 16-bit
and palette PNG, APNG, lossless and animated WebP, plain and RLE BMP (Pillow decodes RLE in
Python), a GIF of a thousand frames, progressive JPEG, a JPEG with thousands of scans, a JPEG
with 6 MB of EXIF, a 20:1 panorama (the widest aspect ratio accepted: what a letterbox pads).
Every case built "under" must be accepted (200) at a cost within the budget of
docs/inputs-and-errors.md; every case "over" must be refused (4xx) from the header, before any
pixel is decoded. `python -m scripts.bench.micro.request_cost --corpus` measures each one;
tests/e2e/handler/test_crafted_images.py sends them to a real server.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from handler.preprocessing import PreprocessConfig


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int  # 200 accepted, else the 4xx the service must answer
    error_type: str = ""


def size_at(pixels: int, over: bool) -> tuple[int, int]:
    """A 4:3 size with at most `pixels` pixels, or the smallest step past them."""
    w = int((pixels * 4 / 3) ** 0.5)
    h = pixels // w
    return (w, h + 1) if over else (w, h)


def panorama_size(pixels: int, aspect: float, over: bool) -> tuple[int, int]:
    """The widest size with at most `pixels` pixels and long side / short side <= `aspect`, or
    one pixel wider than that ratio."""
    h = int((pixels / aspect) ** 0.5)
    return (int(h * aspect) + 1, h) if over else (min(int(h * aspect), pixels // h), h)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png16(size: tuple[int, int]) -> bytes:
    w, h = size
    ramp = (np.add.outer(np.arange(h, dtype=np.uint32) * 7, np.arange(w, dtype=np.uint32) * 3) % 65535)
    return _save(Image.fromarray(ramp.astype(np.uint16)), "PNG")  # uint16 -> mode I;16


def png_palette(size: tuple[int, int]) -> bytes:
    """Palette PNG with a transparent entry: decoded, expanded to RGBA, composited."""
    img = Image.new("P", size, 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [7] * (254 * 3))
    return _save(img, "PNG", transparency=0)


def apng(size: tuple[int, int], frames: int = 16) -> bytes:
    """An animated PNG: the full first frame, then frames that each change one pixel."""
    base = Image.new("RGB", size, (40, 90, 160))
    seq = []
    for i in range(frames):
        frame = base.copy()
        frame.putpixel((i, i), (255, i, 0))
        seq.append(frame)
    return _save(seq[0], "PNG", save_all=True, append_images=seq[1:], duration=10, loop=0)


def webp_lossless(size: tuple[int, int]) -> bytes:
    return _save(Image.new("RGB", size, (10, 200, 30)), "WEBP", lossless=True)


def webp_animated(size: tuple[int, int], frames: int = 3) -> bytes:
    seq = [Image.new("RGB", size, (20 * i, 100, 50)) for i in range(frames)]
    return _save(seq[0], "WEBP", save_all=True, append_images=seq[1:], duration=10, lossless=True,
                 method=0)


def bmp_1bit(size: tuple[int, int]) -> bytes:
    return _save(Image.new("1", size, 1), "BMP")


def _bmp_header(size: tuple[int, int], bits: int, compression: int, data_len: int) -> bytes:
    colors = 1 << bits
    offset = 14 + 40 + 4 * colors
    palette = b"".join(bytes((i % 256, (3 * i) % 256, 255 - i % 256, 0)) for i in range(colors))
    info = struct.pack("<IiiHHIIiiII", 40, size[0], size[1], 1, bits, compression, data_len,
                       2835, 2835, colors, 0)
    return b"BM" + struct.pack("<IHHI", offset + data_len, 0, 0, offset) + info + palette


def bmp_rle(size: tuple[int, int], bits: int = 8) -> bytes:
    """RLE8 (bits 8) or RLE4 (bits 4) rows of one pixel then end-of-line: 4 bytes a row that
    make Pillow's Python decoder pad the row a pixel at a time."""
    rows = b"\x01\x05\x00\x00" * size[1] + b"\x00\x01"
    return _bmp_header(size, bits, 1 if bits == 8 else 2, len(rows)) + rows


def bmp_rle_noops(size: tuple[int, int], body_bytes: int) -> bytes:
    """A small RLE8 image whose rows follow a body of end-of-line codes that draw nothing: one
    turn of Pillow's Python loop per 2 bytes."""
    rows = b"\x01\x05\x00\x00" * size[1] + b"\x00\x01"
    codes = b"\x00\x00" * ((body_bytes - len(rows)) // 2) + rows
    return _bmp_header(size, 8, 1, len(codes)) + codes


def gif_many_frames(size: tuple[int, int], frames: int = 1000) -> bytes:
    """A GIF whose logical screen is `size`, with a thousand 2x2 frames after the first."""
    first = Image.new("P", size, 0)
    first.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    head = _save(first, "GIF")
    assert head.endswith(b";")
    tiny = (b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms delay
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, 2, 2, 0)  # image descriptor 2x2 at 0,0
            + b"\x02\x02\x44\x01\x00")  # LZW min code size 2, one sub-block, terminator
    return head[:-1] + tiny * frames + b";"


def jpeg(size: tuple[int, int], progressive: bool) -> bytes:
    """Noise at 1/64 of the size, upscaled: entropy-coded data like a real photo's."""
    w, h = size
    noise = np.random.default_rng(0).integers(0, 255, (max(h // 64, 1), max(w // 64, 1), 3), dtype=np.uint8)
    return _save(Image.fromarray(noise).resize((w, h)), "JPEG", quality=85, subsampling=0,
                 progressive=progressive)


def with_height(jpeg_bytes: bytes, height: int) -> bytes:
    """The same JPEG with the frame header (SOF0/SOF2) declaring another height: an attacker's
    header costs nothing to forge, and the refusal must come from it alone."""
    for sof in (b"\xff\xc0", b"\xff\xc2"):
        at = jpeg_bytes.find(sof)
        if at >= 0:
            return jpeg_bytes[:at + 5] + struct.pack(">H", height) + jpeg_bytes[at + 7:]
    raise ValueError("no baseline or progressive frame header")


def jpeg_many_scans(size: tuple[int, int], scans: int) -> bytes:
    """A flat progressive JPEG with its last scan repeated until the file holds `scans` scans.
    Each repeat is a few bytes (an end-of-band run covers the whole image), and libjpeg walks
    every block of the image again for each one."""
    data = _save(Image.new("L", size, 128), "JPEG", quality=90, progressive=True)
    last = data.rfind(b"\xff\xda")
    scan = data[last:-2]  # the last scan up to EOI
    have = data.count(b"\xff\xda")
    return data[:-2] + scan * max(scans - have, 0) + b"\xff\xd9"


def jpeg_huge_exif(size: tuple[int, int], body_bytes: int) -> bytes:
    """A small baseline JPEG carrying `body_bytes` of APP1 (EXIF) segments, 64 KB each."""
    data = jpeg(size, progressive=False)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate, so the EXIF is parsed and used
    block = exif.tobytes()  # starts with the "Exif\0\0" header APP1 carries
    first = b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block
    filler = b"\xff\xe1" + struct.pack(">H", 65535) + b"Exif\x00\x00" + bytes(65527)
    n = max((body_bytes - len(data)) // len(filler), 0)
    return data[:2] + first + filler * n + data[2:]


def corpus(cfg: PreprocessConfig) -> list[Case]:
    """Every crafted case for these limits: under each cap accepted, over it refused."""
    caps = dict(cfg.max_pixels_by_format)
    cap = lambda kind: caps.get(kind, cfg.max_pixels)  # noqa: E731
    big = "ImageTooLarge"
    cases: list[Case] = []

    def pair(name: str, kind: str, build: Callable[[tuple[int, int]], bytes]) -> None:
        cases.append(Case(f"{name}_under", build(size_at(cap(kind), False)), 200))
        cases.append(Case(f"{name}_over", build(size_at(cap(kind), True)), 413, big))

    pair("png16", "PNG", png16)
    pair("png_palette_transparent", "PNG", png_palette)
    pair("apng_16_frames", "PNG", apng)
    pair("webp_lossless", "WEBP", webp_lossless)
    pair("webp_animated", "WEBP", webp_animated)
    pair("bmp_1bit", "BMP", bmp_1bit)
    pair("bmp_rle8", "BMP_RLE", bmp_rle)
    pair("bmp_rle4", "BMP_RLE", lambda s: bmp_rle(s, bits=4))
    pair("gif_1000_frames", "GIF", gif_many_frames)
    under = jpeg(size_at(cap("JPEG_PROGRESSIVE"), False), progressive=True)
    cases.append(Case("jpeg_progressive_under", under, 200))
    cases.append(Case("jpeg_progressive_over",
                      with_height(under, size_at(cap("JPEG_PROGRESSIVE"), True)[1]), 413, big))
    under = jpeg(size_at(cap("JPEG"), False), progressive=False)
    cases.append(Case("jpeg_baseline_under", under, 200))
    cases.append(Case("jpeg_baseline_over", with_height(under, size_at(cap("JPEG"), True)[1]), 413, big))
    at = size_at(cap("JPEG_PROGRESSIVE"), False)  # scans x pixels is the bound here
    most = cfg.max_jpeg_scan_pixels // (at[0] * at[1])
    cases.append(Case("jpeg_scan_pixels_under", jpeg_many_scans(at, most), 200))
    cases.append(Case("jpeg_scan_pixels_over", jpeg_many_scans(at, most + 1), 413, "TooManyScans"))
    small = (640, 480)  # the count of scans is the bound here
    cases.append(Case("jpeg_scans_under", jpeg_many_scans(small, cfg.max_jpeg_scans), 200))
    cases.append(Case("jpeg_scans_over", jpeg_many_scans(small, cfg.max_jpeg_scans + 1), 413,
                      "TooManyScans"))
    cases.append(Case("jpeg_scans_thousands", jpeg_many_scans(small, 5000), 413, "TooManyScans"))
    cases.append(Case("jpeg_exif_6mb", jpeg_huge_exif((640, 480), cfg.max_bytes - 70_000), 200))
    cases.append(Case("panorama_webp_under", webp_lossless(panorama_size(cap("WEBP"), cfg.max_aspect_ratio,
                                                                          False)), 200))
    cases.append(Case("panorama_webp_over", webp_lossless(panorama_size(cap("WEBP"), cfg.max_aspect_ratio,
                                                                        True)), 400, "AspectRatioTooLarge"))
    cases.append(Case("bmp_rle_noops_under", bmp_rle_noops((64, 48), cap_bytes(cfg, "BMP_RLE") - 2048), 200))
    cases.append(Case("bmp_rle_noops_over", bmp_rle_noops((64, 48), cap_bytes(cfg, "BMP_RLE") + 2), 413,
                      "PayloadTooLarge"))
    return cases


def cap_bytes(cfg: PreprocessConfig, kind: str) -> int:
    return dict(cfg.max_bytes_by_format).get(kind, cfg.max_bytes)

