"""Benchmark our service against its limit (in-process), its anchor (stock TorchServe), the
serving stacks users pick instead, and its own container, in one run.

    python -m scripts.bench.load.main          # full run (about 70 min), writes BENCHMARKS.md + the plot
    python -m scripts.bench.load.main --quick  # about 15 min, shorter windows, one repeat
    python -m scripts.bench.load.main tune     # the batching peers' batch size and delay, chosen
    python -m scripts.bench.load.main slo      # ours at 50 rps, 5 runs of 60 s: p99, p99.9, stalls
    python -m scripts.bench.load.main levers   # A/B of each tuning lever against the shipped config
    python -m scripts.bench.load.main micro    # model/decode levers in-process (no HTTP)

One run measures, interleaved A/B/B/A so machine noise hits all alike:
  limit     preprocess + forward of the shipped artifact in-process (no HTTP): batch-1 latency,
            and throughput with the served workers x threads at the served batch size;
  ours      our .mar (our handler, tuned model-config.yaml) behind TorchServe, raw requests;
  ours_v2   the same server, the same photos as Open Inference Protocol (v2) requests;
  container the runtime image (`make image`) as the README runs it, raw requests;
  stock     TorchServe's `image_classifier` handler serving the same scripted model with
            TorchServe's default model settings (no config file);
  fastapi   what a user might write: FastAPI + uvicorn, no batching (fastapi_peer.py);
  triton    Triton Inference Server (pytriton's callable) with its dynamic batcher, v2 requests
            (triton_peer.py);
  triton_repo  Triton serving our archive as a model repository (scripts.deploy.triton_repo: stub
            processes, its dynamic batcher), v2 requests (scripts.deploy.triton_server); the
            better of the two Triton rows is the one the targets compare with;
  bentoml   BentoML with adaptive batching, raw requests (batching_peer.py);
  floor     no model: a trivial server, what the load generator itself costs (floor.py);
every peer on the same model.onnx, handler.preprocessing and photos, 2 processes (or model
instances) x 1 ORT thread on the 2 cores; then ResNet-50 (random weights) saturated throughput,
ours vs stock. Load comes from scripts.bench.load.loadtest in its own process, on the same cores.

Capacity is a measurement, not a window: each rate of the sweep is run in `windows` windows per
service, interleaved across the services (A B C, C B A, ...), and passes when the median window's
p99 meets the SLO (loadtest.rate_verdict); a service leaves the sweep after two rates in a row
missed. Saturated throughput is the median of as many interleaved closed-loop windows.

Where each job lives: scripts.bench.workspace (folders, windows, photos), scripts.bench.stats
(percentiles, medians), scripts.bench.peers (the peers and the floor); here, artifacts (the
archives), services (servers and load), inproc (the in-process limit, FLOPs), report (table,
plot, BENCHMARKS.md), levers (levers and micro), tune (the peers' batching settings), slo (the
50 rps runs and their stalls).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from handler.integrity import sha256_file
from scripts import repo
from scripts.bench import stats
from scripts.bench.load.artifacts import ours_mar, scripted, stock_mar, unpack
from scripts.bench.load.inproc import inproc, machine_gflops, model_gflop
from scripts.bench.load.levers import levers, levers_markdown, micro
from scripts.bench.load.loadtest import capacity, parse_rates, rate_verdict
from scripts.bench.load.report import PLOT, machine, report, save, summarize, table, write_section
from scripts.bench.load.services import Service, at_rate, saturate, start, stop
from scripts.bench.load.tune import BENTOML_KNOBS, TRITON_KNOBS, TRITON_REPO_KNOBS, tune
from scripts.bench.workspace import BENCH, LEVERS, QUICK, STORE, Profile, log
from scripts.ops import pins
from scripts.packaging import package
from scripts.packaging.plan import PackagingInputs

# What each window measures: every service at 10 and 50 rps; the sweep for the servers compared
# on capacity; saturation for all that can reach it (stock saturates at a few rps).
SWEPT = ("ours", "stock", "fastapi", "triton", "triton_repo", "bentoml")
SATURATED = ("ours", "ours_v2", "container", "fastapi", "triton", "triton_repo", "bentoml")


def services(only: list[str] | None = None) -> list[Service]:
    """The services of a run (`only`: these labels; ours_v2 brings ours)."""
    model = repo.DEFAULT_MODEL
    ours = Service("ours", "torchserve", model, ours_mar())
    unpacked = unpack(ours.mar)
    # The stock archive is exported and packed only for a run that serves it.
    stock = stock_mar(scripted(model, "default"), "efficientnet_lite0_stock") if not only or "stock" in only \
        else STORE / "efficientnet_lite0_stock.mar"
    everything = [
        ours,
        Service("ours_v2", "torchserve", model, ours.mar, protocol="v2", shares=ours),
        Service("container", "container", model),
        Service("stock", "torchserve", "efficientnet_lite0_stock", stock,
                env=pinned(stock) if stock.is_file() else {}),
        Service("fastapi", "fastapi", model, model_dir=unpacked),
        Service("triton", "triton", model, model_dir=unpacked, protocol="v2", knobs=dict(TRITON_KNOBS)),
        Service("triton_repo", "triton_repo", model, ours.mar, protocol="v2", knobs=dict(TRITON_REPO_KNOBS)),
        Service("bentoml", "batching", model, model_dir=unpacked, knobs=dict(BENTOML_KNOBS)),
        Service("floor", "floor", "floor"),
    ]
    if only is None:
        return everything
    unknown = set(only) - {s.label for s in everything}
    if unknown:
        raise SystemExit(f"--only: no service {sorted(unknown)}; the services are "
                         f"{[s.label for s in everything]}")
    return [s for s in everything if s.label in only or (s.label == "ours" and "ours_v2" in only)]


def pinned(mar: Path) -> dict:
    """The environment that runs a stock archive: it has none of our manifests, so it runs only
    pinned (scripts/ops/pins.py)."""
    return {pins.PIN_ENV: f"{mar.name}={sha256_file(mar)}"}


def capacity_windows(svcs: list[Service], profile: Profile, slo: float) -> dict[str, dict]:
    """Each rate of the sweep in `profile.windows` windows per service, interleaved across the
    services (A B C, C B A, ...); per service its rates' verdicts (loadtest.rate_verdict) and the
    highest rate below which all passed. A service stops after two rates in a row missed."""
    steps: dict[str, list] = {s.label: [] for s in svcs}
    missed = dict.fromkeys(steps, 0)
    for rate in parse_rates(profile.sweep):
        live = [s for s in svcs if missed[s.label] < 2]
        if not live:
            break
        windows: dict[str, list] = {s.label: [] for s in live}
        for w in range(profile.windows):
            for svc in live if w % 2 == 0 else live[::-1]:
                windows[svc.label].append(at_rate(svc, rate, profile.step, f"{rate:g}rps-w{w + 1}",
                                                  profile.warmup))
        for svc in live:
            step = rate_verdict(rate, windows[svc.label], slo)
            steps[svc.label].append(step)
            missed[svc.label] = 0 if step["passes_slo"] else missed[svc.label] + 1
            log(f"{svc.label} at {rate:g} rps: p99 over {profile.windows} window(s) {step['p99']}, "
                f"{'PASS' if step['passes_slo'] else 'miss'}")
    return {label: {"mode": "windows", "windows": profile.windows, "slo_ms": slo, "steps": st,
                    "max_rps_under_slo": capacity(st)} for label, st in steps.items()}


def saturated_windows(svcs: list[Service], profile: Profile) -> dict[str, dict]:
    """Closed-loop (x8) throughput in `profile.windows` windows per service, interleaved:
    the median, its spread and every window's figure."""
    runs: dict[str, list] = {s.label: [] for s in svcs}
    for w in range(profile.windows):
        for svc in svcs if w % 2 == 0 else svcs[::-1]:
            runs[svc.label].append(saturate(svc, profile.sat, clients=8)["achieved_rps"])
    return {label: {"achieved_rps": round(stats.median(rps), 2), "min": min(rps), "max": max(rps),
                    "windows": rps} for label, rps in runs.items()}


