"""Reliability runs: READY means ready, overload, and a soak (recorded in RELIABILITY.md).

    python -m scripts.bench.scenarios.reliability ready --starts 5 --restarts 5   # about 8 min
    python -m scripts.bench.scenarios.reliability overload                        # about 3 min
    python -m scripts.bench.scenarios.reliability soak --minutes 30 --key-minutes 5
    python -m scripts.bench.scenarios.reliability stall                           # about 1 min

ready     p99 of the first 20 s at 50 rps right after the server reports READY (what `make
          serve` waits for), over N fresh starts as shipped and N with a lever (--lever); and
          of the 20 s at 50 rps right after a worker killed with SIGKILL under that load is
          READY again, over N restarts.
overload  the saturated rate (closed loop), then 2x that rate open loop for 60 s: every request
          answered (200, or a fast 503 with a JSON body once the queue is full), no worker
          lost, and the p99 of each 5 s window at 20 rps after the load drops.
soak      a constant rate for many minutes with short-lived keys: per minute p99, errors, worker
          RSS, open file descriptors and threads, then the slopes of RSS and descriptors.
stall     the server's descriptors and its clients' connections at 50 rps, before and after the
          workers stall for 2 s (SIGSTOP, SIGCONT): what a latency spike does to the descriptor
          count (the load generator starts a sender thread, and a connection, per request waiting).

Each writes its table (and the soak its plot) into RELIABILITY.md, raw JSON into build/bench/.
Percentiles and medians are scripts/bench/stats.py's; the load is scripts.bench.load.loadtest's.
Exit status 1 when a target is missed (p99 >= SLO, an error, a lost worker), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from scripts import repo
from scripts.bench import stats
from scripts.bench.load.loadtest import Sender, Target, load_images, run_closed, run_open, summarize
from scripts.bench.markdown import write_section
from scripts.bench.workspace import BENCH, log, photos
from scripts.ops import serve
from scripts.ops.server_config import read_properties

DOC = repo.ROOT / "RELIABILITY.md"
PLOT = repo.ROOT / "docs" / "soak.png"
MODEL = repo.DEFAULT_MODEL
SLO_MS = 50.0


def start(label: str, overrides: dict | None = None, warm: bool = True) -> serve.Server:
    workdir = BENCH / "reliability" / label
    shutil.rmtree(workdir, ignore_errors=True)
    server = serve.start(workdir, models=f"{MODEL}={MODEL}.mar", ports=serve.free_ports(),
                         overrides=overrides)
    try:
        serve.wait_ready(server, MODEL, min_ready=2, timeout=240, progress=False, warm=warm)
    except BaseException:
        serve.stop(workdir, grace=5)
        raise
    return server


def target(server: serve.Server) -> Target:
    return Target.from_workdir(server.workdir, MODEL, timeout=10.0)


def worker_pids(server: serve.Server) -> list[int]:
    return sorted(int(w["pid"]) for w in server.client.workers(MODEL) if w.get("pid"))


def window(records: list, t0: float, lo: float, hi: float, rate: float | None) -> dict:
    """Statistics of the requests meant to leave between lo and hi seconds after t0."""
    return summarize(records, (t0 + lo, t0 + hi), rate)


def p99_by_4s(records: list, t0: float, seconds: float) -> list[float]:
    """p99 of each 4 s from t0 (at 50 rps): whether slow requests come first or all along."""
    return [window(records, t0, k, k + 4, 50)["latency_ms"]["p99"] for k in range(0, int(seconds), 4)]


# ---------------------------------------------------------------- ready

# The JVM's optimising compiler (C2) compiles the frontend's hot paths in the first minute and
# takes CPU from the workers on a small machine; config.properties therefore ships C1 alone
# (`vmargs`). The lever `jvm-default` removes that flag: the JVM's default tiered compilation.
C1_ONLY = "-XX:TieredStopAtLevel=1"
# `serve start` announces the server after 5 s of predictions through the frontend (warm-up);
# the lever `no-warm-up` announces it as soon as the workers are READY.
LEVERS = {
    "jvm-default": "JVM default JIT (C1 + C2)",
    "no-warm-up": "workers READY, no warm-up",
}


def lever_start(label: str, lever: str | None) -> serve.Server:
    """A fresh server as shipped (lever None) or with the lever applied."""
    if lever == "jvm-default":
        shipped = read_properties(repo.SERVER_CONFIG).get("vmargs", "")
        return start(label, overrides={"vmargs": shipped.replace(C1_ONLY, "").strip()})
    return start(label, warm=lever != "no-warm-up")


def jvm_cpu(server: serve.Server) -> dict[str, float]:
    """CPU seconds so far of the frontend's JVM, by thread kind (JIT compilers, Netty, ...)."""
    java = serve._group(server.pgid, "java")
    out: dict[str, float] = {}
    if not java:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{java[0]}/task").iterdir():
        try:
            kind = (task / "comm").read_text().strip().rstrip("0123456789#").strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def fresh_starts(n: int, seconds: float, images: list[bytes], lever: str) -> list[dict]:
    """n fresh starts as shipped (announced when the workers are READY) and n with the lever,
    interleaved so machine noise hits both alike; with the JVM's CPU (JIT compilers apart)
    during each window."""
    out = []
    for i in range(2 * n):
        applied = lever if i % 2 == 0 else None
        server = lever_start(f"start{i}", applied)
        try:  # no pause: the load starts the moment the server is announced
            before, records = jvm_cpu(server), []
            t0 = time.perf_counter()
            rep = run_open(target(server), images, 50, seconds, warmup=0, progress=False, records=records)
            after = jvm_cpu(server)
            # The same server's next window: warm, as a paired control for the first one.
            warm = run_open(target(server), images, 50, seconds, warmup=0, progress=False)
        finally:
            serve.stop(server.workdir, grace=10)
        spent = {k: after[k] - before.get(k, 0.0) for k in after}
        rep["lever"] = applied
        rep["warm_p99_ms"] = warm["latency_ms"]["p99"]
        # p99 per 4 s: whether the slow requests are the first ones or spread over the window
        rep["p99_by_4s"] = p99_by_4s(records, t0, seconds)
        rep["jvm_cpu_s"] = round(sum(spent.values()), 2)
        rep["jit_cpu_s"] = round(sum(v for k, v in spent.items() if "Compiler" in k), 2)
        log(f"fresh start {i + 1}/{2 * n} ({LEVERS[applied] if applied else 'shipped'}): "
            f"p99 {rep['latency_ms']['p99']} ms, errors {rep['errors']}, JVM CPU {rep['jvm_cpu_s']} s "
            f"(JIT {rep['jit_cpu_s']} s); p99 per 4 s {rep['p99_by_4s']}; next {seconds:g} s (warm) "
            f"p99 {rep['warm_p99_ms']} ms")
        out.append(rep)
    return out


