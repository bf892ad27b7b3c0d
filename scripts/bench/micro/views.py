"""Test-time augmentation's cost, in-process: the served path for one request (decode and
preprocess its JPEG bytes, forwards of at most the batch size, the head, each request's views
averaged: handler/head.py) with V = 1 (the image) and V = 2 (the image and its mirror image), on
the default model's staged ONNX graph (build/NAME/, written by `package`), one thread. Latency:
one request at a time; throughput: batches of `--batch` requests. V = 1 and V = 2 alternate in
rounds, so a busy neighbour hurts both alike.

Example:
    python -m scripts.bench.micro.views --rounds 5 --requests 40 --batch 4
Exit status 0, or 2 when the staged model is missing (run `package` first).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from handler import layout
from handler.head import SOFTMAX, answer_probabilities
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from handler.runner import load_runner
from scripts import repo
from scripts.bench import stats
from scripts.packaging.sample_photos import validation_images

VIEWS = (1, 2)


def tensor_of(data: bytes, cfg: PreprocessConfig, views: int) -> torch.Tensor:
    view = preprocess_bytes(data, cfg)
    return torch.stack([view, view.flip(-1)]) if views == 2 else view


def serve_batch(runner, bodies: list[bytes], cfg: PreprocessConfig, views: int, most: int) -> None:
    batch = torch.stack([tensor_of(data, cfg, views) for data in bodies])
    answer_probabilities(runner, batch, SOFTMAX, most)


def measure(runner, photos: list[bytes], cfg: PreprocessConfig, views: int, requests: int,
            batch: int) -> tuple[list[float], float]:
    """(per-request latencies in ms at batch 1, requests per second in batches of `batch`)."""
    latencies = []
    for i in range(requests):
        t0 = time.perf_counter()
        serve_batch(runner, [photos[i % len(photos)]], cfg, views, batch)
        latencies.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for i in range(0, requests, batch):
        serve_batch(runner, [photos[(i + j) % len(photos)] for j in range(batch)], cfg, views, batch)
    return latencies, requests / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=40, help="requests per variant per round")
    parser.add_argument("--batch", type=int, default=4,
                        help="TorchServe's batch size: the most rows a forward takes")
    args = parser.parse_args(argv)
    stage = repo.BUILD_DIR / repo.DEFAULT_MODEL
    model = stage / layout.SERIALIZED_FILE["onnx"]
    if not model.is_file():
        print(f"error: {model} does not exist: run python -m scripts.packaging.package first",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    runner = load_runner(model, threads=1)
    cfg = PreprocessConfig.load(stage / layout.PREPROCESS_CONFIG)
    photos = list(validation_images().values())
    latencies = {v: [] for v in VIEWS}
    rates = {v: [] for v in VIEWS}
    for views in VIEWS:  # warm-up: first calls pay for allocations and ORT's graph set-up
        measure(runner, photos, cfg, views, args.batch * 2, args.batch)
    for _ in range(args.rounds):
        for views in VIEWS:
            lat, rate = measure(runner, photos, cfg, views, args.requests, args.batch)
            latencies[views] += lat
            rates[views].append(rate)
    out = {f"V={v}": {"latency_ms": stats.summary(latencies[v]),
                      "requests_per_s_median": round(stats.median(rates[v]), 1),
                      "requests_per_s_rounds": [round(r, 1) for r in rates[v]]} for v in VIEWS}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
