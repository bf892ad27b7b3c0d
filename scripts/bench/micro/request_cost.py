"""Worst CPU time and memory one accepted image costs the handler's preprocessing.

    python -m scripts.bench.micro.request_cost [--budget-mib 256] [--budget-ms 500] [--corpus]

For each costly kind (16-bit PNG, lossless WebP, BMP, progressive JPEG, baseline JPEG) it builds
the largest image its per-format pixel cap in preprocess.json accepts (4:3), then measures
`preprocess_bytes` on it in a fresh process (peak RSS over a warmed-up baseline, CPU time).
With --corpus it measures every crafted image of scripts/bench/micro/crafted_images.py instead (just
under and just over each limit), and checks that each is accepted or refused as it should be.
Exit 1 when an accepted image exceeds the budget or a case gets the wrong answer. Figures go
into docs/inputs-and-errors.md.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from handler.errors import InputError
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from scripts import repo
from scripts.bench.micro import crafted_images

KINDS = {"png16": "PNG", "webp_lossless": "WEBP", "bmp": "BMP", "jpeg_progressive": "JPEG_PROGRESSIVE",
         "jpeg": "JPEG"}


def config(model: str = repo.DEFAULT_MODEL) -> PreprocessConfig:
    return PreprocessConfig.load(repo.CONFIG_DIR / model / "preprocess.json")


def largest(kind: str, cfg: PreprocessConfig) -> bytes:
    """The largest 4:3 image of `kind` the limits accept."""
    pixels = dict(cfg.max_pixels_by_format).get(KINDS[kind], cfg.max_pixels)
    w = int((pixels * 4 / 3) ** 0.5)
    h = pixels // w
    buf = io.BytesIO()
    if kind == "png16":
        Image.fromarray((np.add.outer(np.arange(h), np.arange(w)) % 65535).astype(np.uint16),
                        "I;16").save(buf, "PNG")
    elif kind == "webp_lossless":
        Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "WEBP", lossless=True)
    elif kind == "bmp":
        Image.new("1", (w, h), 1).save(buf, "BMP")  # 1-bit: the most pixels under max_bytes
    else:
        noise = np.random.default_rng(0).integers(0, 255, (h // 64, w // 64, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((w, h)).save(buf, "JPEG", quality=85, subsampling=0,
                                                   progressive=kind == "jpeg_progressive")
    return buf.getvalue()


def measure_file(path: Path) -> dict:
    """Preprocess one file in this process: CPU ms and peak RSS growth in MiB over the RSS just
    before (sampled every millisecond: ru_maxrss would report the import peak instead)."""
    cfg = config()
    preprocess_bytes((repo.ROOT / "photos" / "cat.jpg").read_bytes(), cfg)  # imports, arenas
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


def measure(kind: str, data: bytes | None = None) -> dict:
    """Build the image here (or take `data`), measure it in a fresh process (RSS peaks are per
    process)."""
    with tempfile.NamedTemporaryFile(suffix=".img") as tmp:
        Path(tmp.name).write_bytes(largest(kind, config()) if data is None else data)
        out = subprocess.run([sys.executable, "-m", "scripts.bench.micro.request_cost", "--measure",
                              tmp.name],
                             capture_output=True, text=True, timeout=300, check=True).stdout
    return {"kind": kind, **json.loads(out)}


def measure_corpus(budget_mib: float, budget_ms: float) -> int:
    """Every crafted case: its answer and cost; returns how many are wrong or over budget."""
    bad = 0
    for case in crafted_images.corpus(config()):
        row = measure(case.name, case.data)
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
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_file(args.measure)))
        return 0
    if args.corpus:
        return 1 if measure_corpus(args.budget_mib, args.budget_ms) else 0
    over = 0
    for kind in KINDS:
        row = measure(kind)
        ok = row["rss_mib"] <= args.budget_mib and row["cpu_ms"] <= args.budget_ms
        over += not ok
        print(f"{kind:18s} {row['bytes']:>10d} B  cpu {row['cpu_ms']:>5d} ms  rss +{row['rss_mib']:>4d} MiB"
              f"  {'ok' if ok else 'OVER BUDGET'}", flush=True)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
