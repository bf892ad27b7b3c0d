"""Worst CPU time and memory one accepted image costs the handler's preprocessing.

    python -m scripts.bench.micro.request_cost [--budget-mib 256] [--budget-ms 500] [--corpus]
        [--preprocess PREPROCESS_JSON | --preprocess-code MODULE]

For each costly kind (16-bit PNG, lossless WebP, BMP, progressive JPEG, baseline JPEG, and a
20:1 lossless WebP panorama) it builds the largest image its per-format pixel cap accepts (4:3,
or 20:1 for the panorama), then measures `preprocess_bytes` on it in a fresh process (peak RSS
over a warmed-up baseline, CPU time). The transform is the default model's preprocess.json, or
`--preprocess` (e.g. docs/examples/letterbox_preprocess.json), or a preprocessing module as
`package --preprocess-code` ships it (e.g. docs/examples/letterbox_preprocess.py).
With --corpus it measures every crafted image of scripts/bench/micro/crafted_images.py instead (just
under and just over each limit), and checks that each is accepted or refused as it should be.
Exit 1 when an accepted image exceeds the budget or a case gets the wrong answer. Figures go
into docs/inputs-and-errors.md.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from handler import layout
from handler.errors import InputError
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from scripts import repo
from scripts.bench.micro import crafted_images
from scripts.packaging.sample_photos import validation_images

# kind -> (the kind of its pixel cap, width : height)
KINDS = {"png16": ("PNG", 4 / 3), "webp_lossless": ("WEBP", 4 / 3), "bmp": ("BMP", 4 / 3),
         "jpeg_progressive": ("JPEG_PROGRESSIVE", 4 / 3), "jpeg": ("JPEG", 4 / 3),
         "panorama_webp": ("WEBP", 20.0)}
DEFAULT_PREPROCESS = repo.CONFIG_DIR / repo.DEFAULT_MODEL / layout.PREPROCESS_CONFIG


def config(path: Path = DEFAULT_PREPROCESS) -> PreprocessConfig:
    return PreprocessConfig.load(path)


def code_config(module: Path, folder: Path) -> Path:
    """A preprocess.json naming a copy of `module`, in `folder`, as packaging stages one."""
    shutil.copy2(module, folder / layout.PREPROCESS_CODE)
    out = folder / layout.PREPROCESS_CONFIG
    out.write_text(json.dumps({"code": layout.PREPROCESS_CODE}))
    return out


def largest(kind: str, cfg: PreprocessConfig) -> bytes:
    """The largest image of `kind`, at its aspect ratio, the limits accept."""
    cap, aspect = KINDS[kind]
    pixels = dict(cfg.max_pixels_by_format).get(cap, cfg.max_pixels)
    w, h = (crafted_images.size_at(pixels, False) if aspect == 4 / 3
            else crafted_images.panorama_size(pixels, aspect, False))
    buf = io.BytesIO()
    if kind == "png16":
        Image.fromarray((np.add.outer(np.arange(h), np.arange(w)) % 65535).astype(np.uint16),
                        "I;16").save(buf, "PNG")
    elif kind in ("webp_lossless", "panorama_webp"):
        Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "WEBP", lossless=True)
    elif kind == "bmp":
        Image.new("1", (w, h), 1).save(buf, "BMP")  # 1-bit: the most pixels under max_bytes
    else:
        noise = np.random.default_rng(0).integers(0, 255, (h // 64, w // 64, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((w, h)).save(buf, "JPEG", quality=85, subsampling=0,
                                                   progressive=kind == "jpeg_progressive")
    return buf.getvalue()


def measure_file(path: Path, preprocess: Path) -> dict:
    """Preprocess one file in this process: CPU ms and peak RSS growth in MiB over the RSS just
    before (sampled every millisecond: ru_maxrss would report the import peak instead)."""
    cfg = config(preprocess)
    preprocess_bytes(next(iter(validation_images().values())), cfg)  # imports, arenas
    data = path.read_bytes()
    me, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.001)

    rss0 = me.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.process_time()
    status = "200"
    try:
        preprocess_bytes(data, cfg)
    except InputError as exc:
        status = f"{exc.status} {exc.error_type}"
    cpu = time.process_time() - t0
    done.set()
    sampler.join()
    return {"bytes": len(data), "cpu_ms": round(cpu * 1000), "rss_mib": round((peak[0] - rss0) / 2**20),
            "status": status}


def measure(kind: str, preprocess: Path, data: bytes | None = None) -> dict:
    """Build the image here (or take `data`), measure it in a fresh process (RSS peaks are per
    process)."""
    with tempfile.NamedTemporaryFile(suffix=".img") as tmp:
        Path(tmp.name).write_bytes(largest(kind, config(preprocess)) if data is None else data)
        out = subprocess.run([sys.executable, "-m", "scripts.bench.micro.request_cost", "--measure",
                              tmp.name, "--preprocess", str(preprocess)],
                             capture_output=True, text=True, timeout=300, check=True).stdout
    return {"kind": kind, **json.loads(out)}


def measure_corpus(preprocess: Path, budget_mib: float, budget_ms: float) -> int:
    """Every crafted case: its answer and cost; returns how many are wrong or over budget."""
    bad = 0
    for case in crafted_images.corpus(config(preprocess)):
        row = measure(case.name, preprocess, case.data)
        expected = "200" if case.status == 200 else f"{case.status} {case.error_type}"
        ok = row["status"] == expected and (
            case.status != 200 or (row["rss_mib"] <= budget_mib and row["cpu_ms"] <= budget_ms))
        bad += not ok
        print(f"{case.name:30s} {row['bytes']:>9d} B  {row['status']:24s} cpu {row['cpu_ms']:>5d} ms  "
              f"rss +{row['rss_mib']:>4d} MiB  {'ok' if ok else 'WRONG (expected ' + expected + ')'}",
              flush=True)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mib", type=float, default=256)
    parser.add_argument("--budget-ms", type=float, default=500)
    parser.add_argument("--corpus", action="store_true",
                        help="measure the crafted images of scripts/bench/micro/crafted_images.py")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preprocess", type=Path, default=DEFAULT_PREPROCESS,
                        help="the preprocess.json whose transform and limits are measured")
    source.add_argument("--preprocess-code", type=Path,
                        help="a preprocessing module (preprocess(image) -> array), as packaged")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_file(args.measure, args.preprocess)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        preprocess = (code_config(args.preprocess_code, Path(folder)) if args.preprocess_code
                      else args.preprocess)
        return report(preprocess, args.corpus, args.budget_mib, args.budget_ms)


def report(preprocess: Path, corpus: bool, budget_mib: float, budget_ms: float) -> int:
    """Measure every kind (or the crafted corpus) and print a line each; 1 if any is over."""
    if corpus:
        return 1 if measure_corpus(preprocess, budget_mib, budget_ms) else 0
    over = 0
    for kind in KINDS:
        row = measure(kind, preprocess)
        ok = row["status"] == "200" and row["rss_mib"] <= budget_mib and row["cpu_ms"] <= budget_ms
        over += not ok
        print(f"{kind:18s} {row['bytes']:>10d} B  {row['status']:>3s}  cpu {row['cpu_ms']:>5d} ms  "
              f"rss +{row['rss_mib']:>4d} MiB  {'ok' if ok else 'OVER BUDGET OR REFUSED'}", flush=True)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
