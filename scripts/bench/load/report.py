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


# The rows of the table, in order, and what each is.
ROWS = {
    "ours": "ours: TorchServe + our handler, raw requests",
    "ours_v2": "ours, the same server, v2 (Open Inference Protocol) requests",
    "container": "ours in the runtime image (`make image`), raw requests",
    "stock": "stock TorchServe `image_classifier` handler",
    "fastapi": "FastAPI + uvicorn, no batching",
    "triton": "Triton (pytriton's callable: instances are threads) with its dynamic batcher, v2 requests",
    "triton_repo": "Triton serving our archive as a model repository (stub processes, dynamic batcher), v2",
    "bentoml": "BentoML with adaptive batching, raw requests",
    "floor": "no model: the load generator's floor",
}
PEERS = ("fastapi", "triton", "triton_repo", "bentoml")
TRITONS = ("triton", "triton_repo")


def best_triton(per: dict) -> str | None:
    """The Triton row the targets compare with: the higher median capacity under the SLO, then
    the higher saturated throughput (Triton at its best, however it is deployed)."""
    rows = [label for label in TRITONS if label in per]
    if not rows:
        return None
    return max(rows, key=lambda k: (per[k].get("max_rps") or 0, per[k].get("sat") or 0))


def compared_peers(per: dict) -> dict:
    """The peers the targets hold ours to: each of them, Triton by its better row only."""
    kept = best_triton(per)
    return {k: per[k] for k in PEERS if k in per and (k not in TRITONS or k == kept)}


def summarize(res: dict) -> dict:
    """Per service, the medians over repeats: p50 at 10 rps, p99 / p99.9 / errors at 50 rps,
    saturated rps; the highest rate under the SLO is ours' worst repeat against the others' best."""
    rounds = res["rounds"]

    def pick(key: str, *path: str) -> float | None:
        vals = []
        for rnd in rounds:
            v = rnd.get(key)
            for part in path:
                v = v.get(part) if isinstance(v, dict) else None
            vals.append(v)
        return med(vals)

    per: dict[str, dict] = {}
    for label in ROWS:
        if f"{label}_50" not in rounds[0]:
            continue
        row = {"p50_10": pick(f"{label}_10", "latency_ms", "p50"),
               "p99_50": pick(f"{label}_50", "latency_ms", "p99"),
               "p999_50": pick(f"{label}_50", "latency_ms", "p99.9"),
               "errors_50": pick(f"{label}_50", "errors"),
               "achieved_50": pick(f"{label}_50", "achieved_rps"),
               "sat": pick(f"{label}_sat", "achieved_rps"),
               "sat_windows": [w for rnd in rounds for w in rnd.get(f"{label}_sat", {}).get("windows", [])]}
        if f"{label}_sweep" in rounds[0]:
            best = [rnd[f"{label}_sweep"]["max_rps_under_slo"] or 0 for rnd in rounds]
            row["max_rps_rounds"] = best
            row["max_rps"] = min(best) if label == "ours" else max(best)
            row["rates"] = [rnd[f"{label}_sweep"].get("steps", []) for rnd in rounds]
        per[label] = row
    s = {"services": per, "inproc_ms": pick("inproc", "solo_latency_ms_p50"),
         "inproc_batch_ips": pick("inproc", "batch_ips")}
    gflop = res["gflop_per_image"]["efficientnet_lite0"]
    s["gflops_inproc"] = round(gflop * (s["inproc_batch_ips"] or 0), 1)
    s["gflops_machine"] = round(max(res["machine_gflops"].values()), 1)
    if "resnet50" in res:
        rn = res["resnet50"]
        s["resnet_ours_ips"] = med([r["achieved_rps"] for r in rn["ours"]])
        s["resnet_stock_ips"] = med([r["achieved_rps"] for r in rn["stock"]])
    s["triton_kept"] = best_triton(per)
    s["targets"] = targets(s, res["slo_ms"])
    return s


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "**met**" if ok else "**not met**"


def targets(s: dict, slo: float) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each of the run's targets."""
    per = s["services"]
    ours = per["ours"]
    peers = compared_peers(per)
    out = []
    if peers and "max_rps" in ours:
        worst = {k: v.get("max_rps", 0) for k, v in peers.items()}
        # No service meeting the SLO at any rate measured decides nothing (a saturated machine).
        decided = ours["max_rps"] > 0 or any(worst.values())
        out.append(("ours >= every peer on the highest rate under the SLO",
                    f"ours {ours['max_rps']:g} rps; " + ", ".join(f"{k} {v:g}" for k, v in worst.items()),
                    verdict(all(ours["max_rps"] >= v for v in worst.values()) if decided else None)))
    sats = {k: v["sat"] for k, v in peers.items() if v.get("sat")}
    if sats and ours.get("sat"):
        best = max(sats, key=sats.get)
        out.append(("ours >= 0.95x the best peer saturated",
                    f"{ours['sat']:g} vs {best} {sats[best]:g} rps: {ours['sat'] / sats[best]:.2f}x",
                    verdict(ours["sat"] >= 0.95 * sats[best])))
    if ours.get("p50_10") and s.get("inproc_ms"):
        r = ours["p50_10"] / s["inproc_ms"]
        out.append(("p50 at 10 rps <= 1.25x in-process preprocess + forward",
                    f"{ours['p50_10']:g} vs {s['inproc_ms']:g} ms: {r:.2f}x", verdict(r <= 1.25)))
    if ours.get("p99_50") is not None:
        out.append((f"p99 at 50 rps < {slo:g} ms (this run; 5 of 5 runs: `main slo`)",
                    f"p99 {ours['p99_50']:g} ms, p99.9 {ours['p999_50']:g} ms, {ours['errors_50']:g} errors",
                    verdict(ours["p99_50"] < slo and not ours["errors_50"])))
    box = per.get("container", {})
    if box.get("sat") and ours.get("sat"):
        r = box["sat"] / ours["sat"]
        out.append(("container >= 0.95x bare at saturation",
                    f"{box['sat']:g} vs {ours['sat']:g} rps: {r:.2f}x", verdict(r >= 0.95)))
    return out