def worker_restarts(n: int, seconds: float, images: list[bytes], workers: int = 2) -> list[dict]:
    """n times: 10 s at 50 rps, SIGKILL to one worker, then the window after its replacement is
    READY. `workers` other than the shipped 2 are set through the management API (the spare
    capacity lever: with 3, two still serve while one restarts)."""
    server = start("restarts")
    out = []
    try:
        if workers != 2:
            server.client.scale(MODEL, workers, workers)
        for i in range(n):
            records: list = []
            t0 = time.perf_counter() + 0.05
            total = 10 + 60 + seconds  # 10 s steady, the kill, up to 60 s to READY, the window
            load = threading.Thread(target=run_open, args=(target(server), images, 50, total),
                                    kwargs={"warmup": 0, "progress": False, "records": records})
            load.start()
            time.sleep(10)
            victim = worker_pids(server)[0]
            os.kill(victim, signal.SIGKILL)
            ready_at = wait_replaced(server, victim, workers, timeout=60) - t0
            load.join()
            after = window(records, t0, ready_at, ready_at + seconds, 50)
            # Requests the killed worker held were sent up to a batch's time before the kill.
            lost = [r for r in records if r[3] != "200" and t0 + 9 <= r[0] < t0 + ready_at]
            out.append({"ready_after_kill_s": round(ready_at - 10, 1), "window": after, "workers": workers,
                        "before_kill_p99_ms": window(records, t0, 1, 9, 50)["latency_ms"]["p99"],
                        "p99_by_4s": p99_by_4s(records, t0 + ready_at, seconds),
                        "failed_during_restart": len(lost),
                        "failed_statuses": sorted({r[3] for r in lost})})
            log(f"worker restart {i + 1}/{n}: READY {ready_at - 10:.1f} s after the kill; p99 of the "
                f"next {seconds:g} s {after['latency_ms']['p99']} ms, errors {after['errors']}; "
                f"{len(lost)} failed while it restarted")
            time.sleep(3)
    finally:
        serve.stop(server.workdir, grace=10)
    return out


