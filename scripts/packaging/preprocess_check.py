"""Preprocessing code checked at packaging, never first in production: the model's own
`preprocess(image)` runs on every validation photo through the served path (header checks,
decode, EXIF, RGB, then the function) and must return one C x H x W float32 shape for all of
them, finite, within a time budget. Any failure is one line naming the file and the problem."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median

from handler.model_code import PreprocessCodeError
from handler.model_code import to_tensor as code_tensor
from handler.preprocessing import PreprocessConfig, decode_rgb, open_image

# Median time of one call on the validation photos: a slower function cannot meet the 50 ms
# p99 of the service beside the decode and the forward pass.
MAX_MEDIAN_MS = 50.0


class PreprocessCheckError(ValueError):
    """The preprocessing code failed on a validation photo, or is too slow."""


def check(cfg: PreprocessConfig, code_path: Path, images: dict[str, bytes],
          max_median_ms: float = MAX_MEDIAN_MS) -> dict:
    """Run the code on each photo; returns {"output_shape", "median_ms", "max_ms", "photos"}."""
    shape, times = None, []
    for name, data in images.items():
        img = decode_rgb(open_image(data, cfg), cfg)
        t0 = time.perf_counter()
        try:
            tensor = code_tensor(cfg.transform, img, shape)
        except PreprocessCodeError as exc:
            raise PreprocessCheckError(f"{code_path}: {exc} (photo {name!r})") from exc
        except Exception as exc:
            raise PreprocessCheckError(f"{code_path}: preprocess() raised {type(exc).__name__}: {exc} "
                                       f"(photo {name!r}, {img.width}x{img.height} RGB)") from exc
        times.append((time.perf_counter() - t0) * 1000)
        shape = tuple(tensor.shape)
    took = median(times)
    if took > max_median_ms:
        raise PreprocessCheckError(f"{code_path}: preprocess() takes {took:.0f} ms per photo (median of "
                                   f"{len(times)}); the budget is {max_median_ms:.0f} ms")
    return {"output_shape": list(shape), "median_ms": round(took, 2), "max_ms": round(max(times), 2),
            "photos": len(times)}
