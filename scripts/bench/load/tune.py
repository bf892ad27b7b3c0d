"""The batching peers tuned honestly before they are compared: for each, a small grid of batch
size x batching delay, every setting started fresh and measured saturated (closed loop x8) and
at 50 rps; the setting kept is the one with the highest saturated throughput whose p99 at 50 rps
met the SLO (else the lowest p99). Both peers use workers (or model instances) x ORT threads =
the 2 cores, as ours does; ours is tuned by `levers` (batch 4, 1 ms).

    python -m scripts.bench.load.main tune    # about 10 min; build/bench/tune.json, a table
"""

from __future__ import annotations

import json

from scripts import repo
from scripts.bench.load.artifacts import ours_mar, unpack
from scripts.bench.load.services import Service, at_rate, saturate, start, stop
from scripts.bench.workspace import BENCH, Profile, log

# The settings `make bench` runs, chosen by this grid (BENCHMARKS.md has the run).
TRITON_KNOBS = {"instances": 2, "max_batch": 4, "delay_us": 1000}
# Our archive as a Triton repository: the same grid, stub processes instead of threads. Until a
# `tune` run chooses otherwise, the archive's own settings as TRITON_KNOBS has them.
TRITON_REPO_KNOBS = {"instances": 2, "max_batch": 4, "delay_us": 1000}
# BentoML has no fixed batching wait: it learns one, and max_latency_ms is a deadline past which
# a request is refused with 503 (batching_peer.py).
BENTOML_KNOBS = {"workers": 2, "max_batch": 8, "max_latency_ms": 100.0}
TRITON_GRID = [{"max_batch": b, "delay_us": d} for b, d in ((4, 1000), (4, 5000), (8, 2000), (8, 10000))]
GRID = {
    "triton": ("triton", TRITON_KNOBS, TRITON_GRID),
    "triton_repo": ("triton_repo", TRITON_REPO_KNOBS, TRITON_GRID),
    "bentoml": ("batching", BENTOML_KNOBS, [{"max_batch": b, "max_latency_ms": d}
                                            for b, d in ((4, 100.0), (4, 1000.0), (8, 100.0), (8, 1000.0))]),
}


def tune(profile: Profile, slo_ms: float = 50.0) -> dict:
    mar = ours_mar()
    model_dir = unpack(mar)
    out: dict = {}
    for label, (kind, base, grid) in GRID.items():
        rows = []
        for knobs in grid:
            svc = Service(f"tune-{label}", kind, repo.DEFAULT_MODEL, mar, model_dir=model_dir,
                          protocol="v2" if kind.startswith("triton") else "raw", knobs={**base, **knobs})
            try:
                start(svc)
                sat = saturate(svc, 10)
                at50 = at_rate(svc, 50, 15, "50rps", warmup=5)
            finally:
                stop([svc])
            rows.append({"knobs": knobs, "sat_rps": sat["achieved_rps"], "p99_50": at50["latency_ms"]["p99"],
                         "p999_50": at50["latency_ms"]["p99.9"], "errors_50": at50["errors"]})
        ok = [r for r in rows if r["errors_50"] == 0 and (r["p99_50"] or 1e9) < slo_ms]
        best = (max(ok, key=lambda r: r["sat_rps"]) if ok
                else min(rows, key=lambda r: r["p99_50"] or 1e9))
        out[label] = {"rows": rows, "best": best["knobs"]}
        log(f"tune {label}: best {best['knobs']}")
    (BENCH / "tune.json").write_text(json.dumps(out, indent=1))
    print(markdown(out))
    return out


def markdown(out: dict) -> str:
    lines = ["| Peer | Setting | Saturated rps | p99 / p99.9 at 50 rps (ms) | Errors at 50 rps | Kept |",
             "|---|---|---|---|---|---|"]
    for label, t in out.items():
        for r in t["rows"]:
            kept = "**kept**" if r["knobs"] == t["best"] else ""
            setting = ", ".join(f"{k} {v}" for k, v in r["knobs"].items())
            lines.append(f"| {label} | {setting} | {r['sat_rps']} | {r['p99_50']} / {r['p999_50']} | "
                         f"{r['errors_50']} | {kept} |")
    return "\n".join(lines)