def wait_replaced(server: serve.Server, victim: int, expected: int, timeout: float) -> float:
    """perf_counter time at which `expected` workers are READY again, none the killed one."""
    deadline = time.perf_counter() + timeout
    workers: list = []
    while time.perf_counter() < deadline:
        try:
            workers = server.client.workers(MODEL)
            ready = [w for w in workers if w.get("status") == "READY" and int(w.get("pid") or 0) != victim]
            if len(ready) >= expected:
                return time.perf_counter()
        except Exception:  # the management API may be busy: poll again
            pass
        time.sleep(0.2)
    states = [(w.get("id"), w.get("pid"), w.get("status")) for w in workers]
    raise TimeoutError(f"the killed worker {victim} was not replaced within {timeout:.0f} s: {states}")


def ready_markdown(starts: list[dict], restarts: list[dict], seconds: float) -> str:
    lines = [f"p99 of the first {seconds:g} s at 50 rps (open loop, load from the same 2 cores), "
             "from the moment the server is announced ready, or a killed worker is READY again; "
             "the frontend JVM's CPU in that window, its JIT compilers apart. Control: the same "
             f"server's next {seconds:g} s (warm) after a start; the 8 s before the kill for a "
             "restart.", "",
             "| Run | Ready when | p99 (ms) | p50 (ms) | errors | JVM CPU s (JIT) "
             "| failed while restarting | control p99 (ms) | p99 per 4 s (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, rep in enumerate(starts, 1):
        lat = rep["latency_ms"]
        when = LEVERS.get(rep["lever"], rep["lever"]) if rep["lever"] else "READY after warm-up (shipped)"
        lines.append(f"| start {i} | {when} | {lat['p99']} | {lat['p50']} | {rep['errors']} | "
                     f"{rep['jvm_cpu_s']} ({rep['jit_cpu_s']}) | | {rep.get('warm_p99_ms', '')} | "
                     f"{', '.join(str(p) for p in rep.get('p99_by_4s', []))} |")
    for i, r in enumerate(restarts, 1):
        lat = r["window"]["latency_ms"]
        spare = f", {r['workers']} workers" if r.get("workers", 2) != 2 else ""
        when = f"killed worker READY again ({r['ready_after_kill_s']} s{spare})"
        lines.append(f"| worker restart {i} | {when} | "
                     f"{lat['p99']} | {lat['p50']} | {r['window']['errors']} | | "
                     f"{r['failed_during_restart']} {' '.join(r['failed_statuses'])} | "
                     f"{r.get('before_kill_p99_ms', '')} | {', '.join(map(str, r.get('p99_by_4s', [])))} |")
    lines.append("")
    groups = [("fresh starts as shipped", [s for s in starts if not s["lever"]])]
    groups += [(f"fresh starts with {LEVERS[lever]}", [s for s in starts if s["lever"] == lever])
               for lever in LEVERS]
    groups.append(("worker restarts", [r["window"] for r in restarts]))
    for label, group in groups:
        p99s = [g["latency_ms"]["p99"] for g in group]
        if p99s:
            jit = [g["jit_cpu_s"] for g in group if "jit_cpu_s" in g]
            warm = [g["warm_p99_ms"] for g in group if "warm_p99_ms" in g]
            lines.append(f"- {label}: median p99 {stats.median(p99s):.1f} ms, worst {max(p99s):.1f} ms "
                         f"({sum(p < SLO_MS for p in p99s)} of {len(p99s)} under {SLO_MS:g} ms)"
                         + (f"; the next {seconds:g} s, warm: median p99 {stats.median(warm):.1f} ms"
                            if warm else "")
                         + (f"; JIT CPU median {stats.median(jit):.2f} s" if jit else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- overload

def overload(seconds: float, images: list[bytes]) -> dict:
    server = start("overload")
    try:
        before = worker_pids(server)
        sat = run_closed(target(server), images, 8, 10, warmup=3, progress=False)["achieved_rps"]
        rate = round(2 * sat)
        records: list = []
        t0 = time.perf_counter()
        run_open(target(server), images, rate, seconds, warmup=0, concurrency=512, progress=False,
                 records=records)
        after: list = []
        t1 = time.perf_counter()
        run_open(target(server), images, 20, 20, warmup=0, progress=False, records=after)
        body = Sender(target(server))
        refusal = _refusal_body(body, images[0], rate)
        pids_after = worker_pids(server)
    finally:
        serve.stop(server.workdir, grace=10)
    over = window(records, t0, 0, seconds, rate)
    lat_by_status: dict[str, list[float]] = {}
    for intended, _, end, status in records:
        lat_by_status.setdefault(status, []).append((end - intended) * 1000)
    recovery = [window(after, t1, k, k + 5, 20) for k in range(0, 20, 5)]
    return {"saturated_rps": sat, "offered_rps": rate, "seconds": seconds, "overload": over,
            "latency_ms_by_status": {s: {"count": len(v), **stats.summary(v, ("p50", "p99"), digits=1)}
                                     for s, v in lat_by_status.items()},
            "refusal_body": refusal, "recovery_5s_windows": recovery,
            "workers_before": before, "workers_after": pids_after}


def _refusal_body(sender: Sender, image: bytes, rate: float) -> str:
    """The body of one refusal under a burst (the queue full), to show what a client gets."""
    import http.client

    conns = []
    for _ in range(150):
        conn = http.client.HTTPConnection(sender.target.host, sender.target.port, timeout=30)
        conn.request("POST", sender.target.path, body=image, headers={
            "Content-Type": "application/octet-stream", **sender.target.keys.headers("inference")})
        conns.append(conn)
    found = ""
    for conn in conns:
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        if resp.status == 503 and not found:
            found = data
        conn.close()
    return found


def overload_markdown(res: dict) -> str:
    over, by = res["overload"], res["latency_ms_by_status"]
    rows = [f"Saturated rate (closed loop, 8 clients): {res['saturated_rps']} rps; offered "
            f"{res['offered_rps']} rps open loop for {res['seconds']:g} s (2x).", "",
            "| Status | Count | p50 (ms) | p99 (ms) |", "|---|---|---|---|"]
    rows += [f"| {s} | {v['count']} | {v['p50']} | {v['p99']} |" for s, v in sorted(by.items())]
    rows += ["", f"Answered 200 at {over['achieved_rps']} rps during the overload; unanswered or "
             f"failed other than 503: {sum(v['count'] for s, v in by.items() if s not in ('200', '503'))}.",
             f"Workers before / after: {res['workers_before']} / {res['workers_after']}.",
             f"A refusal's body: `{res['refusal_body'].strip()[:200]}`", "",
             "After the load drops, 20 rps, p99 per 5 s window (ms): "
             + ", ".join(str(w["latency_ms"]["p99"]) for w in res["recovery_5s_windows"]) + "."]
    return "\n".join(rows)


# ---------------------------------------------------------------- soak

def soak(minutes: float, key_minutes: float, rate: float, images: list[bytes]) -> dict:
    server = start("soak", overrides={"token_expiration_min": str(key_minutes)})
    records: list = []
    samples = []
    try:
        t0 = time.perf_counter() + 0.05
        load = threading.Thread(target=run_open, args=(target(server), images, rate, minutes * 60),
                                kwargs={"warmup": 0, "progress": False, "records": records})
        load.start()
        for minute in range(1, int(minutes) + 1):
            time.sleep(max(0.0, t0 + minute * 60 - time.perf_counter()))
            samples.append({"minute": minute, **process_sample(server),
                            **_minute_stats(records, t0, minute, rate)})
            s = samples[-1]
            log(f"soak minute {minute}: p99 {s['p99_ms']} ms, errors {s['errors']}, worker RSS "
                f"{s['worker_rss_mb']} MB, fds {s['fds']} ({s['client_connections']} client connections), "
                f"threads {s['threads']}")
        load.join(timeout=120)
    finally:
        serve.stop(server.workdir, grace=10)
    return {"minutes": minutes, "key_minutes": key_minutes, "rate": rate, "samples": samples,
            "total": window(records, t0, 0, minutes * 60, rate)}


def _minute_stats(records: list, t0: float, minute: int, rate: float) -> dict:
    w = window(records, t0, (minute - 1) * 60, minute * 60, rate)
    return {"p99_ms": w["latency_ms"]["p99"], "requests": w["requests"], "errors": w["errors"]}


def process_sample(server: serve.Server) -> dict:
    """Worker RSS (sum), open descriptors and threads of the whole server (Java + workers), and
    how many of those descriptors are clients' connections to the inference port: the load
    generator opens one per sender thread, and a latency spike makes it start more threads."""
    procs = [psutil.Process(pid) for pid in serve._group(server.pgid)]
    workers = [p for p in procs if p.pid in set(worker_pids(server))]
    port = int(target(server).port)
    fds = threads = clients = 0
    for p in procs:
        try:
            fds += p.num_fds()
            threads += p.num_threads()
            clients += sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
                           for c in p.net_connections(kind="tcp"))
        except psutil.Error:
            continue
    rss = sum(p.memory_info().rss for p in workers) / 2**20
    return {"worker_rss_mb": round(rss, 1), "fds": fds, "threads": threads, "client_connections": clients}


def stall(images: list[bytes], seconds: float = 2.0) -> dict:
    """Descriptors before a stall of every worker, and after the backlog it caused has drained."""
    server = start("stall")
    try:
        load = threading.Thread(target=run_open, args=(target(server), images, 50, 40),
                                kwargs={"warmup": 0, "progress": False})
        load.start()
        time.sleep(12)
        before = process_sample(server)
        pids = worker_pids(server)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        time.sleep(12)
        after = process_sample(server)
        time.sleep(10)
        later = process_sample(server)
        load.join(timeout=60)
    finally:
        serve.stop(server.workdir, grace=10)
    return {"stall_s": seconds, "before": before, "after": after, "ten_s_later": later}


def stall_markdown(res: dict) -> str:
    rows = ["| | server fds | of which client connections | threads |", "|---|---|---|---|"]
    for label, key in (("before the stall", "before"), ("12 s after it", "after"),
                       ("22 s after it", "ten_s_later")):
        r = res[key]
        rows.append(f"| {label} | {r['fds']} | {r['client_connections']} | {r['threads']} |")
    return (f"50 rps open loop; every worker stopped for {res['stall_s']:g} s (SIGSTOP, then SIGCONT) "
            "12 s into the load.\n\n" + "\n".join(rows))


def slope(samples: list[dict], key: str) -> float:
    """Least-squares slope per minute over the second half (after warm-up growth)."""
    half = samples[len(samples) // 2:]
    if len(half) < 2:
        return 0.0
    x = np.array([s["minute"] for s in half], dtype=float)
    y = np.array([s[key] for s in half], dtype=float)
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def soak_markdown(res: dict, plot: Path | None) -> str:
    s = res["samples"]
    total = res["total"]
    lines = [f"{res['minutes']:g} min at {res['rate']:g} rps, keys expiring every {res['key_minutes']:g} min "
             f"(renewed by the server's key renewer); one row per minute.", "",
             "| Minute | requests | errors | p99 (ms) | worker RSS (MB) | fds | of which client connections "
             "| threads |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['minute']} | {r['requests']} | {r['errors']} | {r['p99_ms']} | {r['worker_rss_mb']} | "
              f"{r['fds']} | {r.get('client_connections', '')} | {r['threads']} |" for r in s]
    others = ([{"fds": r["fds"] - r["client_connections"]} for r in s]
              if all("client_connections" in r for r in s) else None)
    lines += ["", f"Verdict: {total['errors']} errors of {total['requests']}; p99 over the whole run "
              f"{total['latency_ms']['p99']} ms; slopes over the second half: worker RSS "
              f"{slope(s, 'worker_rss_mb')} MB/min, fds {slope(s, 'fds')} /min"
              + (f" (fds other than client connections {slope(others, 'fds')} /min)" if others else "")
              + f", threads {slope(s, 'threads')} /min."]
    if plot:
        lines += ["", f"![soak]({plot.relative_to(repo.ROOT)})"]
    return "\n".join(lines)


def plot_soak(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["samples"]
    minutes = [r["minute"] for r in s]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(minutes, [r["p99_ms"] for r in s], marker="o")
    axes[0].axhline(SLO_MS, color="red", linestyle="--", label="SLO")
    axes[0].set_ylabel("p99 (ms)")
    axes[0].legend()
    axes[1].plot(minutes, [r["worker_rss_mb"] for r in s], marker="o")
    axes[1].set_ylabel("worker RSS (MB)")
    axes[2].plot(minutes, [r["fds"] for r in s], marker="o", label="open fds")
    axes[2].plot(minutes, [r["threads"] for r in s], marker="s", label="threads")
    axes[2].set_ylabel("count")
    axes[2].set_xlabel("minute")
    axes[2].legend()
    fig.suptitle(f"Soak: {res['rate']:g} rps, keys renewed every {res['key_minutes'] / 2:g} min")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", choices=["ready", "overload", "soak", "stall"])
    parser.add_argument("--starts", type=int, default=5, help="ready: fresh starts")
    parser.add_argument("--restarts", type=int, default=5, help="ready: worker restarts")
    parser.add_argument("--workers", type=int, default=2,
                        help="ready: workers during the restarts (shipped: 2; 3 = one spare)")
    parser.add_argument("--window", type=float, default=20.0, help="ready: seconds measured after READY")
    parser.add_argument("--lever", choices=sorted(LEVERS), default="jvm-default",
                        help="ready: what the fresh starts are A/B'd against (jvm-default: the "
                             "JVM's own tiered JIT instead of the shipped C1 only; no-warm-up: READY "
                             "as soon as the workers are, without serve's 5 s of predictions)")
    parser.add_argument("--seconds", type=float, default=60.0, help="overload: seconds at 2x saturation")
    parser.add_argument("--minutes", type=float, default=30.0, help="soak: duration")
    parser.add_argument("--key-minutes", type=float, default=5.0, help="soak: token_expiration_min")
    parser.add_argument("--rate", type=float, default=50.0, help="soak: requests per second")
    parser.add_argument("--no-write", action="store_true", help="do not touch RELIABILITY.md")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    images = load_images(photos())
    out = BENCH / f"reliability_{args.run}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(argv if argv is not None else sys.argv[1:])
    stamp = (f"Run {time.strftime('%Y-%m-%d %H:%M')}, command "
             f"`python -m scripts.bench.scenarios.reliability {command}`.")
    if args.run == "ready":
        starts = fresh_starts(args.starts, args.window, images, args.lever)
        restarts = worker_restarts(args.restarts, args.window, images, args.workers)
        res = {"starts": starts, "restarts": restarts}
        text = ready_markdown(starts, restarts, args.window)
        shipped = [s for s in starts if not s["lever"]] + [r["window"] for r in restarts]
        ok = all(s["latency_ms"]["p99"] < SLO_MS and s["errors"] == 0 for s in shipped)
    elif args.run == "stall":
        res = stall(images)
        text = stall_markdown(res)
        grew = res["after"]["fds"] - res["before"]["fds"]
        ok = grew == res["after"]["client_connections"] - res["before"]["client_connections"]
    elif args.run == "overload":
        res = overload(args.seconds, images)
        text = overload_markdown(res)
        bad = sum(v["count"] for s, v in res["latency_ms_by_status"].items() if s not in ("200", "503"))
        ok = bad == 0 and res["workers_before"] == res["workers_after"]
    else:
        res = soak(args.minutes, args.key_minutes, args.rate, images)
        plot = plot_soak(res, PLOT)
        text = soak_markdown(res, plot)
        ok = res["total"]["errors"] == 0
    out.write_text(json.dumps(res, indent=1))
    print(text)
    if not args.no_write:
        write_section(args.run, f"{stamp}\n\n{text}", DOC)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
