"""Benchmark our service against its limit (in-process) and its anchor (stock TorchServe).

    python -m scripts.bench.load.main          # full run (about 20 min), writes BENCHMARKS.md + the plot
    python -m scripts.bench.load.main --quick  # about 4 min, shorter windows, one repeat
    python -m scripts.bench.load.main levers   # A/B of each tuning lever against the shipped config
    python -m scripts.bench.load.main micro    # model/decode levers in-process (no HTTP)

One run measures, interleaved A/B/B/A so machine noise hits all alike:
  limit   preprocess + forward of the shipped artifact in-process (no HTTP): batch-1 latency,
          and throughput with the served workers x threads at the served batch size;
  ours    our .mar (our handler, tuned model-config.yaml) behind TorchServe;
  stock   TorchServe's `image_classifier` handler serving the same scripted model with
          TorchServe's default model settings (no config file);
  peer    what a user might write instead: FastAPI + uvicorn, 2 processes x 1 ORT thread, the
          same model.onnx, preprocessing and JSON as ours, no batching (scripts/bench/load/peer.py);
  before  our archive with the ONNX graph as torch emits it (artifacts.unfused_mar): what
          shipped before the fused export;
then ResNet-50 (random weights) saturated throughput, ours vs stock. Load comes from
scripts.bench.load.loadtest in its own process, on the same 2 cores as the server.

Where each job lives: scripts.bench.workspace (folders, windows, photos) and scripts.bench.stats
(percentiles, medians); here, artifacts (the archives), services (servers and load), inproc (the
in-process limit, FLOPs), report (table, plot, BENCHMARKS.md), levers (levers and micro).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from scripts import repo
from scripts.bench.load.artifacts import ours_mar, scripted, stock_mar, unfused_mar, unpack
from scripts.bench.load.inproc import inproc, machine_gflops, model_gflop
from scripts.bench.load.levers import levers, levers_markdown, micro
from scripts.bench.load.report import PLOT, machine, report, save, summarize, table, write_section
from scripts.bench.load.services import Service, at_rate, saturate, start, stop, sweep
from scripts.bench.workspace import BENCH, LEVERS, QUICK, STORE, Profile, log
from scripts.packaging import package


def run(profile: Profile, slo: float, resnet: bool) -> dict:
    BENCH.mkdir(parents=True, exist_ok=True)
    ours = Service("ours", repo.DEFAULT_MODEL, ours_mar())
    stock = Service("stock", "efficientnet_lite0_stock",
                    stock_mar(scripted(repo.DEFAULT_MODEL, "default"), "efficientnet_lite0_stock"))
    peer = Service("peer", repo.DEFAULT_MODEL, ours.mar, peer_dir=unpack(ours.mar))
    # Our archive as it was before the fused export: the unfused graph, the same handler.
    before = Service("before", "lite0_unfused_graph", unfused_mar("lite0_unfused_graph"))
    services = [ours, stock, peer, before]
    res = {"machine": machine(), "profile": profile.__dict__, "slo_ms": slo, "rounds": []}
    res["gflop_per_image"] = {"efficientnet_lite0": model_gflop(repo.DEFAULT_MODEL)}
    res["machine_gflops"] = {"1 thread": machine_gflops(1), f"{os.cpu_count()} threads":
                             machine_gflops(os.cpu_count() or 1)}
    try:
        for svc in services:
            start(svc)
        for r in range(profile.repeats):
            order = services if r % 2 == 0 else services[::-1]
            rnd = {"inproc": inproc(ours.mar, 10 if profile.repeats > 1 else 6)}
            for svc in order:
                rnd[f"{svc.label}_10"] = at_rate(svc, 10, profile.low, "10rps")
            for svc in order:
                rnd[f"{svc.label}_50"] = at_rate(svc, 50, profile.target, "50rps")
            for svc in order:
                rnd[f"{svc.label}_sweep"] = sweep(svc, profile.sweep, profile.step, slo)
            for svc in (o for o in order if o is not stock):  # stock saturates at a few rps
                rnd[f"{svc.label}_sat"] = saturate(svc, profile.sat, clients=8)
            res["rounds"].append(rnd)
            save(res)
    finally:
        stop(services)
    if resnet:
        res["resnet50"] = run_resnet(profile)
    res["summary"] = summarize(res)
    save(res)
    return res


def run_resnet(profile: Profile) -> dict:
    """Saturated throughput (closed loop, 4 clients) of ResNet-50 with random weights."""
    name = "resnet50_bench"
    ours = Service("ours_resnet50", name, package.package("resnet50", "none", model_name=name,
                                                          export_dir=STORE))
    stock = Service("stock_resnet50", f"{name}_stock",
                    stock_mar(scripted("resnet50", "none"), f"{name}_stock"))
    out: dict = {"gflop_per_image": model_gflop("resnet50"), "ours": [], "stock": []}
    try:
        for svc in (ours, stock):
            start(svc)
        for r in range(profile.repeats):
            for svc in ([ours, stock] if r % 2 == 0 else [stock, ours]):
                out[svc.label.split("_")[0]].append(saturate(svc, profile.sat))
    finally:
        stop([ours, stock])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=["run", "levers", "micro"], default="run")
    parser.add_argument("--quick", action="store_true", help="short windows, one repeat (about 4 min)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 2; quick 1)")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="p99 objective (ms)")
    parser.add_argument("--no-resnet", action="store_true", help="skip the ResNet-50 throughput step")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md or the plot")
    parser.add_argument("--only", nargs="+", help="levers: only these levers")
    parser.add_argument("--from-results", action="store_true",
                        help="rewrite the table and plot from build/bench/results.json, measure nothing")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else LEVERS if args.action == "levers" else Profile()
    if args.repeats:
        profile.repeats = args.repeats
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every server this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    if args.action in ("levers", "micro"):
        levers(profile, args.only) if args.action == "levers" else micro()
        if not args.no_write:
            write_section("levers", levers_markdown())
    elif args.from_results:
        res = json.loads((BENCH / "results.json").read_text())
        res["summary"] = summarize(res)
        save(res)
        report(res, PLOT)
    else:
        res = run(profile, args.slo_ms, not args.no_resnet)
        if args.no_write:
            print(table(res))
        else:
            report(res, PLOT)
    log(f"done in {(time.monotonic() - t0) / 60:.1f} min; raw results in {BENCH}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
