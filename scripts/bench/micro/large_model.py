"""Measure the large-model case (default ViT-L/16, about 1.2 GB of fp32 weights) on this machine.

Any model source packages through it: a torchvision name (the default, TorchScript), or the
mission's own scenario, a timm model with a preprocessing module of its own, in ONNX:

    python -m scripts.bench.micro.large_model --arch timm:vit_large_patch16_224 --format onnx \\
        --preprocess-code docs/examples/letterbox_preprocess.py --processes 0 --formats default

which also checks that the served top-5 equal the eager model's with that module on the same bytes.

1. Save a seeded random state dict (so the --checkpoint path is the one measured).
2. scripts.packaging.package: export + validate + hash + archive (wall time, peak memory, .mar size).
3. Pack the same staged files as each --archive-format (time, size).
4. Per format: start TorchServe with one worker, time to READY, worker memory (RSS/USS/PSS),
   first-request and steady latency at batch 1, then stop it.
5. Load strategies in child processes, two at a time (memory per process and what is shared):
   torch.jit.load of the extracted file (what the handler does), of the bytes in memory, and the
   eager model with an mmap'd state dict.

    python -m scripts.bench.micro.large_model --out build/bench_large_model.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil

from handler import layout
from scripts import repo
from scripts.bench import stats
from scripts.ops import serve
from scripts.packaging import export, package
from scripts.packaging.sample_photos import write_photos

FORMATS = ("default", "no-archive", "tgz")
# name -> (loader, environment): the handler's torch.jit.load of the file; the same with glibc
# returning large freed buffers at once; the bytes read into memory first; the eager model with
# its state dict mmap'd (weights stay file-backed pages, shared between processes).
MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "65536"}
STRATEGIES = {"jit_file": ("jit_file", {}), "jit_file_mmap_threshold": ("jit_file", MMAP_THRESHOLD),
              "jit_bytes": ("jit_bytes", {}), "eager_mmap": ("eager_mmap", {})}
MB = 1e6
# "[export] scripting: 12.3 s" lines printed by export.step
STEP_LINE = re.compile(r"\[export\] (?P<step>[^:]+): (?P<seconds>[0-9.]+) s$")
PACKED_LINE = re.compile(r"\[package\] wrote (?P<path>\S+) \((?P<mb>[0-9.]+) MB\) in (?P<seconds>[0-9.]+) s")


def write_inputs(work: Path, arch: str, seed: int, threads: int) -> dict[str, Path]:
    """A random checkpoint, the ViT preprocessing (224 crop is what ViT accepts) and a 1-worker
    model config (one worker with every core: a request is tens of GFLOP)."""
    import torch
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{arch.replace(':', '_')}_random.pth"
    if not ckpt.is_file():
        torch.manual_seed(seed)
        model = export.build_model(arch, 1000)
        torch.save(model.state_dict(), ckpt)
        del model
    pre = work / "preprocess.json"
    pre.write_text(json.dumps({"input_size": 224, "resize_size": 242, "interpolation": "bilinear",
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    config = yaml.safe_load((repo.CONFIG_DIR / repo.DEFAULT_MODEL / "model-config.yaml").read_text())
    config.update(minWorkers=1, maxWorkers=1, batchSize=1, maxBatchDelay=5, responseTimeout=300)
    config["handler"]["threads"] = threads
    (work / "model-config.yaml").write_text(yaml.safe_dump(config))
    labels = repo.CONFIG_DIR / repo.DEFAULT_MODEL / "index_to_name.json"
    return {"checkpoint": ckpt, "preprocess": pre, "model_config": work / "model-config.yaml",
            "labels": labels}


def run_package(arch: str, name: str, inputs: dict[str, Path], store: Path, fmt: str = "torchscript",
                preprocess_code: Path | None = None) -> dict:
    """scripts.packaging.package as a user runs it; peak RSS of that child process tree. With
    preprocessing code the numbers of preprocess.json are not used (the module computes the input)."""
    pre = ["--preprocess-code", str(preprocess_code)] if preprocess_code else [
        "--preprocess", str(inputs["preprocess"])]
    cmd = [sys.executable, "-m", "scripts.packaging.package", "--arch", arch,
           "--format", fmt, "--checkpoint", str(inputs["checkpoint"]), "--model-name", name,
           "--labels", str(inputs["labels"]), *pre,
           "--model-config", str(inputs["model_config"]), "--export-path", str(store)]
    t0 = time.perf_counter()
    steps = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:  # pass the progress through; keep each step's duration
            print(line, end="", flush=True)
            if found := STEP_LINE.match(line):
                steps[found["step"]] = float(found["seconds"])
            if found := PACKED_LINE.match(line):
                packed = {"format": "default", "path": found["path"], "size_mb": float(found["mb"]),
                          "pack_seconds": float(found["seconds"])}
    if proc.returncode != 0:
        raise RuntimeError(f"package.py failed with exit code {proc.returncode}")
    wall = time.perf_counter() - t0
    manifest = json.loads((repo.BUILD_DIR / name / layout.MANIFEST).read_text())
    return {"command": " ".join(cmd[1:]), "package_seconds": round(wall, 1), "steps_s": steps,
            "packed": packed,
            "model_pt_mb": round(manifest["files"][layout.SERIALIZED_FILE[fmt]]["bytes"] / MB, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3, 0)}


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def pack(name: str, fmt: str, store: Path, artifact: str = "model.pt") -> dict:
    """Archive the staged build/NAME files in one format; returns time and size."""
    stage = repo.BUILD_DIR / name
    store.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = package.run_archiver(stage, name, "1.0", artifact, store, fmt)
    return {"format": fmt, "path": str(out), "pack_seconds": round(time.perf_counter() - t0, 1),
            "size_mb": round(size_of(out) / MB, 1)}


def peak_rss(pid: int) -> int:
    """The process's high-water mark (VmHWM): a worker's peak while loading."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def memory(pid: int) -> dict:
    info = psutil.Process(pid).memory_full_info()
    return {"rss_mb": round(info.rss / MB), "uss_mb": round(info.uss / MB),
            "pss_mb": round(info.pss / MB), "file_backed_mb": round(info.shared / MB),
            "peak_rss_mb": round(peak_rss(pid) / MB)}


