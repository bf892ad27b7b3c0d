"""Levers: each tuning choice of the shipped config A/B'd against it, served side by side
(`levers`), and model/decode choices timed in-process (`micro`). A lever is here while its
setting is one the product offers (workers, batching, format, the fused graph, the working
tree's handler); a rejected one keeps only its rows in BENCHMARKS.md."""

from __future__ import annotations

import dataclasses
import json
import time

import yaml

from scripts import repo
from scripts.bench import stats
from scripts.bench.load.artifacts import ours_mar, scripted, variant_mar
from scripts.bench.load.report import med, ratio
from scripts.bench.load.services import Service, at_rate, saturate, start, stop
from scripts.bench.workspace import BENCH, CFG_DIR, Profile, log, photos


def levers(profile: Profile, only: list[str] | None) -> dict:
    """Each lever: the shipped config and its variants served side by side, interleaved."""
    shipped = yaml.safe_load((CFG_DIR / "model-config.yaml").read_text())
    threads = shipped.get("handler", {}).get("threads", 1)
    workers = shipped.get("minWorkers", 2)
    # lever: [(variant, model-config changes)]; keys starting with "_" are the bench's own (how
    # it builds the archive), not settings of the model.
    defs = {
        # A third worker on 2 cores: spare capacity while one restarts (RELIABILITY.md).
        "workers": [("3x1", {"minWorkers": 3, "maxWorkers": 3})],
        # The ONNX graph as torch emits it (17 Pads ORT cannot fold into convolutions), against
        # the fused one the build ships.
        "graph": [("unfused_graph", {"_fuse_pads": False})],
        "batching": [("batch1", {"batchSize": 1, "maxBatchDelay": 0}),
                     ("batch4_delay5", {"batchSize": 4, "maxBatchDelay": 5}),
                     ("batch8_delay10", {"batchSize": 8, "maxBatchDelay": 10})],
        "backend": [("torchscript", {"_format": "torchscript"})],
        # Built from the working tree's handler (e.g. a runner.py change) vs the shipped .mar.
        "working_tree": [("working_tree", {})],
    }
    saved = BENCH / "levers.json"
    out = json.loads(saved.read_text()) if saved.is_file() else {}  # levers run one at a time merge
    for lever, variants in defs.items():
        if only and lever not in only:
            continue
        services = [Service(f"lever-shipped-{lever}", "torchserve", repo.DEFAULT_MODEL, ours_mar())]
        for name, settings in variants:
            settings = dict(settings)
            fmt = settings.pop("_format", None)
            fuse_pads = settings.pop("_fuse_pads", True)
            mar = variant_mar(f"lite0_{name}", settings, fmt, fuse_pads=fuse_pads)
            services.append(Service(f"lever-{name}", "torchserve", f"lite0_{name}", mar))
        try:
            for svc in services:
                w = int(next((v[1].get("minWorkers", workers) for v in variants
                              if svc.label == f"lever-{v[0]}"), workers))
                start(svc, w)
            rows: dict = {svc.label: [] for svc in services}
            for r in range(profile.repeats):
                order = services if r % 2 == 0 else services[::-1]
                for svc in order:
                    # Latency when idle-ish, and capacity (closed loop, 8 clients so batches fill).
                    rows[svc.label].append({"p50_10": at_rate(svc, 10, profile.low, "10rps"),
                                            "sat": saturate(svc, profile.sat, clients=8)})
        finally:
            stop(services)
        out[lever] = {label: {
            "p50_10": med([x["p50_10"]["latency_ms"]["p50"] for x in runs]),
            "p99_10": med([x["p50_10"]["latency_ms"]["p99"] for x in runs]),
            "sat_rps": med([x["sat"]["achieved_rps"] for x in runs])} for label, runs in rows.items()}
        out[lever]["_shipped"] = {"workers": workers, "threads": threads}
        saved.write_text(json.dumps(out, indent=1))
        log(f"{lever}: {json.dumps(out[lever])}")
    return out


