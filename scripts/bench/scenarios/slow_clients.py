"""Slow clients and large uploads against the edge (HAProxy, config/haproxy.cfg), with normal
traffic measured through it at the same time.

    python -m scripts.bench.scenarios.slow_clients --url http://127.0.0.1:8090 --key-file run/balancer.key \\
        --seconds 60 --slow 300 --image photos/cat.jpg

Three kinds of client at once, all on loopback:
- slow: connections from several loopback source addresses (127.0.0.2, ...) that send their
  request a byte a second; each one the edge closes is opened again;
- one address over its cap: more connections from one source than the edge allows (64);
- uploads: 6,000,000-byte bodies (not images), 4 a second from 127.0.2.1, in the second half
  (over the edge's 50 MB per 10 s per address: refused 429 once over);
- traffic: real predictions at a constant rate from 127.0.0.1, whose latency is what counts.
The edge must keep the traffic's p99 under the SLO with no failure, answer the slow ones 408,
refuse connections over a source's cap at once, and keep its own and the replicas' memory
bounded (peak RSS of the given pids, sampled). Exit 1 when a traffic request failed or its p99
beside the slow connections is over --slo-ms.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import requests

from scripts.bench import stats

MODEL = "efficientnet_lite0"
CAP_PER_SOURCE = 64  # config/haproxy.cfg: tcp-request connection reject if sc0_conn_cur gt 64


def _request_head(path: str, key: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n").encode()


class SlowConnections(multiprocessing.Process):
    """`per_source` connections from each loopback source address, each sending one byte of a
    request a second; closed ones are opened again until `seconds` have passed. A process of its
    own, as attackers are: its loop over hundreds of sockets must not take the interpreter from
    the threads that measure the normal traffic. `result()` returns its counts."""

    def __init__(self, address: tuple[str, int], sources: list[str], per_source: int, seconds: float,
                 payload: bytes) -> None:
        super().__init__(daemon=True)
        self.address, self.sources, self.per_source = address, sources, per_source
        self.seconds, self.payload = seconds, payload
        self.opened = 0
        self.answered: dict[str, int] = {}  # status (or "closed") -> count
        self.closed_at_once = 0  # closed by the edge within a second and a half, nothing answered
        self.most_open = 0
        self._out: multiprocessing.Queue = multiprocessing.Queue()

    def result(self, timeout: float) -> dict:
        counts = self._out.get(timeout=timeout)
        self.join(timeout=5)
        return counts

    def _open(self, source: str) -> dict | None:
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.bind((source, 0))
            sock.connect(self.address)
        except OSError:
            sock.close()
            self.closed_at_once += 1
            return None
        sock.setblocking(False)
        self.opened += 1
        return {"sock": sock, "source": source, "sent": 0, "at": time.monotonic()}

    def _close(self, conn: dict, reply: bytes) -> None:
        conn["sock"].close()
        if reply.startswith(b"HTTP/"):
            status = reply.split(b" ", 2)[1].decode(errors="replace")
            self.answered[status] = self.answered.get(status, 0) + 1
        elif time.monotonic() - conn["at"] < 1.5:
            self.closed_at_once += 1
        else:
            self.answered["closed"] = self.answered.get("closed", 0) + 1

    def run(self) -> None:
        conns = [c for s in self.sources for c in [self._open(s) for _ in range(self.per_source)] if c]
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            time.sleep(1.0)  # also lets the edge refuse a connection before it is counted open
            alive, still = [], 0
            for conn in conns:
                reply = b""
                try:
                    reply = conn["sock"].recv(4096)
                    gone = True  # an answer or an orderly close: the edge is done with it
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if not gone:
                    try:
                        at = conn["sent"] % len(self.payload)
                        conn["sock"].send(self.payload[at:at + 1])
                        conn["sent"] += 1
                    except OSError:
                        gone = True
                if gone:
                    self._close(conn, reply)
                    again = self._open(conn["source"])
                    if again:
                        alive.append(again)
                else:
                    alive.append(conn)
                    still += 1
            conns = alive
            self.most_open = max(self.most_open, still)
        for conn in conns:
            conn["sock"].close()
        self._out.put({"opened": self.opened, "most_open_at_once": self.most_open,
                       "answered": self.answered, "closed_at_once": self.closed_at_once})


class Paced:
    """`rate` calls a second of `call` for `seconds`, from a thread pool, each timed from its
    scheduled moment (open loop)."""

    def __init__(self, call, rate: float, seconds: float, threads: int = 16) -> None:
        self.call, self.rate, self.seconds, self.threads = call, rate, seconds, threads
        self.results: list[tuple[float, int | str, float]] = []  # (scheduled, status, latency s)

    def _one(self, scheduled: float) -> tuple[float, int | str, float]:
        try:
            status: int | str = self.call()
        except requests.RequestException as exc:
            status = type(exc).__name__
        return scheduled, status, time.monotonic() - scheduled

    def run(self) -> list[tuple[float, int | str, float]]:
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            start, futures = time.monotonic(), []
            for i in range(int(self.rate * self.seconds)):
                scheduled = start + i / self.rate
                time.sleep(max(0.0, scheduled - time.monotonic()))
                futures.append(pool.submit(self._one, scheduled))
            self.results = [f.result() for f in futures]
        return self.results


class PeakRss(threading.Thread):
    """Peak RSS (MiB) of each pid, sampled every 0.2 s until stopped."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start_mib = {name: self._rss(p) for name, p in self.procs.items()}
        self.peak_mib = dict(self.start_mib)
        self.stopping = threading.Event()

    @staticmethod
    def _rss(proc: psutil.Process) -> float:
        try:
            return round(proc.memory_info().rss / 2**20, 1)
        except psutil.Error:
            return 0.0

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            for name, proc in self.procs.items():
                self.peak_mib[name] = max(self.peak_mib[name], self._rss(proc))


