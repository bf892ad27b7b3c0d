"""The benchmark's figures: medians and ratios of the repeats (scripts/bench/stats.py), the
results table, the plot, and the sections of BENCHMARKS.md it rewrites (scripts/bench/markdown.py)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from scripts import repo
from scripts.bench import markdown, stats
from scripts.bench.load.loadtest import plot_sweeps
from scripts.bench.workspace import BENCH

DOC = repo.ROOT / "BENCHMARKS.md"
PLOT = repo.ROOT / "docs" / "latency_vs_rate.png"


def med(values: list) -> float | None:
    """The median of the repeats that have the figure (None: a repeat without it), 2 decimals."""
    values = [v for v in values if v is not None]
    return round(stats.median(values), 2) if values else None


def ratio(a: float | None, b: float | None) -> str:
    if a and b == 0:
        return "stock: no rate met it;"
    if a and b and a / b < 0.01:
        return f"1/{b / a:,.0f}"
    return f"{a / b:.2f}x" if a and b else "n/a"


def summarize(res: dict) -> dict:
    rounds = res["rounds"]

    def pick(key: str, *path: str) -> float | None:
        vals = []
        for rnd in rounds:
            v = rnd[key]
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            vals.append(v)
        return med(vals)

    def max_rps(key: str, pick_one=min) -> float:  # a sweep where no rate met the SLO counts as 0
        return pick_one([rnd[key]["max_rps_under_slo"] or 0 for rnd in rounds]) or 0

    s = {  # the SLO rate is compared conservatively: our worst repeat against stock's best
        "ours_max_rps": max_rps("ours_sweep", min),
        "stock_max_rps": max_rps("stock_sweep", max),
        "max_rps_rounds": {k: [rnd[f"{k}_sweep"]["max_rps_under_slo"] for rnd in rounds]
                           for k in ("ours", "stock")},
        "ours_sustained": pick("ours_sweep", "max_rps_sustained") or 0,
        "stock_sustained": pick("stock_sweep", "max_rps_sustained") or 0,
        "ours_p99_50": pick("ours_50", "latency_ms", "p99"),
        "stock_p99_50": pick("stock_50", "latency_ms", "p99"),
        "ours_errors_50": pick("ours_50", "errors"),
        "stock_errors_50": pick("stock_50", "errors"),
        "stock_ok_50": pick("stock_50", "ok"),
        "ours_achieved_50": pick("ours_50", "achieved_rps"),
        "ours_p50_10": pick("ours_10", "latency_ms", "p50"),
        "stock_p50_10": pick("stock_10", "latency_ms", "p50"),
        "inproc_ms": pick("inproc", "solo_latency_ms_p50"),
        "inproc_batch_ips": pick("inproc", "batch_ips"),
        "inproc_batch1_ips": pick("inproc", "batch1_ips"),
    }
    if all("peer_sweep" in rnd for rnd in rounds):  # runs before the peer joined have none
        s["peer_max_rps"] = max_rps("peer_sweep", max)  # the peer's best repeat, like stock's
        s["max_rps_rounds"]["peer"] = [rnd["peer_sweep"]["max_rps_under_slo"] for rnd in rounds]
        s["peer_p50_10"] = pick("peer_10", "latency_ms", "p50")
        s["peer_p99_50"] = pick("peer_50", "latency_ms", "p99")
        s["peer_errors_50"] = pick("peer_50", "errors")
        s["ours_sat"] = pick("ours_sat", "achieved_rps")
        s["peer_sat"] = pick("peer_sat", "achieved_rps")
    if all("before_sweep" in rnd for rnd in rounds):  # the unfused graph, our "before" archive
        s["before_max_rps"] = max_rps("before_sweep", max)
        s["max_rps_rounds"]["before"] = [rnd["before_sweep"]["max_rps_under_slo"] for rnd in rounds]
        s["before_sat"] = pick("before_sat", "achieved_rps")
        s["before_p50_10"] = pick("before_10", "latency_ms", "p50")
    gflop = res["gflop_per_image"]["efficientnet_lite0"]
    s["gflops_inproc"] = round(gflop * (s["inproc_batch_ips"] or 0), 1)
    s["gflops_served"] = round(gflop * s["ours_max_rps"], 1)
    s["gflops_machine"] = round(max(res["machine_gflops"].values()), 1)
    if "resnet50" in res:
        rn = res["resnet50"]
        s["resnet_ours_ips"] = med([r["achieved_rps"] for r in rn["ours"]])
        s["resnet_stock_ips"] = med([r["achieved_rps"] for r in rn["stock"]])
    return s


def pick_stock_achieved(res: dict) -> float | None:
    return med([rnd["stock_50"]["achieved_rps"] for rnd in res["rounds"]])


def table(res: dict) -> str:
    s, slo = res["summary"], res["slo_ms"]
    n = len(res["rounds"])
    window = res["profile"]["target"]
    rows = [
        (f"Highest rate with p99 < {slo:g} ms, zero errors (rps; our worst repeat, stock's best)",
         s["ours_max_rps"], s["stock_max_rps"],
         ratio(s["ours_max_rps"], s["stock_max_rps"]) + " ours/stock", ">= 1.5x"),
        ("Highest rate sustained: zero errors, >= 95% answered (rps)", s.get("ours_sustained"),
         s.get("stock_sustained"), ratio(s.get("ours_sustained"), s.get("stock_sustained")) + " ours/stock",
         ""),
        (f"p99 at 50 rps, {window:g} s (ms)", s["ours_p99_50"], s["stock_p99_50"],
         "stock failed every request" if s["stock_ok_50"] == 0 else
         ratio(s["ours_p99_50"], s["stock_p99_50"]) + " ours/stock", f"ours < {slo:g} ms"),
        (f"errors at 50 rps (of {50 * window:g})", s["ours_errors_50"], s["stock_errors_50"], "", "0"),
        ("achieved rps at 50 rps offered", s["ours_achieved_50"], pick_stock_achieved(res), "", "50"),
        ("p50 at 10 rps (ms)", s["ours_p50_10"], s["stock_p50_10"],
         ratio(s["ours_p50_10"], s["inproc_ms"]) + " ours/in-process", "<= 1.25x"),
        ("In-process preprocess+forward, batch 1 (ms)", s["inproc_ms"], "", "", ""),
        ("In-process throughput at served batch (img/s)", s["inproc_batch_ips"], "", "", ""),
        ("GFLOP/s: in-process / served at max rate / machine matmul", f"{s['gflops_inproc']} / "
         f"{s['gflops_served']} / {s['gflops_machine']}", "",
         ratio(s["gflops_inproc"], s["gflops_machine"]) + " of machine", ""),
    ]
    if "peer_max_rps" in s:
        rows += [
            (f"FastAPI peer: highest rate with p99 < {slo:g} ms (rps; peer's best repeat)",
             s["ours_max_rps"], s["peer_max_rps"],
             ratio(s["ours_max_rps"], s["peer_max_rps"]) + " ours/peer", ">= 1.0x"),
            ("FastAPI peer: saturated, closed loop x8 (rps)", s["ours_sat"], s["peer_sat"],
             ratio(s["ours_sat"], s["peer_sat"]) + " ours/peer", ">= 0.95x"),
            ("FastAPI peer: p50 at 10 rps (ms)", s["ours_p50_10"], s["peer_p50_10"],
             ratio(s["ours_p50_10"], s["peer_p50_10"]) + " ours/peer", ""),
            ("FastAPI peer: p99 at 50 rps (ms)", s["ours_p99_50"], s["peer_p99_50"],
             ratio(s["ours_p99_50"], s["peer_p99_50"]) + " ours/peer", ""),
            ("In-process limit: saturated ours vs in-process throughput at served batch (img/s)",
             s["ours_sat"], s["inproc_batch_ips"],
             ratio(s["ours_sat"], s["inproc_batch_ips"]) + " ours/in-process", ""),
        ]
    if "before_max_rps" in s:
        rows += [
            (f"Before (unfused graph): highest rate with p99 < {slo:g} ms (rps; its best repeat)",
             s["ours_max_rps"], s["before_max_rps"],
             ratio(s["ours_max_rps"], s["before_max_rps"]) + " ours/before", ">= 1.6x"),
            ("Before (unfused graph): saturated, closed loop x8 (rps)", s["ours_sat"], s["before_sat"],
             ratio(s["ours_sat"], s["before_sat"]) + " ours/before", ""),
            ("Before (unfused graph): p50 at 10 rps (ms)", s["ours_p50_10"], s["before_p50_10"],
             ratio(s["ours_p50_10"], s["before_p50_10"]) + " ours/before", ""),
        ]
    if "resnet_ours_ips" in s:
        rows.append(("ResNet-50 saturated throughput (img/s, closed loop x4)", s["resnet_ours_ips"],
                     s["resnet_stock_ips"],
                     ratio(s["resnet_ours_ips"], s["resnet_stock_ips"]) + " ours/stock", "report"))
    per_round = ", ".join(f"{k} {v}" for k, v in s["max_rps_rounds"].items())
    lines = [f"Medians of {n} interleaved repeat(s); load generator on the same 2 cores. "
             f"Highest rate under the SLO per repeat: {per_round} (None: not even the first rate).", "",
             "| Metric | Ours | Stock (or the named peer) | Ratio | Target |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(lines)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "kernel": platform.release()}


def save(res: dict) -> None:
    (BENCH / "results.json").write_text(json.dumps(res, indent=1, default=str))


def write_section(marker: str, text: str, doc: Path = DOC) -> None:
    """Rewrite the section MARKER of BENCHMARKS.md (or of `doc`)."""
    markdown.write_section(marker, text, doc)


def report(res: dict, plot: Path | None) -> None:
    text = table(res)
    m = res["machine"]
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M')}: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
              f"torch {m['torch']}.\n\n")
    print(text)
    if plot:
        last = res["rounds"][-1]
        sweeps = {k: last[f"{k}_sweep"] for k in ("ours", "stock", "peer", "before") if f"{k}_sweep" in last}
        plot_sweeps(sweeps, plot, res["slo_ms"],
                    "EfficientNet-Lite0: ours vs stock TorchServe, FastAPI peer, unfused graph (open loop)")
        text += f"\n\n![latency vs offered rate]({plot.relative_to(repo.ROOT)})"
    write_section("results", header + text)

