"""Workers killed (kill -9) behind the balancer under steady load: no client of the contract fails.

    python -m scripts.bench.scenarios.worker_kills                # the ten-kill drill
    python -m scripts.bench.scenarios.worker_kills --kills 4      # as short as `make test` runs it

Starts two replicas (2 workers each, management on their private sockets) and HAProxy with
config/haproxy.cfg in front, as overload_pair does, then sends --rate predictions a second
through the edge (open loop, cat photo or a generated JPEG), each as the project's client
contract sends it (predict(retries=RESEND_BUDGET)). From 1 s in, every 0.5 s, one READY worker
is killed where its replica has another READY one (the replicas in turn), until --kills are done;
the load goes on 3 s after the last. HAProxy replays a 500 "Worker died." on the other replica; a
507 (the same loss, when TorchServe already saw exit status 137) reaches the client, which
resends it; while a worker reloads the pair's capacity can drop under the rate and the edge sheds
with 503 Retry-After: 1, which the client honours. Prints the figures; exit 1 when fewer kills
were done, a request failed or never came back, or no kill met a request in flight.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import requests
from image_classifier_client.contract import RESEND_BUDGET

from scripts import repo
from scripts.bench import stats
from scripts.bench.scenarios import finish, overload_pair
from scripts.ops import balancer as lb
from scripts.ops.torchserve_http import TorchServeClient, sample_jpeg

KILLS = 10
# Requests per second: under the pair's capacity while a worker reloads (a reload holds one of
# the 2 cores). At 30 the ten kills took 51-59 s and passed; on a slower day they took 74-90 s
# and clients got a second 503 in a row.
RATE = 20.0
FIRST_KILL_S = 1.0      # s of load before the first kill
KILL_EVERY_S = 0.5      # how often a kill is tried (a replica with a spare READY worker)
KILLS_WITHIN_S = 120.0  # the kills must be done by then (a replaced worker takes 8-20 s here)
AFTER_LAST_KILL_S = 3.0  # s of load after the last kill
TIMEOUT = 30.0          # per attempt: no answer by then counts as hung
SENDERS = 32
LOST = (500, 507)       # what a resent attempt got when a killed worker held its batch


def kill_a_worker(replicas: Sequence[TorchServeClient], turn: int,
                  model: str = repo.DEFAULT_MODEL) -> int | None:
    """kill -9 of one READY worker (the Python process, its pid from the management API),
    taking replicas in turn, and only where another worker is READY (a replica without a
    READY worker is the agent's case, not this drill's); its pid, or None if none qualifies."""
    start = turn % len(replicas)
    for client in [*replicas[start:], *replicas[:start]]:
        ready = [w for w in client.workers(model) if w.get("status") == "READY"]
        if len(ready) >= 2:
            pid = int(ready[0]["pid"])
            os.kill(pid, signal.SIGKILL)
            return pid
    return None


def run(balancer: lb.Balancer, replicas: Sequence[TorchServeClient], image: bytes,
        kills: int = KILLS, rate: float = RATE, model: str = repo.DEFAULT_MODEL,
        timeout: float = TIMEOUT) -> dict:
    """`rate` predictions a second through the edge while `kills` workers of `replicas` (their
    management clients) are killed, each as soon as one qualifies (kill_a_worker); the figures."""
    edge = TorchServeClient(balancer.url, key_file=None, timeout=timeout)
    local = threading.local()
    resent: list[object] = []  # what each resent attempt had got (predict's `resent`)

    def send(scheduled: float) -> tuple[object, float]:
        local.session = getattr(local, "session", None) or requests.Session()
        try:
            resp = edge.predict(model, image, balancer.headers(), local.session,
                                retries=RESEND_BUDGET, resent=resent)
            outcome: object = 200 if resp.status_code == 200 else f"{resp.status_code} {resp.text[:100]}"
        except requests.RequestException as exc:
            outcome = type(exc).__name__
        return outcome, time.monotonic() - scheduled

    before = balancer.servers()
    killed: list[int] = []
    last_kill = last_try = 0.0
    with concurrent.futures.ThreadPoolExecutor(SENDERS) as pool:
        futures, start = [], time.monotonic()
        # Bounded: FIRST_KILL_S + KILLS_WITHIN_S + AFTER_LAST_KILL_S of load at most.
        for i in range(int(rate * (FIRST_KILL_S + KILLS_WITHIN_S + AFTER_LAST_KILL_S))):
            scheduled = start + i / rate
            time.sleep(max(0.0, scheduled - time.monotonic()))
            futures.append(pool.submit(send, scheduled))
            now = time.monotonic()
            if len(killed) == kills:
                if now - last_kill >= AFTER_LAST_KILL_S:
                    break
            elif (now - start >= FIRST_KILL_S and now - last_try >= KILL_EVERY_S
                  and now - start < FIRST_KILL_S + KILLS_WITHIN_S):
                last_try = now
                pid = kill_a_worker(replicas, len(killed), model)
                if pid is not None:
                    killed.append(pid)
                    last_kill = now
        done, pending = concurrent.futures.wait(futures, timeout=timeout + 10)
    results = [f.result() for f in done]
    after = balancer.servers()
    outcomes = [o for o, _ in results]
    return {
        "rate": rate, "sent": len(futures), "vanished": len(pending), "kills": len(killed),
        "kills_took_s": round(last_kill - start, 1),
        "failed": {str(o): outcomes.count(o) for o in set(outcomes) if o != 200},
        "edge_retries": sum(int(after[n]["wretr"] or 0) - int(before[n]["wretr"] or 0) for n in after),
        "client_resent": {str(c): resent.count(c) for c in set(resent)},
        "client_resent_lost": sum(c in LOST for c in resent),
        "latency_ms": stats.summary([t * 1000 for _, t in results], ("p50", "p99", "max")),
    }


def problems(figures: dict, kills: int) -> list[str]:
    """What went wrong, one line each (empty: passed)."""
    found = []
    if figures["kills"] != kills:
        found.append(f"{figures['kills']} of {kills} kills done within {KILLS_WITHIN_S:g} s")
    if figures["vanished"]:
        found.append(f"{figures['vanished']} requests never came back")
    if figures["failed"]:
        found.append(f"failed as the client saw them: {figures['failed']}")
    # HAProxy replayed a 500 "Worker died." or the client resent a 500/507: a kill met a batch.
    if figures["edge_retries"] + figures["client_resent_lost"] < 1:
        found.append("no kill met a request in flight (no replay, no 500/507 resent)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=KILLS, help="workers to kill")
    parser.add_argument("--rate", type=float, default=RATE, help="predictions per second")
    parser.add_argument("--image", type=Path, help="photo to send (default: a generated 320 px JPEG)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    image = args.image.read_bytes() if args.image else sample_jpeg(overload_pair.IMAGE_PX)
    with (tempfile.TemporaryDirectory(prefix="worker-kills-") as tmp,
          overload_pair.pair(Path(tmp)) as balancer):
        # pair() has the agent watch each replica's management API: those are the clients.
        replicas = [c for c in balancer.agent.replicas.values() if c] if balancer.agent else []
        print(f"[worker_kills] {args.kills} kills under {args.rate:g} requests/s", file=sys.stderr)
        figures = run(balancer, replicas, image, kills=args.kills, rate=args.rate)
    return finish(figures, problems(figures, args.kills), report, args.json)


def report(figures: dict) -> str:
    lat = figures["latency_ms"]
    return "\n".join([
        f"{figures['kills']} workers killed in {figures['kills_took_s']:g} s under {figures['rate']:g} "
        f"requests/s; {figures['sent']} sent, {figures['vanished']} never came back",
        f"failed as the client saw them: {figures['failed'] or 'none'}",
        f"replayed by HAProxy: {figures['edge_retries']}; resent by the client: "
        f"{figures['client_resent'] or 'none'}",
        f"latency p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms (resends included)",
    ])


if __name__ == "__main__":
    sys.exit(main())
