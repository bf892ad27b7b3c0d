"""Two replicas behind the balancer at twice their saturated rate: busy must not read as dead.

    python -m scripts.bench.scenarios.overload_pair --duration 60       # the recorded run
    python -m scripts.bench.scenarios.overload_pair --duration 10       # a short trial

Starts two replicas (2 workers each, management on their private sockets) and HAProxy with
config/haproxy.cfg in front; measures the pair's saturated rate through the edge (closed loop),
then offers twice that, open loop, for --duration s, then --after s at half the saturated rate.
Prints: whether both replicas stayed UP throughout (HAProxy's stats socket sampled every 100 ms),
connection errors, the accepted requests' p50/p99/p99.9 and rate, the 503s' count and p99, and
the p99 once the load dropped. Exit 1 when a replica left UP, a connection failed, an accepted
request's p99 is over the edge's budget plus --margin-ms, or an answer was neither 200 nor 503.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from scripts import repo
from scripts.bench import stats
from scripts.bench.load.loadtest import Target, run_closed, run_open
from scripts.bench.scenarios import finish
from scripts.ops import balancer as lb
from scripts.ops import serve
from scripts.ops.torchserve_http import sample_jpeg

# config/haproxy.cfg: `timeout queue 250ms`, the most an accepted request waits at the edge.
QUEUE_BUDGET_MS = 250.0
# On top of it: the requests ahead at the replica (maxconn 4: at 30 rps per replica about
# 130 ms) and a shared 2-core machine's scheduling, the load generator's own lag included
# (latency counts from the intended send time). Measured here: accepted p99 567-637 ms.
DEFAULT_MARGIN_MS = 500.0
SAMPLE_S = 0.1
# One load generator is one client address, and the edge allows one address 50 MB of requests
# per 10 s (then 429): photos of 50-100 kB at 150-300 rps would be over it. A 320 px JPEG
# (6 kB) keeps the whole run under it; the saturated rate is measured with the same image.
IMAGE_PX = 320
# Senders (each its own keep-alive connection): under the 64 connections the edge admits from one
# address (more are reset at connect). A request waiting for a free sender counts that wait in
# its latency (from its intended send time), so the cap can only make the figures worse.
CONNECTIONS = 60


def images() -> list[bytes]:
    return [sample_jpeg(IMAGE_PX)]


class EdgeKey:
    """The balancer's bearer key where the load generator expects a key file's."""

    def __init__(self, key: str) -> None:
        self.key = key

    def headers(self, api: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def edge_target(balancer: lb.Balancer, model: str = repo.DEFAULT_MODEL, timeout: float = 10.0) -> Target:
    target = Target(f"{balancer.url}/predictions/{model}", timeout=timeout)
    target.keys = EdgeKey(balancer.key)
    return target


class StateSampler(threading.Thread):
    """Samples every replica's state from HAProxy's stats socket; keeps each non-UP sight."""

    def __init__(self, balancer: lb.Balancer) -> None:
        super().__init__(daemon=True)
        self.balancer, self.samples, self.not_up = balancer, 0, []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            with contextlib.suppress(OSError, KeyError):
                states = self.balancer.states()
                self.samples += 1
                self.not_up += [(time.perf_counter(), n, s) for n, s in states.items() if s != "UP"]


def figures(records: list, window: tuple[float, float], after: tuple[float, float]) -> dict:
    """The overload window's outcome by kind, and the p99 after it (ms from intended send)."""
    def ms(rows: list) -> list[float]:
        return [(end - intended) * 1000 for intended, _, end, _ in rows]

    during = [r for r in records if window[0] <= r[0] < window[1]]
    ok = [r for r in during if r[3] == "200"]
    refused = [r for r in during if r[3] == "503"]
    other = [r for r in during if r[3] not in ("200", "503")]
    later = [r for r in records if after[0] <= r[0] < after[1]]
    return {
        "requests": len(during),
        "accepted": len(ok),
        "accepted_rps": round(len(ok) / (window[1] - window[0]), 2),
        "accepted_ms": stats.summary(ms(ok), ("p50", "p99", "p99.9", "max")),
        "refused_503": len(refused),
        "refused_ms": stats.summary(ms(refused), ("p50", "p99", "max")),
        "connection_errors": sum(not r[3].isdigit() for r in other),
        "other_statuses": sorted({r[3] for r in other}),
        "after_requests": len(later),
        "after_errors": sum(r[3] != "200" for r in later),
        "after_ms": stats.summary(ms(later), ("p50", "p99", "max")),
    }


def saturated_rps(balancer: lb.Balancer, seconds: float = 8.0, clients: int = 8,
                  bodies: list[bytes] | None = None) -> float:
    """The pair's throughput through the edge, back-to-back senders (maxconn 4 x 2 in flight)."""
    report = run_closed(edge_target(balancer), bodies or images(), clients, seconds, warmup=2.0,
                        progress=False)
    return report["achieved_rps"]


