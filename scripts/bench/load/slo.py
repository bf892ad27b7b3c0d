"""Ours at 50 rps, RUNS windows of 60 s in a row on one server, with p99 and p99.9 each, and the
stalls (requests over the SLO) laid beside what could have caused them:

- the load generator's own floor: the same generator against floor.py, no model, first;
- the JVM (TorchServe's frontend): its GC pauses and safepoints, logged by the JVM itself
  (-Xlog:gc,safepoint with wall-clock times) and matched to the slow requests they overlap;
- ONNX Runtime and the worker after idle: requests at 1 rps after 30 s of silence, against the
  steady p50;
- the rest (Python GC in the workers, scheduling on 2 shared cores) is what no JVM pause explains.

    python -m scripts.bench.load.main slo            # 5 runs, about 8 min; BENCHMARKS.md section "slo"
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

from scripts import repo
from scripts.bench import markdown, stats
from scripts.bench.load.artifacts import ours_mar
from scripts.bench.load.loadtest import Target, load_images, run_open
from scripts.bench.load.services import Service, start, stop
from scripts.bench.workspace import BENCH, log, photos
from scripts.ops import server_config

WINDOW_S, WARMUP_S, RATE = 60.0, 5.0, 50.0
# -Xlog:gc,safepoint:file=F:utctime writes "[2026-12-03T18:18:03.305+0000] GC(0) Pause Young ..."
JVM_LINE = re.compile(r"^\[(?P<t>[^\]]+)\] (?P<text>.*)$")
SAFEPOINT_NS = re.compile(r"Total: (?P<ns>\d+) ns")


def jvm_pauses(path: Path) -> list[tuple[float, float]]:
    """(wall end time, duration ms) of each JVM safepoint in its log: every stop of the Java
    threads, GC pauses included (each G1 pause is one safepoint)."""
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        m = JVM_LINE.match(line)
        if m and m["text"].startswith("Safepoint") and (ns := SAFEPOINT_NS.search(m["text"])):
            out.append((datetime.fromisoformat(m["t"]).timestamp(), int(ns["ns"]) / 1e6))
    return out


def window_stats(records: list, offset: float, slo_ms: float, pauses: list) -> dict:
    """One window's percentiles, its slow requests, and how many of them a JVM pause overlapped."""
    t0 = min(r[0] for r in records) + WARMUP_S
    rows = [r for r in records if r[0] >= t0]
    lat = [(end - intended) * 1000 for intended, _, end, _ in rows]
    slow = [(intended + offset, end + offset) for (intended, _, end, _), ms in zip(rows, lat) if ms >= slo_ms]
    lo, hi = t0 + offset, max(r[2] for r in rows) + offset
    inside = [p for p in pauses if lo <= p[0] <= hi]
    by_jvm = sum(1 for a, b in slow if any(a <= end and end - ms / 1000 <= b for end, ms in inside))
    seconds: dict[int, list[float]] = {}
    for row, ms in zip(rows, lat):
        if ms >= slo_ms:
            intended = row[0]
            seconds.setdefault(int(intended + offset), []).append(ms)
    worst = sorted(seconds.items(), key=lambda kv: -len(kv[1]))[:3]
    return {"requests": len(rows), "errors": sum(1 for r in rows if r[3] != "200"),
            "worst_seconds": [{"at": time.strftime("%H:%M:%S", time.gmtime(sec)), "over_slo": len(v),
                               "max_ms": round(max(v), 1)} for sec, v in sorted(worst)],
            "latency_ms": stats.summary(lat, ("p50", "p99", "p99.9", "max")),
            "over_slo": len(slow), "over_slo_overlapping_jvm_pause": by_jvm,
            "jvm_pauses": len(inside), "jvm_pause_ms_max": round(max((p[1] for p in inside), default=0), 2),
            "jvm_pause_ms_total": round(sum(p[1] for p in inside), 2)}


def measure(target: Target, images: list[bytes], seconds: float, rate: float = RATE) -> tuple[list, float]:
    records: list = []
    offset = time.time() - time.perf_counter()  # perf_counter -> wall clock, for the JVM's log
    run_open(target, images, rate, seconds, WARMUP_S, progress=False, records=records)
    return records, offset


