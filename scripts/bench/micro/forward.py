"""Forward-pass micro-benchmark: the model's graphs side by side, batch 1, one thread.

Exports the default model twice from the same weights (the ONNX graph as torch emits it, the
"before", built here with `export(..., fusable=False)`: no model setting asks for it; the fused
one the build ships), adds the INT8 graph, OpenVINO and the torch formats (eager, torch.export,
AOTInductor compiled from the same program) when asked, then times each runner on the
same real photo in interleaved rounds (so a busy neighbour hurts every variant alike) and prints
the median and p90 per variant (scripts/bench/stats.py) and the ratio to the "before" graph.

Example:
    python -m scripts.bench.micro.forward --runs 300 --rounds 5 --int8 --openvino --json out.json
    python -m scripts.bench.micro.forward --runs 100 --rounds 3 --torch   # eager, .pt2, AOTInductor
Exit status 0 on success, 2 when a variant cannot be built.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scripts.bench import stats

BEFORE = "onnx-fp32-before"


def ort_runner(path: Path, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """An ORT session pinned to `threads` intra-op threads, as handler/runner.py builds it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_runner(path: Path, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO's CPU plugin reading the same ONNX file, one stream, `threads` threads."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "NUM_STREAMS": 1,
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0]


def build_graphs(out_dir: Path, int8: bool = False) -> dict[str, Path]:
    """The default model's ONNX graphs, exported into `out_dir` from the packaged weights."""
    from scripts import repo
    from scripts.packaging import export as ex

    cfg = ex.load_preprocess(repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json")
    model = ex.build_model(repo.DEFAULT_MODEL, 1000)
    ex.load_checkpoint(model, ex.default_checkpoint())
    model.eval()
    graphs = {BEFORE: ex.export(model, out_dir / "before.onnx", "onnx", cfg.input_size, fusable=False),
              "onnx-fp32-fused": ex.export(model, out_dir / "fused.onnx", "onnx", cfg.input_size)}
    if int8:
        from scripts.packaging import quantize

        calib = quantize.calibration_batch(cfg)
        graphs["onnx-int8-fused"] = quantize.quantize(graphs["onnx-fp32-fused"],
                                                      out_dir / "int8.onnx", calib)
    return graphs


def torch_runners(out_dir: Path) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The eager model, its torch.export program (handler/runner.py's torch-export backend) and
    that program compiled ahead of time by AOTInductor (a C++ compiler at packaging)."""
    import torch

    from scripts import repo
    from scripts.packaging import export as ex

    model = ex.build_model(repo.DEFAULT_MODEL, 1000)
    ex.load_checkpoint(model, ex.default_checkpoint())
    model.eval()
    program = ex.export(model, out_dir / "model.pt2", "torch-export", 224)
    exported = torch.export.load(str(program)).module()
    print("[forward] AOTInductor: compiling the program (about a minute)", flush=True)
    aoti = torch._inductor.aoti_load_package(torch._inductor.aoti_compile_and_package(
        torch.export.load(str(program)), package_path=str(out_dir / "model_aoti.pt2")))

    def run(fn):
        def call(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return fn(torch.from_numpy(x)).numpy()
        return call

    return {"torch-eager": run(model), "torch-export": run(exported), "torch-aoti": run(aoti)}


def time_forward(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, runs: int) -> list[float]:
    """`runs` timed calls (ms) after a warm-up of 20."""
    for _ in range(20):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1000)
    return times


def compare(runners: dict[str, Callable], x: np.ndarray, runs: int, rounds: int) -> dict:
    """Median ms per runner over `rounds` interleaved rounds of `runs` calls; ratio to BEFORE."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name, fn in runners.items():
            samples[name] += time_forward(fn, x, runs)
        print(f"[forward] round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {stats.median(s):.2f} ms" for n, s in samples.items()), flush=True)
    figures = {name: stats.summary(s, ("p50", "p90", "n"), digits=None) for name, s in samples.items()}
    base = figures[BEFORE]["p50"] if BEFORE in figures else None
    return {name: {"median_ms": round(f["p50"], 3), "p90_ms": round(f["p90"], 3), "calls": f["n"],
                   "ratio_to_before": round(f["p50"] / base, 3) if base else None}
            for name, f in figures.items()}


def sample_input() -> np.ndarray:
    """One real photo through the served preprocessing, batch 1."""
    from scripts import repo
    from scripts.packaging import export as ex

    cfg = ex.load_preprocess(repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json")
    return ex.validation_batch(cfg)[1][:1].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="timed calls per variant per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per runner")
    parser.add_argument("--int8", action="store_true", help="add the INT8 (QDQ) graph")
    parser.add_argument("--openvino", action="store_true",
                        help="add OpenVINO on the same graphs (needs the openvino package)")
    parser.add_argument("--torch", action="store_true",
                        help="add the eager model, its torch.export program and AOTInductor")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the export's own work must not compete with the timed runner
    with tempfile.TemporaryDirectory() as tmp:
        try:
            graphs = build_graphs(Path(tmp), int8=args.int8)
        except Exception as exc:
            print(f"error: cannot build the graphs: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        runners = {name: ort_runner(path, args.threads) for name, path in graphs.items()}
        if args.openvino:
            for name, path in graphs.items():
                if name != BEFORE:
                    runners[name.replace("onnx-", "openvino-")] = openvino_runner(path, args.threads)
        if args.torch:
            runners.update(torch_runners(Path(tmp)))
        results = compare(runners, sample_input(), args.runs, args.rounds)
    print(f"\nforward pass, batch 1, {args.threads} thread(s), median of {args.runs * args.rounds} calls")
    for name, r in results.items():
        print(f"  {name:<22} {r['median_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms  "
              f"x{r['ratio_to_before']:.3f} of {BEFORE}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