def percentiles_ms(latencies: list[float]) -> dict[str, float] | None:
    """p50, p99 and max in milliseconds (scripts/bench/stats.py) of latencies in seconds (None
    when there are none)."""
    if not latencies:
        return None
    return stats.summary([1000 * s for s in latencies], ("p50", "p99", "max"), digits=1)


def _upload_call(address: tuple[str, int], path: str, headers: dict, body: bytes, source: str):
    """POSTs of `body` from the loopback address `source`, one connection per thread."""
    local = threading.local()

    def call() -> int | str:
        conn = getattr(local, "conn", None) or http.client.HTTPConnection(
            *address, timeout=30, source_address=(source, 0))
        local.conn = conn
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException) as exc:
            # The edge answers a refusal from the headers and closes while the body is still
            # being sent: its answer is then waiting in the socket.
            early = _early_status(conn.sock)
            local.conn = None
            conn.close()
            return early or type(exc).__name__
    return call


def _early_status(sock: socket.socket | None) -> str | None:
    try:
        sock.settimeout(1)
        head = sock.recv(4096)
    except (AttributeError, OSError):
        return None
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else None


def _session_call(url: str, headers: dict, body: bytes):
    local = threading.local()

    def call() -> int:
        local.s = getattr(local, "s", None) or requests.Session()
        return local.s.post(url, data=body, headers=headers, timeout=30).status_code
    return call


def run(url: str, key: str, image: bytes, seconds: float = 20.0, slow: int = 300, sources: int = 5,
        over_cap: int = CAP_PER_SOURCE + 16, rate: float = 20.0, uploads_per_s: float = 4.0,
        upload_bytes: int = 6_000_000, baseline_s: float = 8.0, pids: dict[str, int] | None = None) -> dict:
    """Normal traffic alone for `baseline_s`, then the same traffic beside the slow connections
    for `seconds`, the uploads joining for the second half. Returns the figures."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    predict = f"{url}/predictions/{MODEL}"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"}
    traffic = _session_call(predict, headers, image)
    baseline = Paced(traffic, rate, baseline_s).run()

    head = _request_head(f"/predictions/{MODEL}", key, len(image)) + image
    slow_clients = SlowConnections(address, [f"127.0.0.{2 + i}" for i in range(sources)],
                                   slow // sources, seconds, head)
    crowd = SlowConnections(address, ["127.0.1.1"], over_cap, seconds, head)
    half = (seconds - 2) / 2
    uploads = Paced(_upload_call(address, f"/predictions/{MODEL}", headers, os.urandom(upload_bytes),
                                 "127.0.2.1"), uploads_per_s, half, threads=4)
    memory = PeakRss(pids or {})
    for t in (memory, slow_clients, crowd):
        t.start()
    time.sleep(2)  # every slow connection open before the measured traffic starts
    upload_thread = threading.Timer(half, uploads.run)
    upload_thread.start()
    uploads_from = time.monotonic() + half
    attacked = Paced(traffic, rate, 2 * half).run()
    upload_thread.join(timeout=60)
    slow_counts, crowd_counts = slow_clients.result(seconds + 30), crowd.result(seconds + 30)
    memory.stopping.set()
    memory.join()
    failed = [r for r in attacked + baseline if r[1] != 200]
    return {
        "traffic_rps": rate,
        "baseline_ms": percentiles_ms([r[2] for r in baseline]),
        "slow_only_ms": percentiles_ms([r[2] for r in attacked if r[0] < uploads_from]),
        "slow_and_uploads_ms": percentiles_ms([r[2] for r in attacked if r[0] >= uploads_from]),
        "traffic_sent": len(baseline) + len(attacked),
        "traffic_failed": len(failed),
        "traffic_failures": sorted({str(r[1]) for r in failed}),
        "slow_connections": {"sources": sources, **slow_counts},
        "one_source_over_cap": {"tried": over_cap, **crowd_counts},
        "uploads": {"bytes": upload_bytes, "sent": len(uploads.results),
                    "statuses": {s: sum(str(r[1]) == s for r in uploads.results)
                                 for s in sorted({str(r[1]) for r in uploads.results})},
                    "latency_ms": percentiles_ms([r[2] for r in uploads.results])},
        "rss_mib": {name: {"start": memory.start_mib[name], "peak": memory.peak_mib[name]}
                    for name in memory.procs},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8090", help="the edge (HAProxy)")
    parser.add_argument("--key-file", type=Path, required=True, help="file holding the edge's bearer key")
    parser.add_argument("--image", type=Path, default=Path("photos/cat.jpg"))
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--slow", type=int, default=300, help="slow connections in all")
    parser.add_argument("--rate", type=float, default=20, help="normal traffic, requests/s")
    parser.add_argument("--slo-ms", type=float, default=50)
    parser.add_argument("--pid", action="append", default=[], metavar="NAME=PID",
                        help="a process whose peak RSS to report (repeatable)")
    args = parser.parse_args(argv)
    if not urlsplit(args.url).hostname.startswith("127."):
        parser.error("loopback addresses only")
    pids = {name: int(pid) for name, pid in (p.split("=", 1) for p in args.pid)}
    figures = run(args.url, args.key_file.read_text().strip(), args.image.read_bytes(),
                  seconds=args.seconds, slow=args.slow, rate=args.rate, pids=pids)
    print(json.dumps(figures, indent=2))
    ok = figures["traffic_failed"] == 0 and figures["slow_only_ms"]["p99"] < args.slo_ms
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
