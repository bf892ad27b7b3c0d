"""The one implementation of image preprocessing: bytes -> checked PIL image -> CHW float tensor.

Two sources of numbers, one for each default: a model's `preprocess.json` states its transform
(what the model was trained with: sizes, interpolation, mean, std, ...), and PreprocessConfig's
field defaults are the input limits, the service's per-request cost budget
(docs/inputs-and-errors.md), which a model's `"limits"` object may change key by key.

The transform is declarative (short-side resize and centre crop, or a plain resize with
`"crop": "none"`; optional greyscale and letterbox steps first), or code: `"code"` names a module
of the model's own in the archive (handler/model_code.py) that turns the RGB image into the
model's input. The header checks, the decode, EXIF orientation and RGB always come first.

Export validation calls `preprocess_bytes(data, cfg)` on the sample photos' JPEG bytes; the
TorchServe handler calls `preprocess_image`, the same transform, which also returns the
header's width and height for its metrics. So the served transform is the validated transform
from the first byte.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from handler import model_code
from handler.errors import BadInput, InputError, TooLarge, UnsupportedMedia
from handler.settings import ConfigError, check_keys, inside

logger = logging.getLogger(__name__)

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Pillow names a JPEG carrying a Multi-Picture segment (many phone cameras write one) "MPO".
FORMAT_ALIASES = {"MPO": "JPEG"}
# Leading bytes of each accepted format: a body that starts like one but does not parse is a
# damaged image (400); anything else is not an image at all (415).
SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "WEBP": (b"RIFF",),
}


@dataclass(frozen=True)
class PreprocessConfig:
    """A model's transform (from its preprocess.json) and the input limits (defaults here)."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    background_rgb: tuple[int, int, int] = (255, 255, 255)
    fast_jpeg_draft: bool = True
    # Declarative steps before the resize: greyscale (kept 3 channels), then fitting into the
    # resize's square padded with this colour (letterbox); "crop": "none" resizes the whole image
    # to input_size.
    greyscale: bool = False
    letterbox_rgb: tuple[int, int, int] | None = None
    crop: str = "center"
    # Preprocessing as code: a file beside preprocess.json defining preprocess(image) -> array,
    # which then replaces the steps above (the sizes, mean and std are not needed; a large JPEG
    # is decoded reduced to the module's declared INPUT_SIZE instead of resize_size).
    code: str | None = None
    transform: model_code.Transform | None = field(default=None, compare=False, repr=False)
    # ---- limits: per request at most about 256 MiB of extra worker memory and 0.5 s of CPU ----
    max_bytes: int = 6_553_500
    # Baseline JPEGs decode reduced (draft), so phone photos up to this size stay cheap.
    max_pixels: int = 50_000_000
    min_side: int = 16
    # The short side is resized to resize_size, so a long thin strip would be upscaled into a
    # huge image: the aspect ratio bounds the memory of that step.
    max_aspect_ratio: float = 20.0
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
    # Pixels per kind, from the header. Only a baseline JPEG is decoded reduced; a progressive
    # JPEG keeps every coefficient, the others decode in full (a lossless WebP at 12 MP: about
    # 190 MiB and 0.32 s of CPU). A kind not listed has max_pixels only.
    max_pixels_by_format: tuple[tuple[str, int], ...] = (
        ("JPEG_PROGRESSIVE", 20_000_000), ("PNG", 9_000_000), ("WEBP", 12_000_000),
        ("BMP", 12_000_000), ("GIF", 12_000_000), ("BMP_RLE", 1_000_000))
    # Bytes per kind where the decoder's work grows with the body, not the pixels: Pillow
    # decodes RLE BMP (kind BMP_RLE) in Python, one loop turn per 2-byte code.
    max_bytes_by_format: tuple[tuple[str, int], ...] = (("BMP_RLE", 524_288),)
    # libjpeg walks every block of the image once per scan; an encoder writes about 10, an
    # attacker thousands of a few bytes each. Both bounds are checked from a count of the SOS
    # markers: the scans, and the scans times the pixels (about 12 scans at 20 MP).
    max_jpeg_scans: int = 100
    max_jpeg_scan_pixels: int = 240_000_000

    @classmethod
    def from_dict(cls, raw: dict, where: str = "preprocess config") -> PreprocessConfig:
        """Build from a parsed preprocess.json; a key it leaves out takes the field's default.
        An unknown key (top level or under "limits") is a ConfigError naming it, so a misspelt
        `interpolaton` cannot fall back to a default."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        check_keys(raw, TOP_LEVEL_KEYS, where)
        limits = raw.get("limits", {})
        if not isinstance(limits, dict):
            raise ConfigError(f"{where}: \"limits\" must be an object, got {type(limits).__name__}")
        check_keys(limits, LIMIT_CASTS, f"{where} (limits)")
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing and "code" not in raw:
            raise ConfigError(f"{where}: missing key {missing[0]!r}")
        try:
            # `if k in ...`: leaves out "limits" and the "_comment" keys check_keys allows.
            given = {k: TRANSFORM_CASTS[k](v) for k, v in raw.items() if k in TRANSFORM_CASTS}
            if "code" in raw:  # the module computes the input: the numbers it leaves out are unused
                given = {**UNUSED_WITH_CODE, **given}
            cfg = cls(**given, **{k: LIMIT_CASTS[k](v) for k, v in limits.items() if k in LIMIT_CASTS})
            cfg.validate()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> PreprocessConfig:
        """From a preprocess.json file; its `"code"` module, if any, is imported from the file's
        folder, never from outside it (a module outside it, or one that does not import, is a
        ConfigError naming it)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read {path}: {exc}") from exc
        cfg = cls.from_dict(raw, str(path))
        if cfg.code is None:
            return cfg
        code = inside(path.parent, cfg.code, f"{path} (code)")
        try:
            return replace(cfg, transform=model_code.load(code))
        except model_code.PreprocessCodeError as exc:
            raise ConfigError(str(exc)) from exc

    def validate(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError("channel_order must be RGB or BGR")
        if self.code is None and self.input_size < 1:
            raise ValueError("input_size must be positive")
        if self.code is None and self.resize_size < self.input_size:
            raise ValueError("resize_size must be >= input_size")
        if self.crop not in ("center", "none"):
            raise ValueError('crop must be "center" or "none"')
        if self.letterbox_rgb is not None and (len(self.letterbox_rgb) != 3
                                               or not all(0 <= v <= 255 for v in self.letterbox_rgb)):
            raise ValueError("letterbox_rgb needs three values from 0 to 255")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values, std > 0")
        counts = (self.max_bytes, self.max_pixels, self.min_side, self.max_jpeg_scans,
                  self.max_jpeg_scan_pixels)
        if min(counts) < 1 or self.max_aspect_ratio < 1:
            raise ValueError("limits must be positive and max_aspect_ratio >= 1")


def _per_kind(value: dict) -> tuple[tuple[str, int], ...]:
    return tuple((str(k).upper(), int(n)) for k, n in dict(value).items())


# How each key of preprocess.json is read: the transform at the top level, the limits under
# "limits". Together they are every field of PreprocessConfig (tests/unit/handler/test_config_strict.py).
TRANSFORM_CASTS = {
    "input_size": int,
    "resize_size": int,
    "mean": lambda v: tuple(float(x) for x in v),
    "std": lambda v: tuple(float(x) for x in v),
    "interpolation": str,
    "channel_order": lambda v: str(v).upper(),
    "background_rgb": lambda v: tuple(int(x) for x in v),
    "fast_jpeg_draft": bool,
    "greyscale": bool,
    "letterbox_rgb": lambda v: None if v is None else tuple(int(x) for x in v),
    "crop": str,
    "code": str,
}
LIMIT_CASTS = {
    "max_bytes": int,
    "max_pixels": int,
    "min_side": int,
    "max_aspect_ratio": float,
    "formats": lambda v: tuple(str(f).upper() for f in v),
    "max_pixels_by_format": _per_kind,
    "max_bytes_by_format": _per_kind,
    "max_jpeg_scans": int,
    "max_jpeg_scan_pixels": int,
}
# Required unless "code" computes the input; then they take these (unused) values.
REQUIRED_KEYS = ("input_size", "resize_size", "mean", "std")
UNUSED_WITH_CODE = {"input_size": 0, "resize_size": 0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
TOP_LEVEL_KEYS = frozenset(TRANSFORM_CASTS) | {"limits"}


def _accepted(cfg: PreprocessConfig) -> str:
    return "accepted: " + ", ".join(cfg.formats) + " images"


def open_image(data: bytes, cfg: PreprocessConfig) -> Image.Image:
    """Parse the header and enforce every limit before a single pixel is decoded."""
    if not data:
        raise BadInput("EmptyInput", f"The request body is empty; {_accepted(cfg)}.")
    if len(data) > cfg.max_bytes:
        raise TooLarge("PayloadTooLarge", f"Image is {len(data)} bytes; the limit is {cfg.max_bytes} bytes.")
    try:
        # Only our formats' parsers ever see the bytes (no EPS, TIFF, PSD, ... plugins).
        img = Image.open(io.BytesIO(data), formats=_pillow_formats(cfg))
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(cfg, str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types for unknown or damaged headers
        raise _unreadable(data, cfg) from exc
    fmt = FORMAT_ALIASES.get(img.format, img.format)
    if fmt not in cfg.formats:
        raise UnsupportedMedia("UnsupportedMediaType",
                               f"Image format {img.format} is not supported; {_accepted(cfg)}.")
    width, height = img.size
    if width * height > cfg.max_pixels:
        raise _too_many_pixels(cfg, f"{width}x{height}")
    kind = image_kind(img, fmt)
    cap = dict(cfg.max_pixels_by_format).get(kind)
    if cap is not None and width * height > cap:
        raise TooLarge("ImageTooLarge", f"A {_kind_name(kind)} image of {width}x{height} declares "
                       f"too many pixels; the limit for it is {cap}.")
    cap = dict(cfg.max_bytes_by_format).get(kind)
    if cap is not None and len(data) > cap:
        raise TooLarge("PayloadTooLarge", f"The {_kind_name(kind)} image is {len(data)} bytes; "
                       f"the limit for it is {cap} bytes.")
    if fmt == "JPEG":
        _check_scans(data, width * height, cfg)
    if min(width, height) < cfg.min_side:
        raise BadInput("ImageTooSmall",
                       f"Image is {width}x{height}; each side must be at least {cfg.min_side} px.")
    if max(width, height) > cfg.max_aspect_ratio * min(width, height):
        raise BadInput("AspectRatioTooLarge", f"Image is {width}x{height}; the long side may be at "
                       f"most {cfg.max_aspect_ratio:g} times the short side.")
    return img


def image_kind(img: Image.Image, fmt: str) -> str:
    """The format, or the costlier variant of it that has limits of its own."""
    if fmt == "JPEG" and img.info.get("progressive"):
        return "JPEG_PROGRESSIVE"
    if fmt == "BMP" and img.tile and img.tile[0][0] == "bmp_rle":
        return "BMP_RLE"
    return fmt


def _kind_name(kind: str) -> str:
    return {"BMP_RLE": "RLE-compressed BMP"}.get(kind, kind.replace("_", " ").lower())


def _check_scans(data: bytes, pixels: int, cfg: PreprocessConfig) -> None:
    # Entropy-coded data stuffs every 0xFF with 0x00, so FF DA appears only as a real marker
    # (or inside an embedded thumbnail, which only makes the count cautious).
    scans = data.count(b"\xff\xda")
    if scans > cfg.max_jpeg_scans or scans * pixels > cfg.max_jpeg_scan_pixels:
        raise TooLarge("TooManyScans",
                       f"The JPEG holds {scans} scans of {pixels} pixels; the limits are "
                       f"{cfg.max_jpeg_scans} scans and {cfg.max_jpeg_scan_pixels} scans x pixels "
                       "(an encoder writes about 10 scans).")


def _pillow_formats(cfg: PreprocessConfig) -> tuple[str, ...]:
    # MPO files are opened by Pillow's JPEG parser, so "JPEG" covers them.
    return tuple(f for f in cfg.formats if f not in FORMAT_ALIASES)


def _unreadable(data: bytes, cfg: PreprocessConfig) -> InputError:
    for fmt in cfg.formats:
        if any(data.startswith(sig) for sig in SIGNATURES.get(fmt, ())):
            return BadInput("CorruptImage", f"The body starts like a {fmt} image but its header is "
                            f"damaged or cut short; {_accepted(cfg)}.")
    return UnsupportedMedia("UnsupportedMediaType", f"The body is not a recognised image; {_accepted(cfg)}.")


def _too_many_pixels(cfg: PreprocessConfig, detail: str) -> TooLarge:
    return TooLarge("ImageTooLarge",
                    f"Image declares too many pixels ({detail}); the limit is {cfg.max_pixels}.")


def decode_rgb(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Decode pixels (reduced in libjpeg when large), honour EXIF orientation, return RGB."""
    try:
        side = draft_side(cfg)
        if cfg.fast_jpeg_draft and side and FORMAT_ALIASES.get(img.format, img.format) == "JPEG":
            _draft_for_resize(img, side)
        img.load()
        img = _exif_upright(img)
        return _to_rgb(img, cfg.background_rgb)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # truncated or corrupt data surfaces as OSError, SyntaxError, ...
        raise BadInput("CorruptImage", f"The {img.format} image could not be decoded ({exc}).") from exc


def _exif_upright(img: Image.Image) -> Image.Image:
    # A damaged EXIF block should not cost the client a prediction: keep the stored orientation.
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:
        logger.debug("EXIF orientation ignored: %s", exc)
        return img


def draft_side(cfg: PreprocessConfig) -> int:
    """The short side a JPEG keeps at least when decoded reduced: what the resize needs, or what
    the model's code declares (handler/model_code.py); 0 before the code is loaded."""
    return cfg.transform.decode_side if cfg.transform is not None else cfg.resize_size


def _draft_for_resize(img: Image.Image, side: int) -> None:
    # libjpeg decodes at 1/2, 1/4, 1/8 scale for free; keep the short side >= side.
    w, h = img.size
    scale = side / min(w, h)
    if scale < 0.5:
        img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping at 255. A PNG's samples arrive
        # as uint16 and shift in place (2 bytes a pixel); only 32-bit "I" needs the clip.
        arr = np.asarray(img) >> 8
        if arr.dtype != np.uint16:
            arr = np.clip(arr, 0, 255)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_geometry(width: int, height: int, cfg: PreprocessConfig) -> tuple[tuple[int, int], int, int]:
    """The size the short side resize gives, and the centre crop's left and top in it."""
    scale = cfg.resize_size / min(width, height)
    size = (max(cfg.resize_size, round(width * scale)), max(cfg.resize_size, round(height * scale)))
    return size, (size[0] - cfg.input_size) // 2, (size[1] - cfg.input_size) // 2


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Short side to resize_size, centre crop input_size x input_size (uint8, before floats)."""
    w, h = img.size
    size, left, top = resize_geometry(w, h, cfg)
    # Resample only the centre crop's box of the source: the filter still reads the pixels around
    # the box, so this equals resize-then-crop (tests/unit/handler/test_preprocessing.py) at about
    # half the cost.
    sx, sy = w / size[0], h / size[1]
    box = (left * sx, top * sy, (left + cfg.input_size) * sx, (top + cfg.input_size) * sy)
    return img.resize((cfg.input_size, cfg.input_size), INTERPOLATIONS[cfg.interpolation], box=box)


def steps(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The declarative steps before the resize: greyscale, then letterbox: the image fitted into
    the square the resize makes (resize_size, or input_size without a crop) and padded."""
    if cfg.greyscale:
        img = img.convert("L").convert("RGB")
    if cfg.letterbox_rgb is not None and img.width != img.height:
        # Fitted first: a canvas of the input's long side squared would cost a 20:1 panorama of
        # 12 MP 720 MB; this one is at most resize_size squared.
        side = cfg.input_size if cfg.crop == "none" else cfg.resize_size
        img = ImageOps.pad(img, (side, side), method=INTERPOLATIONS[cfg.interpolation],
                           color=cfg.letterbox_rgb)
    return img


def resized(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """input_size x input_size uint8: centre crop of the short-side resize, or the whole image."""
    if cfg.crop == "none":
        return img.resize((cfg.input_size, cfg.input_size), INTERPOLATIONS[cfg.interpolation])
    return resize_crop(img, cfg)


def to_tensor(img: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """The RGB image -> the model's input: the config's code, or its steps, resize (uint8) and
    normalization; returns a CxHxW float32 tensor."""
    if cfg.transform is not None:
        return model_code.to_tensor(cfg.transform, img)
    arr = np.asarray(resized(steps(img, cfg), cfg), dtype=np.float32)
    if cfg.channel_order == "BGR":
        arr = arr[:, :, ::-1]
    mean = np.asarray(cfg.mean, dtype=np.float32) * 255.0
    std = np.asarray(cfg.std, dtype=np.float32) * 255.0
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def preprocess_image(data: bytes, cfg: PreprocessConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """Encoded image bytes -> (model input tensor, the image's declared width x height), or
    InputError for a client mistake. The size is the header's, read before any decoding."""
    img = open_image(data, cfg)
    size = img.size
    return to_tensor(decode_rgb(img, cfg), cfg), size


def preprocess_bytes(data: bytes, cfg: PreprocessConfig) -> torch.Tensor:
    """Encoded image bytes -> model input tensor: the one transform export validates with and
    the handler serves with."""
    return preprocess_image(data, cfg)[0]