def serve_once(name: str, archive: Path, image: bytes, workdir: Path, steady: int,
               timeout: float, env: dict | None = None) -> dict:
    """Start TorchServe on the archive, wait for READY, measure memory and batch-1 latency."""
    shutil.rmtree(workdir, ignore_errors=True)
    overrides = {"default_response_timeout": int(timeout)}
    t0, launched = time.perf_counter(), datetime.now()
    srv = serve.start(workdir, models=f"{name}={archive.name}", ports=serve.free_ports(),
                      model_store=archive.parent, overrides=overrides, env=env)
    try:
        serve.wait_ready(srv, name, timeout=timeout)
        ready = time.perf_counter() - t0
        workers = srv.client.workers(name)
        mem = [memory(int(w["pid"])) for w in workers]
        srv.client.timeout = timeout
        latencies = []
        for _ in range(1 + steady):
            t = time.perf_counter()
            resp = srv.client.predict(name, image, headers={"Content-Type": "image/jpeg"})
            latencies.append(time.perf_counter() - t)
            if resp.status_code != 200:
                raise RuntimeError(f"prediction failed: {resp.status_code} {resp.text[:200]}")
        answer = resp.json()
        after = [memory(int(w["pid"])) for w in workers]
    finally:
        serve.stop(workdir, grace=20)
    ready_at = {"ready_seconds": round(ready, 1), **worker_timeline(workdir, launched)}
    return {"env": env or {}, "load_avg_1m": round(os.getloadavg()[0], 1),
            **ready_at, "workers": len(workers), "worker_memory": mem,
            "worker_memory_after_requests": after, "first_request_s": round(latencies[0], 2),
            "steady_median_s": round(stats.median(latencies[1:]), 2) if steady else None,
            "steady_max_s": round(max(latencies[1:]), 2) if steady else None,
            "answer": answer}


def eager_top5(arch: str, checkpoint: Path, image: bytes, preprocess_code: Path | None,
               preprocess: Path) -> dict:
    """The eager model's top-5 on the same bytes, preprocessed as a notebook would: the module
    itself on the decoded RGB image, or the preprocess.json transform."""
    import importlib.util

    import torch
    from PIL import Image

    from handler.preprocessing import PreprocessConfig, preprocess_bytes

    model = export.build_model(arch, 1000)
    export.load_checkpoint(model, checkpoint)
    if preprocess_code:
        spec = importlib.util.spec_from_file_location("notebook_preprocess", preprocess_code)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        tensor = torch.from_numpy(module.preprocess(Image.open(io.BytesIO(image)).convert("RGB")))
    else:
        tensor = preprocess_bytes(image, PreprocessConfig.load(preprocess))
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(tensor[None]), 1)[0]
    top = probs.topk(5)
    return {"indices": top.indices.tolist(), "probabilities": [round(p, 6) for p in top.values.tolist()]}


def same_top5(answer: dict, eager: dict, tolerance: float = 2e-3) -> bool:
    served = [p["index"] for p in answer["predictions"]]
    probs = [p["probability"] for p in answer["predictions"]]
    return served == eager["indices"] and max(
        abs(a - b) for a, b in zip(probs, eager["probabilities"])) < tolerance