def run(profile: Profile, slo: float, resnet: bool, only: list[str] | None = None) -> dict:
    BENCH.mkdir(parents=True, exist_ok=True)
    svcs = services(only)
    res = {"machine": machine(), "profile": profile.__dict__, "slo_ms": slo, "rounds": [],
           "knobs": {s.label: s.knobs for s in svcs if s.knobs}, "load_before": os.getloadavg()}
    res["gflop_per_image"] = {"efficientnet_lite0": model_gflop(repo.DEFAULT_MODEL)}
    res["machine_gflops"] = {"1 thread": machine_gflops(1), f"{os.cpu_count()} threads":
                             machine_gflops(os.cpu_count() or 1)}
    w = profile.warmup
    try:
        for svc in svcs:
            start(svc)
        for r in range(profile.repeats):
            order = svcs if r % 2 == 0 else svcs[::-1]
            rnd = {"inproc": inproc(ours_mar(), 10 if profile.repeats > 1 else 6)}
            for svc in order:
                rnd[f"{svc.label}_10"] = at_rate(svc, 10, profile.low, "10rps", w)
            for svc in order:
                rnd[f"{svc.label}_50"] = at_rate(svc, 50, profile.target, "50rps", w)
            swept = capacity_windows([o for o in order if o.label in SWEPT], profile, slo)
            rnd.update({f"{label}_sweep": result for label, result in swept.items()})
            sat = saturated_windows([o for o in order if o.label in SATURATED], profile)
            rnd.update({f"{label}_sat": result for label, result in sat.items()})
            rnd["load_after"] = os.getloadavg()
            res["rounds"].append(rnd)
            save(res)
    finally:
        stop(svcs)
    if resnet:
        res["resnet50"] = run_resnet(profile)
    res["summary"] = summarize(res)
    save(res)
    return res