def cell(v: float | None) -> str:
    return "" if v is None else f"{v:g}"


def sat_cell(row: dict) -> str:
    """The median saturated throughput, with its windows' spread where there were several."""
    windows = row.get("sat_windows") or []
    if len(windows) < 2:
        return cell(row["sat"])
    return f"{cell(row['sat'])} ({min(windows):g}-{max(windows):g}, {len(windows)} windows)"


def capacity_table(per: dict, windows: int, slo: float) -> list[str]:
    """Each swept rate of each service: its windows' p99 (min / median / max) and the verdict
    on the median window."""
    note = ("one window per rate (the quick profile): each verdict is a single window"
            if windows < 3 else f"{windows} interleaved windows per rate; a rate passes on the median window")
    lines = [f"Capacity, {note} (p99 < {slo:g} ms; a window with errors counts as a miss):", "",
             "| Service | Repeat | Rate (rps) | p99 min / median / max (ms) | Errors | Verdict |",
             "|---|---|---|---|---|---|"]
    for label, row in per.items():
        for repeat, steps in enumerate(row.get("rates", []), 1):
            for st in steps:
                p = st.get("p99", {})
                lines.append(f"| {label} | {repeat} | {st['offered_rps']:g} | {cell(p.get('min'))} / "
                             f"{cell(p.get('median'))} / {cell(p.get('max'))} | {st.get('errors', '')} | "
                             f"{'pass' if st['passes_slo'] else 'miss'} |")
    return lines


def table(res: dict) -> str:
    s, slo = res["summary"], res["slo_ms"]
    n, window = len(res["rounds"]), res["profile"]["target"]
    step = res["profile"]["step"]
    after = ", ".join(f"{r['load_after'][0]:.2f}" for r in res["rounds"])
    lines = [f"Medians of {n} interleaved repeat(s); load generator on the same 2 cores; load average "
             f"before the run {res['load_before'][0]:.2f}, after each repeat {after}. Sweep steps of "
             f"{step:g} s after {res['profile']['warmup']:g} s of warm-up each. "
             f"Peers' settings: {res.get('knobs', {})}.", "",
             f"| Service | p50 at 10 rps (ms) | p99 / p99.9 at 50 rps, {window:g} s (ms) | errors at 50 rps "
             f"| highest rate with p99 < {slo:g} ms (rps) | saturated, closed loop x8 (rps) |",
             "|---|---|---|---|---|---|"]
    for label, row in s["services"].items():
        rate = "" if "max_rps" not in row else (
            f"{row['max_rps']:g} (repeats: {', '.join(str(x) for x in row['max_rps_rounds'])})")
        lines.append(f"| {ROWS[label]} | {cell(row['p50_10'])} | {cell(row['p99_50'])} / "
                     f"{cell(row['p999_50'])} | {cell(row['errors_50'])} | {rate} | {sat_cell(row)} |")
    lines.append(f"| in-process preprocess + forward (the limit) | {cell(s['inproc_ms'])} (batch 1) | | | | "
                 f"{cell(s['inproc_batch_ips'])} img/s at the served batch |")
    if "resnet_ours_ips" in s:
        ours_ips, stock_ips = s["resnet_ours_ips"], s["resnet_stock_ips"]
        lines += ["", f"ResNet-50 (random weights) saturated, closed loop x4: ours {ours_ips} img/s, "
                  f"stock {stock_ips} img/s ({ratio(ours_ips, stock_ips)} ours/stock)."]
    if s.get("triton_kept"):
        lines += ["", f"Triton at its best: the targets compare with the `{s['triton_kept']}` row "
                  "(the higher median capacity, then saturated throughput)."]
    lines += ["", *capacity_table(s["services"], res["profile"].get("windows", 1), slo)]
    lines += ["", "| Target | Measured | Verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in s["targets"]]
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
        sweeps = {k: last[f"{k}_sweep"] for k in ROWS if f"{k}_sweep" in last}
        plot_sweeps(sweeps, plot, res["slo_ms"],
                    "EfficientNet-Lite0: ours vs stock TorchServe, FastAPI, Triton, BentoML (open loop)")
        text += f"\n\n![latency vs offered rate]({plot.relative_to(repo.ROOT)})"
    write_section("results", header + text)