def worker_timeline(workdir: Path, launched: datetime | None = None) -> dict:
    """Seconds between milestones in model_log.log: launch -> worker process up (Java start,
    archive extraction) -> manifest hashes checked -> model loaded and warmed up (READY)."""
    marks = {"Torch worker started": "started", "Integrity check passed": "verified",
             "Loaded ": "loaded"}
    seen: dict[str, datetime] = {}
    log = workdir / "logs" / "model_log.log"
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        for text, mark in marks.items():
            if text in line and mark not in seen:
                seen[mark] = _line_time(line)
    if len(seen) < len(marks):
        return {}
    up = {"launch_to_worker_s": round((seen["started"] - launched).total_seconds(), 1)} if launched else {}
    return {**up, "hash_check_s": round((seen["verified"] - seen["started"]).total_seconds(), 1),
            "load_and_warm_up_s": round((seen["loaded"] - seen["verified"]).total_seconds(), 1)}


def _line_time(line: str) -> datetime:
    """A model_log line's time, local and naive like `launched`: a JSON line's "time" (UTC), or
    the text layout's leading timestamp."""
    if line.startswith("{"):
        return datetime.fromisoformat(json.loads(line)["time"].replace("Z", "+00:00")).astimezone().replace(
            tzinfo=None)
    return datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S,%f")


def probe_load(strategy: str, model_pt: Path, checkpoint: Path, arch: str) -> None:
    """Child process: load one way, run one forward, say 'loaded', wait, print memory as JSON."""
    import torch

    torch.set_num_threads(1)
    strategy = STRATEGIES[strategy][0]
    if strategy == "jit_file":
        model = torch.jit.load(str(model_pt), map_location="cpu")
    elif strategy == "jit_bytes":
        model = torch.jit.load(io.BytesIO(model_pt.read_bytes()), map_location="cpu")
    else:
        import torchvision

        with torch.device("meta"):
            model = torchvision.models.get_model(arch, weights=None, num_classes=1000)
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True, mmap=True)
        model.load_state_dict(state, assign=True)  # parameters stay views of the mapped file
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 3, 224, 224))
    print("loaded", flush=True)
    sys.stdin.readline()
    print(json.dumps(memory(psutil.Process().pid)), flush=True)
    sys.stdin.readline()  # stay mapped until every sibling has measured (sharing shows in PSS)


def load_strategies(model_pt: Path, checkpoint: Path, arch: str, processes: int,
                    timeout: float) -> dict:
    """Each strategy in `processes` concurrent children, measured while all are loaded."""
    results = {}
    for strategy in STRATEGIES:
        cmd = [sys.executable, "-m", "scripts.bench.micro.large_model", "--probe-load", strategy,
               "--model-pt", str(model_pt), "--checkpoint", str(checkpoint), "--arch", arch]
        t0 = time.perf_counter()
        env = {**os.environ, **STRATEGIES[strategy][1]}
        children = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env) for _ in range(processes)]
        try:
            for child in children:
                if child.stdout.readline().strip() != "loaded":
                    raise RuntimeError(f"{strategy}: child failed to load")
            loaded = time.perf_counter() - t0
            rows = []
            for child in children:
                child.stdin.write("\n")
                child.stdin.flush()
                rows.append(json.loads(child.stdout.readline()))
        finally:
            for child in children:
                child.stdin.close()
                try:
                    child.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    child.kill()
        results[strategy] = {"processes": processes, "env": STRATEGIES[strategy][1],
                             "load_and_forward_s": round(loaded, 1), "per_process": rows}
        print(f"[bench] {strategy}: {rows}", flush=True)
    return results


