"""GPU benchmark of the large-model path, through the handler's own code, no server needed.

One command, sized to finish in a few minutes on one GPU:
1. Stage a model directory as the archive would hold it: ARCH (default ViT-L/16, about 1.2 GB,
   random weights: speed does not depend on them) exported to TorchScript, the reduced-precision
   check on real photos (scripts/packaging/precision.py), the manifest.
2. The handler's runner on the device TorchServe would assign (gpu_id 0) in FP32, float16 and
   bfloat16 at each batch size: forward latency including the copies to and from the GPU.
3. The whole handler (`initialize` with a mock TorchServe context carrying gpu_id, then
   `handle` on JPEG bytes): what a batch costs with preprocessing on the CPU.
4. Preprocessing throughput on the CPU cores (one process per core), and GPU JPEG decoding
   (torchvision.io.decode_jpeg on CUDA) for comparison.
5. From those measurements, the capacity of one GPU at p99 < SLO with TorchServe's dynamic
   batching: batch size, maxBatchDelay and workers derived (see `capacity`).

Writes OUT/gpu_bench.json and OUT/gpu_bench.md (percentiles: scripts/bench/stats.py). On a
machine without TorchServe installed, its Python package (no Java needed) must be importable:
`make gpu-kit` copies it to build/gpu-kit; then
`PYTHONPATH=build/gpu-kit python -m scripts.bench.micro.gpu`.

    python -m scripts.bench.micro.gpu --arch vit_l_16 --out build/gpu-bench
    python -m scripts.bench.micro.gpu --arch resnet18 --batches 1 4 --iters 3 --device cpu   # a dry run
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from handler import layout
from handler.device import Placement
from handler.preprocessing import PreprocessConfig, preprocess_bytes
from handler.runner import load_runner
from scripts import repo
from scripts.bench import stats

if TYPE_CHECKING:
    from ts.context import Context

# ViT's own preprocessing (224 crop is what it accepts), as scripts/bench/micro/large_model.py uses.
VIT_PREPROCESS = {"input_size": 224, "resize_size": 242, "interpolation": "bilinear",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DTYPES = ("float32", "float16", "bfloat16")
SLO_MS = 50.0
UTILISATION = 0.8  # plan each GPU at 80 % busy: queueing delay stays near one service time


def log(msg: str) -> None:
    print(f"[gpu-bench] {msg}", flush=True)


def summary(values_s: list[float]) -> dict:
    """p50, p99 and mean in ms (scripts/bench/stats.py) of timings in seconds, and their count."""
    figures = stats.summary([v * 1000 for v in values_s], ("p50", "p99", "mean", "n"), digits=3)
    return {("n" if k == "n" else f"{k}_ms"): v for k, v in figures.items()}


def photos_as_jpeg() -> list[bytes]:
    from PIL import Image

    from scripts.packaging.sample_photos import load_photos

    out = []
    for arr in load_photos().values():
        buf = io.BytesIO()
        Image.fromarray(arr).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def stage_model(arch: str, work: Path, device: str) -> Path:
    """The archive's layout in a directory (what TorchServe unpacks), built here."""
    from scripts.packaging import export, package, precision
    from scripts.packaging.manifest import build_manifest

    model_dir = work / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    pre = work / layout.PREPROCESS_CONFIG
    default = repo.CONFIG_DIR / repo.DEFAULT_MODEL / layout.PREPROCESS_CONFIG
    pre.write_text(json.dumps(VIT_PREPROCESS) if arch.startswith("vit") else default.read_text())
    cfg = PreprocessConfig.load(pre)
    torch.manual_seed(0)
    log(f"building {arch} (random weights) and exporting TorchScript")
    model = export.build_model(arch, 1000).eval()
    artifact = model_dir / layout.SERIALIZED_FILE["torchscript"]
    export.export(model, artifact, "torchscript", cfg.input_size)
    log(f"reduced-precision check on real photos ({device})")
    reduced = precision.select(model, export.validation_batch(cfg)[1], device=device)
    del model
    config = yaml.safe_load((repo.CONFIG_DIR / repo.DEFAULT_MODEL / layout.MODEL_CONFIG).read_text())
    config.update(minWorkers=1, maxWorkers=1)
    (work / layout.MODEL_CONFIG).write_text(yaml.safe_dump(config))
    labels_path = repo.CONFIG_DIR / repo.DEFAULT_MODEL / layout.LABELS
    labels = package.load_labels(package.read_labels(labels_path), 1000, labels_path)
    shutil.copy2(pre, model_dir / layout.PREPROCESS_CONFIG)
    package.stage_files(model_dir, labels, work / layout.MODEL_CONFIG,
                        export.architecture_record(export.source_of(arch), 1000, "torchscript"))
    manifest = build_manifest(model_dir, arch, "1.0", arch, "torchscript", None,
                              {"format": "torchscript", "reduced_precision": reduced})
    (model_dir / layout.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (model_dir / "MAR-INF").mkdir(exist_ok=True)
    (model_dir / layout.ARCHIVER_MANIFEST).write_text(json.dumps({"model": {
        "modelName": arch, "modelVersion": "1.0", "serializedFile": artifact.name,
        "handler": layout.ENTRY_MODULE}}))
    return model_dir


def time_calls(fn, iters: int, warm: int = 3) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()  # the runner returns CPU tensors: each call has waited for the GPU
        out.append(time.perf_counter() - t)
    return out


def forward_latency(model_dir: Path, tensors: torch.Tensor, device: str, batches: list[int],
                    iters: int) -> dict:
    """{dtype: {batch: latency summary}} of the handler's runner (copies included)."""
    out = {}
    artifact = model_dir / layout.SERIALIZED_FILE["torchscript"]
    for dtype in DTYPES:
        if device == "cpu" and dtype != "float32":
            continue  # no fast reduced-precision path on most CPUs: not what this benchmark is for
        runner = load_runner(artifact, threads=torch.get_num_threads(),
                             placement=Placement(device, dtype, "benchmark"))
        out[dtype] = {}
        for b in batches:
            batch = tensors[torch.arange(b) % len(tensors)].contiguous()
            out[dtype][b] = summary(time_calls(lambda run=runner, x=batch: run(x), iters))
            log(f"forward {dtype} batch {b}: p50 {out[dtype][b]['p50_ms']} ms, "
                f"p99 {out[dtype][b]['p99_ms']} ms")
        del runner
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


class DiscardedMetrics:
    """TorchServe's metrics cache as far as the handler calls it; this benchmark times the calls."""

    def add_metric(self, *args: object, **kwargs: object) -> None:
        pass

    def add_time(self, *args: object, **kwargs: object) -> None:
        pass


def worker_context(model_dir: Path, batch_size: int, gpu_id: int | None) -> Context:
    """The context TorchServe's worker hands `initialize` for `model_dir`, with `gpu_id` as on a
    server with GPUs. TorchServe's own MockContext (its handler unit tests) has no per-request
    state (headers, ids, statuses) that `handle` needs, and build/gpu-kit leaves it out."""
    from ts.context import Context

    manifest = json.loads((model_dir / layout.ARCHIVER_MANIFEST).read_text())
    model_yaml = yaml.safe_load((model_dir / layout.MODEL_CONFIG).read_text())
    return Context(manifest["model"]["modelName"], str(model_dir), manifest, batch_size, gpu_id,
                   "0.12.0", metrics=DiscardedMetrics(), model_yaml_config=model_yaml)


def new_requests(ctx: Context, size: int) -> None:
    """Fresh per-request state for a batch of `size`, as TorchServe's worker sets before handle()."""
    from ts.context import RequestProcessor

    ctx.request_processor = [RequestProcessor({}) for _ in range(size)]


def handler_latency(model_dir: Path, jpegs: list[bytes], gpu_id: int | None, batches: list[int],
                    iters: int) -> dict:
    """The whole handler (initialize with gpu_id, then handle on JPEG bytes) at each batch."""
    from handler import torchserve_entry

    handler = torchserve_entry.ImageClassifierHandler()
    ctx = worker_context(model_dir, max(batches), gpu_id)
    handler.initialize(ctx)
    out = {"placement": handler.placement.describe(), "batches": {}}
    for b in batches:
        rows = [{"body": jpegs[i % len(jpegs)]} for i in range(b)]

        def call(rows=rows, b=b) -> None:
            new_requests(ctx, b)
            answers = handler.handle(rows, ctx)
            assert len(answers) == b and all("predictions" in a for a in answers), answers

        out["batches"][b] = summary(time_calls(call, iters))
        log(f"handle batch {b} ({handler.placement.device}): p50 {out['batches'][b]['p50_ms']} ms")
    return out


def _preprocess_loop(args: tuple) -> int:
    jpegs, raw_cfg, seconds = args
    torch.set_num_threads(1)
    cfg, done, end = PreprocessConfig.from_dict(raw_cfg), 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        preprocess_bytes(jpegs[done % len(jpegs)], cfg)
        done += 1
    return done


def preprocess_rate(jpegs: list[bytes], raw_cfg: dict, processes: int, seconds: float) -> dict:
    """Images/s of the served preprocessing, one process per core, all at once."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        counts = pool.map(_preprocess_loop, [(jpegs, raw_cfg, seconds)] * processes)
    total = sum(counts) / seconds
    return {"processes": processes, "images_per_s": round(total, 1),
            "per_core_ms": round(1000 * processes / total, 3)}


def gpu_decode(jpegs: list[bytes], cfg: PreprocessConfig, batch: int, iters: int) -> dict | None:
    """torchvision's CUDA JPEG decoder + resize + normalise on the GPU, per image."""
    try:
        import torchvision
        from torchvision.io import decode_jpeg
        from torchvision.transforms.v2 import functional as F
    except ImportError:
        return None
    datas = [torch.frombuffer(bytearray(jpegs[i % len(jpegs)]), dtype=torch.uint8) for i in range(batch)]
    mean = torch.tensor(cfg.mean, device="cuda").view(3, 1, 1) * 255
    std = torch.tensor(cfg.std, device="cuda").view(3, 1, 1) * 255

    def run() -> None:
        images = decode_jpeg(datas, device="cuda")
        out = [F.center_crop(F.resize(im, cfg.resize_size, antialias=True), cfg.input_size) for im in images]
        torch.stack([(o.float() - mean) / std for o in out]).cpu()

    lat = summary(time_calls(run, iters))
    return {"batch": batch, "torchvision": torchvision.__version__, **lat,
            "per_image_ms": round(lat["p50_ms"] / batch, 3)}


def capacity(forward: dict, pre_ms: float, cores: int, slo_ms: float = SLO_MS) -> dict:
    """One GPU's capacity at p99 < SLO with TorchServe's dynamic batching, per dtype.

    Model (stated, not fitted): each worker preprocesses its batch on one core (b x pre) then
    runs the forward on the shared GPU (S(b), p99). maxBatchDelay d = S(b) (at load, batches
    fill within one service time; alone, a request waits at most that). A request's worst
    latency is d + b x pre + 2 S(b) (its own batch and one already on the GPU). Throughput is
    the smaller of the GPU's b/S(b) and the cores' preprocessing, planned at UTILISATION;
    workers = ceil((b x pre + S(b)) / S(b)) so the GPU never waits for a CPU."""
    out = {}
    for dtype, by_batch in forward.items():
        rows = []
        for b, lat in sorted(by_batch.items(), key=lambda kv: int(kv[0])):
            b, service = int(b), lat["p99_ms"]
            worst = service + b * pre_ms + 2 * service
            gpu_rps = 1000 * b / service
            cpu_rps = 1000 * cores / pre_ms
            rows.append({"batch": b, "max_batch_delay_ms": math.ceil(service),
                         "worst_latency_ms": round(worst, 1), "meets_slo": worst < slo_ms,
                         "workers": math.ceil((b * pre_ms + service) / service),
                         "rps": round(UTILISATION * min(gpu_rps, cpu_rps), 1),
                         "bound": "gpu" if gpu_rps <= cpu_rps else "cpu preprocessing"})
        ok = [r for r in rows if r["meets_slo"]]
        out[dtype] = {"rows": rows, "best": max(ok, key=lambda r: r["rps"]) if ok else None}
    return out


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU benchmark: {report['arch']} on {env['device_name']} ({env['cpu_cores']} CPU cores), "
             f"torch {env['torch']}. Command: `{report['command']}`", "",
             "| dtype | batch | forward p50 ms | forward p99 ms | images/s (p50) |", "|---|---|---|---|---|"]
    for dtype, by_batch in report["forward"].items():
        for b, lat in by_batch.items():
            lines.append(f"| {dtype} | {b} | {lat['p50_ms']} | {lat['p99_ms']} | "
                         f"{1000 * int(b) / lat['p50_ms']:.0f} |")
    pre = report["preprocess_cpu"]
    lines += ["", f"Preprocessing on the CPU: {pre['images_per_s']} images/s over {pre['processes']} "
              f"processes ({pre['per_core_ms']} ms per image per core)."]
    if report.get("gpu_decode"):
        g = report["gpu_decode"]
        lines.append(f"GPU JPEG decode + resize + normalise: {g['per_image_ms']} ms per image at batch "
                     f"{g['batch']} (p50 {g['p50_ms']} ms per batch).")
    h = report["handler"]
    lines += ["", f"Whole handler ({h['placement']}): "
              + ", ".join(f"batch {b} p50 {v['p50_ms']} ms" for b, v in h["batches"].items()), "",
              f"Capacity of one GPU at p99 < {SLO_MS:.0f} ms "
              "(model in scripts/bench/micro/gpu.py `capacity`):", "",
              "| dtype | batch | maxBatchDelay ms | workers | worst latency ms | rps | bound |",
              "|---|---|---|---|---|---|---|"]
    for dtype, cap in report["capacity"].items():
        best = cap["best"]
        cells = ([best["batch"], best["max_batch_delay_ms"], best["workers"], best["worst_latency_ms"],
                  best["rps"], best["bound"]] if best else ["none meets the SLO", "", "", "", "", ""])
        lines.append(f"| {dtype} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run(arch: str, out: Path, batches: list[int], iters: int, device: str, pre_seconds: float) -> dict:
    cuda = device == "cuda"
    gpu_id = 0 if cuda else None
    dev = "cuda:0" if cuda else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    model_dir = stage_model(arch, out, dev)
    cfg = PreprocessConfig.load(model_dir / layout.PREPROCESS_CONFIG)
    jpegs = photos_as_jpeg()
    tensors = torch.stack([preprocess_bytes(j, cfg) for j in jpegs])
    cores = os.cpu_count() or 1
    manifest = json.loads((model_dir / layout.MANIFEST).read_text())
    report = {
        "arch": arch, "command": " ".join(["python -m scripts.bench.micro.gpu", *sys.argv[1:]]),
        "environment": {"device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
                        "torch": torch.__version__, "cpu_cores": cores, "python": platform.python_version()},
        "reduced_precision": manifest["validation"]["reduced_precision"],
        "forward": forward_latency(model_dir, tensors, dev, batches, iters),
        "handler": handler_latency(model_dir, jpegs, gpu_id, batches, max(3, iters // 2)),
    }
    log("preprocessing throughput on the CPU")
    report["preprocess_cpu"] = preprocess_rate(jpegs, manifest["preprocessing"], cores, pre_seconds)
    report["gpu_decode"] = gpu_decode(jpegs, cfg, max(batches), iters) if cuda else None
    report["capacity"] = capacity(report["forward"], report["preprocess_cpu"]["per_core_ms"], cores)
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_bench.md").write_text(to_markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_l_16", help="torchvision classifier (random weights)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--iters", type=int, default=30, help="timed calls per measurement")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto: cuda when torch sees a GPU")
    parser.add_argument("--preprocess-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=repo.BUILD_DIR / "gpu-bench")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report = run(args.arch, args.out, args.batches, args.iters, device, args.preprocess_seconds)
    print(to_markdown(report))
    log(f"wrote {args.out / 'gpu_bench.json'} and gpu_bench.md in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