def run(balancer: lb.Balancer, rate: float, duration: float, after: float, after_rate: float,
        bodies: list[bytes] | None = None, progress: bool = True) -> dict:
    """`rate` rps open loop for `duration` s then `after_rate` for `after` s; the figures."""
    bodies = bodies or images()
    target = edge_target(balancer)
    records: list = []
    marks: list[float] = []  # when the overload began, when it ended, when the run ended
    sampler = StateSampler(balancer)
    sampler.start()
    try:
        for rps, seconds in ((rate, duration), (after_rate, after)):
            marks.append(time.perf_counter())
            run_open(target, bodies, rps, seconds, warmup=0.0, concurrency=CONNECTIONS,
                     progress=progress, records=records)
        marks.append(time.perf_counter())
    finally:
        sampler.stopping.set()
        sampler.join(timeout=5)
    t0, t1, t2 = marks
    out = figures(records, (t0, t1), (t1, t2))
    out.update(offered_rps=rate, duration_s=duration, after_rps=after_rate, after_s=after,
               state_samples=sampler.samples, not_up_seen=len(sampler.not_up),
               not_up_first=[(round(t - t0, 2), n, s) for t, n, s in sampler.not_up[:5]],
               edge_retries=sum(int(r["wretr"] or 0) for r in balancer.servers().values()))
    return out


def verdict(out: dict, margin_ms: float) -> list[str]:
    """What went wrong, one line each (empty: passed)."""
    problems = []
    if out["not_up_seen"] or not out["state_samples"]:
        problems.append(f"a replica left UP: {out['not_up_first']}")
    if out["connection_errors"] or out["other_statuses"]:
        problems.append(f"answers other than 200/503: {out['other_statuses']}")
    p99 = out["accepted_ms"]["p99"]
    if p99 is None or p99 > QUEUE_BUDGET_MS + margin_ms:
        problems.append(f"accepted p99 {p99} ms over {QUEUE_BUDGET_MS:g} + {margin_ms:g} ms")
    return problems


@contextlib.contextmanager
def pair(root: Path, model_store: Path = repo.MODEL_STORE) -> Iterator[lb.Balancer]:
    """Two replicas (start_replica, READY) and the balancer, all stopped when the block ends."""
    servers: list[serve.Server] = []
    balancer = None
    try:
        free = serve.free_ports(6)  # drawn at once, so the two replicas' ports differ
        for i, ports in enumerate((free[:3], free[3:]), 1):
            servers.append(lb.start_replica(root / f"replica{i}", ports, model_store=model_store))
        for server in servers:
            serve.wait_ready(server, repo.DEFAULT_MODEL, min_ready=2, progress=False)
        balancer = lb.start([s.client.inference_url.removeprefix("http://") for s in servers],
                            port=serve.free_ports(1)[0], workdir=root / "lb",
                            watch=[s.client for s in servers])
        balancer.wait_up(timeout=30)
        yield balancer
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers:
            serve.stop(server.workdir, grace=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    parser.add_argument("--after", type=float, default=10.0, help="seconds measured after it")
    parser.add_argument("--factor", type=float, default=2.0, help="overload x the saturated rate")
    parser.add_argument("--rate", type=float, help="offered rate (default: factor x measured)")
    parser.add_argument("--margin-ms", type=float, default=DEFAULT_MARGIN_MS,
                        help="allowed over the edge's 250 ms queue budget for accepted p99")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overload-pair-") as tmp, pair(Path(tmp)) as balancer:
        print("[overload_pair] measuring the pair's saturated rate (8 s, closed loop)", file=sys.stderr)
        saturated = saturated_rps(balancer)
        rate = args.rate or round(args.factor * saturated, 1)
        print(f"[overload_pair] saturated {saturated} rps; offering {rate} rps for "
              f"{args.duration:g} s, then {saturated / 2:.1f} rps for {args.after:g} s", file=sys.stderr)
        out = run(balancer, rate, args.duration, args.after, round(saturated / 2, 1))
        out["saturated_rps"] = saturated
    return finish(out, verdict(out, args.margin_ms), report, args.json)


def report(out: dict) -> str:
    acc, ref, aft = out["accepted_ms"], out["refused_ms"], out["after_ms"]
    return "\n".join([
        f"saturated {out['saturated_rps']} rps, offered {out['offered_rps']} rps for {out['duration_s']:g} s",
        f"both replicas UP throughout: {'yes' if not out['not_up_seen'] else 'NO'} "
        f"({out['state_samples']} samples of the stats socket)",
        f"connection errors: {out['connection_errors']}; other statuses: {out['other_statuses'] or 'none'}",
        f"accepted: {out['accepted']} at {out['accepted_rps']} rps, p50 {acc['p50']} p99 {acc['p99']} "
        f"p99.9 {acc['p99.9']} ms",
        f"refused 503: {out['refused_503']}, p99 {ref['p99']} ms (max {ref['max']})",
        f"edge retries: {out['edge_retries']}",
        f"after the load dropped ({out['after_rps']} rps, {out['after_s']:g} s): p99 {aft['p99']} ms, "
        f"{out['after_errors']} errors",
    ])


if __name__ == "__main__":
    sys.exit(main())