def micro(threads: int = 1, reps: int = 30) -> dict:
    """Model- and decode-level levers in-process at the worker's thread count (no HTTP)."""
    import io
    import warnings

    import torch
    from PIL import Image

    from handler.preprocessing import (
        PreprocessConfig,
        decode_rgb,
        open_image,
        preprocess_bytes,
        resize_crop,
        to_tensor,
    )
    from handler.runner import load_runner
    from scripts.packaging.export import build_model, default_checkpoint, export, load_checkpoint

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")

    def timed(fn, arg, n=reps) -> float:
        with torch.inference_mode():
            for _ in range(3):
                fn(arg)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                fn(arg)
                times.append(time.perf_counter() - t)
        return round(stats.median(times) * 1000, 2)

    model = build_model(repo.DEFAULT_MODEL, 1000)
    load_checkpoint(model, default_checkpoint())
    model.eval()
    out: dict = {"threads": threads, "forward_ms": {}}
    frozen = torch.jit.load(str(scripted(repo.DEFAULT_MODEL, "default")))
    onnx = load_runner(export(model, BENCH / "micro" / "model.onnx", "onnx", 224), threads)
    variants = {"eager": model, "torchscript frozen": frozen, "onnxruntime (shipped)": onnx}
    for name, fn in variants.items():
        for batch in (1, 4):
            x = torch.randn(batch, 3, 224, 224)
            out["forward_ms"][f"{name} b{batch}"] = round(timed(fn, x, reps if batch == 1 else 10) / batch, 2)
    # Preprocessing split on the sample photos, and draft decoding on a 12 MP JPEG.
    cfg = PreprocessConfig.load(CFG_DIR / "preprocess.json")
    images = [p.read_bytes() for p in sorted(photos().iterdir())]
    decoded = [decode_rgb(open_image(b, cfg), cfg) for b in images]
    out["preprocess_ms"] = {
        "whole": timed(lambda _: [preprocess_bytes(b, cfg) for b in images], None) / len(images),
        "decode": timed(lambda _: [decode_rgb(open_image(b, cfg), cfg) for b in images], None) / len(images),
        "resize+crop+normalize": timed(lambda _: [to_tensor(d, cfg) for d in decoded], None) / len(images),
        "resample the crop box only (shipped)": timed(
            lambda _: [resize_crop(d, cfg) for d in decoded], None) / len(images),
    }
    big = io.BytesIO()
    Image.open(io.BytesIO(images[0])).resize((4000, 3000)).save(big, "JPEG", quality=90)
    no_draft = dataclasses.replace(cfg, fast_jpeg_draft=False)
    out["12mp_jpeg_ms"] = {"draft on": timed(lambda b: preprocess_bytes(b, cfg), big.getvalue(), 8),
                           "draft off": timed(lambda b: preprocess_bytes(b, no_draft), big.getvalue(), 8)}
    (BENCH / "micro.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


def levers_markdown() -> str:
    """The served A/B table (levers.json) and the in-process table (micro.json) as markdown."""
    lines = []
    if (BENCH / "levers.json").is_file():
        data = json.loads((BENCH / "levers.json").read_text())
        lines += ["Served A/B (`python -m scripts.bench.load.main levers`): each variant beside the shipped "
                  "config, same run, "
                  "interleaved, median of 2. p50/p99 at 10 rps open loop; saturated = closed loop, "
                  "8 clients.", "",
                  "| Lever | Variant | p50 @10 rps (ms) | p99 @10 rps (ms) | Saturated (rps) | vs shipped |",
                  "|---|---|---|---|---|---|"]
        for lever, rows in data.items():
            base = next(v for k, v in rows.items() if k.startswith("lever-shipped"))
            for label, v in rows.items():
                if label.startswith("_"):
                    continue
                name = "shipped" if label.startswith("lever-shipped") else label.removeprefix("lever-")
                gain = "" if name == "shipped" else ratio(v["sat_rps"], base["sat_rps"]) + " throughput"
                cells = [lever, name, v["p50_10"], v["p99_10"], v["sat_rps"], gain]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if (BENCH / "micro.json").is_file():
        m = json.loads((BENCH / "micro.json").read_text())
        lines += ["", f"In-process (`python -m scripts.bench.load.main micro`, {m['threads']} thread, "
                  "median ms per image):", "",
                  "| Variant | ms/image |", "|---|---|"]
        lines += [f"| forward: {k} | {v} |" for k, v in m["forward_ms"].items()]
        lines += [f"| preprocess: {k} | {round(v, 2)} |" for k, v in m["preprocess_ms"].items()]
        lines += [f"| 12 MP JPEG preprocess: {k} | {v} |" for k, v in m["12mp_jpeg_ms"].items()]
    return "\n".join(lines)