def run_resnet(profile: Profile) -> dict:
    """Saturated throughput (closed loop, 4 clients) of ResNet-50 with random weights."""
    name = "resnet50_bench"
    ours = Service("ours_resnet50", "torchserve", name,
                   package.package(PackagingInputs("resnet50", "none", model_name=name, export_dir=STORE)))
    stock_resnet = stock_mar(scripted("resnet50", "none"), f"{name}_stock")
    stock = Service("stock_resnet50", "torchserve", f"{name}_stock", stock_resnet, env=pinned(stock_resnet))
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
    parser.add_argument("action", nargs="?", choices=["run", "tune", "slo", "levers", "micro"], default="run")
    parser.add_argument("--runs", type=int, default=5, help="slo: runs of 60 s at 50 rps")
    parser.add_argument("--quick", action="store_true", help="short windows, one repeat (about 4 min)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 2; quick 1)")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="p99 objective (ms)")
    parser.add_argument("--no-resnet", action="store_true", help="skip the ResNet-50 throughput step")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md or the plot")
    parser.add_argument("--only", nargs="+", help="levers: only these levers; run: only these services")
    parser.add_argument("--windows", type=int,
                        help="windows per sweep rate and saturation (default 3; quick 1)")
    parser.add_argument("--rates", help="the sweep's rates, e.g. 50,70 or 30:120:10 (default: the profile's)")
    parser.add_argument("--from-results", action="store_true",
                        help="rewrite the table and plot from build/bench/results.json, measure nothing")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else LEVERS if args.action == "levers" else Profile()
    if args.repeats:
        profile.repeats = args.repeats
    if args.windows:
        profile.windows = args.windows
    if args.rates:
        profile.sweep = args.rates
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every server this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    if args.action == "tune":
        tune(profile)
    elif args.action == "slo":
        from scripts.bench.load.slo import slo_runs

        slo_runs(args.runs, args.slo_ms, write=not args.no_write)
    elif args.action in ("levers", "micro"):
        levers(profile, args.only) if args.action == "levers" else micro()
        if not args.no_write:
            write_section("levers", levers_markdown())
    elif args.from_results:
        res = json.loads((BENCH / "results.json").read_text())
        res["summary"] = summarize(res)
        save(res)
        if args.no_write:
            print(table(res))
        else:
            report(res, PLOT)
    else:
        res = run(profile, args.slo_ms, not args.no_resnet, args.only)
        if args.no_write:
            print(table(res))
        else:
            report(res, PLOT)
    log(f"done in {(time.monotonic() - t0) / 60:.1f} min; raw results in {BENCH}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