def slo_runs(runs: int = 5, slo_ms: float = 50.0, write: bool = True) -> dict:
    BENCH.mkdir(parents=True, exist_ok=True)
    images = load_images(photos())
    props = server_config.read_properties(repo.SERVER_CONFIG)
    ours = Service("slo", "torchserve", repo.DEFAULT_MODEL, ours_mar())
    jvm_log = ours.workdir / "jvm.log"
    ours.overrides = {"vmargs": f"{props['vmargs']} -Xlog:gc,safepoint:file={jvm_log}:utctime"}
    floor = Service("slo-floor", "floor", "floor")
    res: dict = {"slo_ms": slo_ms, "rate": RATE, "window_s": WINDOW_S,
                 "load_before": os.getloadavg()}
    try:
        start(floor)
        rec, _ = measure(Target(floor.url), images, WINDOW_S)
        res["floor"] = window_stats(rec, 0.0, slo_ms, [])
        log(f"floor: {res['floor']['latency_ms']}")
        stop([floor])
        start(ours)
        target = Target.from_workdir(ours.workdir, ours.model)
        res["runs"] = []
        for i in range(runs):
            rec, offset = measure(target, images, WINDOW_S)
            w = window_stats(rec, offset, slo_ms, jvm_pauses(jvm_log))
            res["runs"].append(w)
            log(f"run {i + 1}/{runs}: {w['latency_ms']}, over SLO {w['over_slo']} "
                f"({w['over_slo_overlapping_jvm_pause']} overlapping a JVM pause; {w['jvm_pauses']} pauses, "
                f"max {w['jvm_pause_ms_max']} ms)")
        time.sleep(30)  # idle: what the first requests after silence cost
        rec, _ = run_after_idle(target, images)
        res["after_idle_ms"] = rec
        log(f"after 30 s idle, 10 requests at 1 rps: {rec}")
    finally:
        stop([floor, ours])
    res["load_after"] = os.getloadavg()
    (BENCH / "slo.json").write_text(json.dumps(res, indent=1))
    text = render(res)
    print(text)
    if write:
        markdown.write_section("slo", text, repo.ROOT / "BENCHMARKS.md")
    return res


def run_after_idle(target: Target, images: list[bytes]) -> tuple[dict, None]:
    records: list = []
    run_open(target, images, 1.0, 10, 0, progress=False, records=records)
    lat = [(end - intended) * 1000 for intended, _, end, _ in records]
    return {"first": round(lat[0], 2), **stats.summary(lat, ("p50", "max"))}, None


def worst_seconds(w: dict) -> str:
    return "; ".join(f"{x['at']}: {x['over_slo']}, {x['max_ms']}" for x in w.get("worst_seconds", []))


def render(res: dict) -> str:
    runs = res["runs"]
    met = sum(1 for w in runs if w["latency_ms"]["p99"] < res["slo_ms"] and not w["errors"])
    lines = [f"{len(runs)} runs of {res['window_s']:g} s at {res['rate']:g} rps on one server (after "
             f"{WARMUP_S:g} s of warm-up each), load average {res['load_before'][0]:.2f} before, "
             f"{res['load_after'][0]:.2f} after: **p99 < {res['slo_ms']:g} ms in {met} of {len(runs)}**.", "",
             "| Window | p50 | p99 | p99.9 | max (ms) | errors | requests over the SLO "
             "| of them during a JVM pause | JVM pauses (max, total ms) "
             "| worst seconds (UTC: over, max ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, w in [("generator floor (floor.py, no model)", res["floor"])] + [
            (f"run {i}", w) for i, w in enumerate(runs, 1)]:
        lat = w["latency_ms"]
        jvm = (f"{w['over_slo_overlapping_jvm_pause']} | {w['jvm_pauses']} ({w['jvm_pause_ms_max']}, "
               f"{w['jvm_pause_ms_total']})") if name.startswith("run") else " | "
        lines.append(f"| {name} | {lat['p50']} | {lat['p99']} | {lat['p99.9']} | {lat['max']} | "
                     f"{w['errors']} | {w['over_slo']} | {jvm} | {worst_seconds(w)} |")
    idle = res["after_idle_ms"]
    lines += ["", f"After 30 s idle, 10 requests at 1 rps: first {idle['first']} ms, p50 {idle['p50']} ms, "
              f"max {idle['max']} ms."]
    return "\n".join(lines)