def run(arch: str, work: Path, formats: list[str], steady: int, processes: int, threads: int,
        timeout: float, seed: int = 0, malloc_variant: bool = True, reuse: bool = False,
        fmt: str = "torchscript", preprocess_code: Path | None = None) -> dict:
    name = f"bench_{arch}".replace(":", "_")
    artifact = layout.SERIALIZED_FILE[fmt]
    inputs = write_inputs(work, arch, seed, threads)
    report: dict = {"arch": arch, "format": fmt,
                    "preprocess_code": str(preprocess_code) if preprocess_code else None,
                    "checkpoint_mb": round(inputs["checkpoint"].stat().st_size / MB, 1),
                    "cores": psutil.cpu_count(), "memory_total_gib": round(
                        psutil.virtual_memory().total / 2**30, 1)}
    mar = work / "store-default" / f"{name}.mar"
    if reuse and mar.is_file() and (repo.BUILD_DIR / name / artifact).is_file():
        report["package"] = {"reused": str(mar), "packed": {
            "format": "default", "path": str(mar), "size_mb": round(mar.stat().st_size / MB, 1),
            "pack_seconds": None}}
    else:
        print(f"[bench] packaging {arch}", flush=True)
        report["package"] = run_package(arch, name, inputs, work / "store-default", fmt, preprocess_code)
    image = sorted(write_photos(work / "photos", ("jpg",)))[0].read_bytes()
    report["formats"] = {}
    runs = [(fmt, fmt, {}) for fmt in formats]
    if malloc_variant:  # the same .mar, glibc told to unmap large freed buffers
        runs.append(("default+mmap_threshold", "default", MMAP_THRESHOLD))
    packs = {"default": report["package"]["packed"]}
    for label, fmt, env in runs:
        if fmt not in packs:
            packs[fmt] = pack(name, fmt, work / f"store-{fmt}", artifact)
        packed = packs[fmt]
        print(f"[bench] {label}: packed {packed['size_mb']} MB in {packed['pack_seconds']} s; serving",
              flush=True)
        served = serve_once(name, Path(packed["path"]), image, work / f"server-{label}", steady,
                            timeout, env)
        report["formats"][label] = {**packed, **served}
        print(f"[bench] {label}: {json.dumps(report['formats'][label])}", flush=True)
    eager = eager_top5(arch, inputs["checkpoint"], image, preprocess_code, inputs["preprocess"])
    report["eager_top5"] = eager
    report["served_top5_equal_eager"] = all(same_top5(r["answer"], eager) for r in report["formats"].values())
    print(f"[bench] served top-5 equal the eager model's: {report['served_top5_equal_eager']}", flush=True)
    if processes and fmt == "torchscript":  # the strategies load TorchScript
        report["load_strategies"] = load_strategies(repo.BUILD_DIR / name / "model.pt",
                                                    inputs["checkpoint"], arch, processes, timeout)
    return report


def _n(value) -> str:
    return f"{value:,}" if isinstance(value, int | float) else "-"


def to_markdown(report: dict) -> str:
    """The serving and load-strategy tables of BENCHMARKS.md from a report."""
    rows = ["| archive | pack s | size MB | start -> READY s | launch -> worker s | hash check s | "
            "load + warm-up s | worker RSS / USS / peak MB | first request s | steady median (max) s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in report["formats"].items():
        m = r["worker_memory"][0]
        rows.append(f"| {label} | {_n(r['pack_seconds'])} | {r['size_mb']:,.0f} | {r['ready_seconds']} | "
                    f"{_n(r.get('launch_to_worker_s'))} | {_n(r.get('hash_check_s'))} | "
                    f"{_n(r.get('load_and_warm_up_s'))} | {_n(m['rss_mb'])} / {_n(m['uss_mb'])} / "
                    f"{_n(m.get('peak_rss_mb'))} | {r['first_request_s']} | {r['steady_median_s']} "
                    f"({r['steady_max_s']}) |")
    rows += ["", "| load strategy (2 processes at once) | RSS MB | USS MB | PSS MB | peak RSS MB |",
             "|---|---|---|---|---|"]
    for name, r in report.get("load_strategies", {}).items():
        m = r["per_process"][0]
        rows.append(f"| {name} | {_n(m['rss_mb'])} | {_n(m['uss_mb'])} | {_n(m['pss_mb'])} | "
                    f"{_n(m.get('peak_rss_mb'))} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_l_16",
                        help="model source to measure: a torchvision name, timm:NAME, ...")
    parser.add_argument("--format", default="torchscript", help="the archive's serialized format")
    parser.add_argument("--preprocess-code", type=Path, help="a preprocessing module of the model's own")
    parser.add_argument("--work", type=Path, default=repo.BUILD_DIR / "bench_large_model",
                        help="checkpoint, archives and server dirs (several GB)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="archive formats to serve")
    parser.add_argument("--steady", type=int, default=5, help="requests after the first one")
    parser.add_argument("--processes", type=int, default=2,
                        help="concurrent children per load strategy (0 skips that step)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the one worker")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per wait")
    parser.add_argument("--no-malloc-variant", action="store_true",
                        help="skip serving the .mar again with MALLOC_MMAP_THRESHOLD_ set")
    parser.add_argument("--reuse", action="store_true",
                        help="serve the archive a previous run built instead of packaging again")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--probe-load", choices=sorted(STRATEGIES), help=argparse.SUPPRESS)
    parser.add_argument("--model-pt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_load:
        probe_load(args.probe_load, args.model_pt, args.checkpoint, args.arch)
        return 0
    report = run(args.arch, args.work, args.formats.split(","), args.steady, args.processes,
                 args.threads, args.timeout, malloc_variant=not args.no_malloc_variant, reuse=args.reuse,
                 fmt=args.format, preprocess_code=args.preprocess_code)
    text = json.dumps(report, indent=2)
    print(text)
    print(to_markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
