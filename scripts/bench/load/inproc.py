"""The in-process limit: preprocess + forward of the shipped artifact with no server, in as
many processes as the server has workers (each process runs this module as __main__)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from handler import layout
from scripts.bench import stats
from scripts.bench.load.artifacts import unpack
from scripts.bench.workspace import log, photos


def inproc_worker(model_dir: Path, batch: int, threads: int, seconds: float, start_at: float) -> dict:
    """Preprocess + forward in this process: batch-1 latency and throughput at `batch`."""
    import torch

    from handler.preprocessing import PreprocessConfig, preprocess_bytes
    from handler.runner import load_runner

    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    runner = load_runner(model_dir / manifest["model"]["serializedFile"], threads=threads)
    cfg = PreprocessConfig.load(model_dir / layout.PREPROCESS_CONFIG)
    images = [p.read_bytes() for p in sorted(photos().iterdir())]
    for i in range(5):
        runner(preprocess_bytes(images[i % len(images)], cfg)[None])
    time.sleep(max(0.0, start_at - time.time()))
    lat, done, i = [], 0, 0
    t_end = time.perf_counter() + seconds / 2
    while time.perf_counter() < t_end:  # batch 1, one request at a time
        t = time.perf_counter()
        runner(preprocess_bytes(images[i % len(images)], cfg)[None])
        lat.append(time.perf_counter() - t)
        i += 1
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:  # served batch size
        runner(torch.stack([preprocess_bytes(images[(i + k) % len(images)], cfg) for k in range(batch)]))
        done, i = done + batch, i + batch
    return {"latency_ms_p50": stats.median(lat) * 1000, "batch1_ips": len(lat) / (seconds / 2),
            "batch_ips": done / (time.perf_counter() - t0)}


def inproc(mar: Path, seconds: float) -> dict:
    """The served workers x threads as separate processes at once; throughput summed."""
    model_dir = unpack(mar)
    photos()  # written once here, before the worker processes read them
    config = yaml.safe_load((model_dir / layout.MODEL_CONFIG).read_text()) or {}
    workers = int(config.get("minWorkers", os.cpu_count()))
    threads = int(config.get("handler", {}).get("threads", 1))
    batch = int(config.get("batchSize", 1))
    start_at = time.time() + 8  # after every process has loaded its model
    procs = [subprocess.Popen([sys.executable, "-m", "scripts.bench.load.inproc", str(model_dir), str(batch),
                               str(threads), str(seconds), str(start_at)], stdout=subprocess.PIPE)
             for _ in range(workers)]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    out = {"workers": workers, "threads": threads, "batch": batch,
           "latency_ms_p50": stats.median(r["latency_ms_p50"] for r in results),
           "batch1_ips": sum(r["batch1_ips"] for r in results),
           "batch_ips": sum(r["batch_ips"] for r in results)}
    # Batch-1 latency of one process alone (the others idle): what a lone request costs.
    solo = subprocess.run([sys.executable, "-m", "scripts.bench.load.inproc", str(model_dir), "1",
                           str(threads),
                           str(min(seconds, 6)), "0"], stdout=subprocess.PIPE, check=True, timeout=300)
    out["solo_latency_ms_p50"] = json.loads(solo.stdout)["latency_ms_p50"]
    log(f"in-process: {out['solo_latency_ms_p50']:.1f} ms batch-1 alone; {out['batch_ips']:.1f} img/s "
        f"at batch {batch} ({workers} x {threads} threads)")
    return out


def machine_gflops(threads: int) -> float:
    """FP32 matmul GFLOP/s with `threads`: the practical peak of the machine."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        torch.mm(a, b)
        n += 1
    return 2 * 1536**3 * n / (time.perf_counter() - t0) / 1e9


def model_gflop(arch: str) -> float:
    """FLOPs of one 224x224 forward pass (multiply-add = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from scripts.packaging.export import build_model

    model = build_model(arch, 1000).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9



if __name__ == "__main__":  # one worker process of inproc()
    model_dir, batch, threads, seconds, start_at = sys.argv[1:6]
    print(json.dumps(inproc_worker(Path(model_dir), int(batch), int(threads), float(seconds),
                                   float(start_at))))
