"""Open-loop load generator for a TorchServe prediction endpoint.

Requests leave at a constant rate whatever the server does, and each latency is measured from
the request's *intended* send time, so a server (or a client) that falls behind shows up as
latency instead of being hidden by a slower send rate (the closed-loop mistake). Percentiles
are scripts/bench/stats.py's (linear between the closest ranks, numpy's default).

    # 50 rps for 60 s (after 5 s of warm-up) against the server started by `make serve`
    python -m scripts.bench.load.loadtest --rate 50 --duration 60
    # sweep 10 -> 150 rps, find the highest rate whose p99 stays under 50 ms, plot it
    python -m scripts.bench.load.loadtest --sweep 10:150:20 --slo-ms 50 --plot docs/latency_vs_rate.png
    # saturated throughput: 8 clients sending back to back (closed loop, for throughput only)
    python -m scripts.bench.load.loadtest --closed 8 --duration 20
    # the same photos as Open Inference Protocol (v2) requests: POST /v2/models/NAME/infer
    python -m scripts.bench.load.loadtest --protocol v2 --rate 50 --duration 60
    # raw and v2 alternating at 50 rps, 30 s each, twice; batch sizes from /metrics per phase
    python -m scripts.bench.load.loadtest --compare-protocols 2 --rate 50 --duration 30

Sending: a scheduler thread hands each request at its intended time to a pool of sender threads
(at most --concurrency in flight); each sender keeps one persistent HTTP/1.1 connection
(http.client: far less CPU per request than requests, which matters when the generator
shares the cores with the server). The bearer key is re-read whenever key_file.json changes.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from image_classifier_client.contract import KEY_RENEWAL_WAIT_S, auth_refused

from scripts import repo
from scripts.bench import stats
from scripts.ops.server_config import (
    KEY_FILE,
    KeyFile,
    ModelChoiceError,
    addresses,
    chosen_model,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
# What each protocol's request is: its path under the inference address, its Content-Type.
# Sender threads started, each with its connection, before an open-loop run's first request:
# 50 rps at 25 ms keeps 2 in flight; 16 covers a 300 ms stall at 50 rps without a new thread.
PREWARM_THREADS = 16
PROTOCOLS = {"raw": ("/predictions/{model}", "application/octet-stream"),
             "v2": ("/v2/models/{model}/infer", "application/json")}


@dataclass
class Target:
    url: str
    key_file: Path | None = None
    timeout: float = 10.0
    protocol: str = "raw"
    keys: KeyFile = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyFile(Path(self.key_file) if self.key_file else None)
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"

    @classmethod
    def from_workdir(cls, workdir: Path, model: str, timeout: float = 10.0,
                     protocol: str = "raw") -> Target:
        """The server scripts.ops.serve started in `workdir` (its config.properties and key file)."""
        inference = addresses(workdir)[0]
        path = PROTOCOLS[protocol][0].format(model=model)
        return cls(f"{inference}{path}", Path(workdir) / KEY_FILE, timeout, protocol)


class Sender:
    """One persistent connection per sender thread."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.local = threading.local()

    def connect(self) -> None:
        """Open this thread's connection now, so no request pays for it."""
        self._conn().connect()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.target.host, self.target.port, timeout=self.target.timeout)
            self.local.conn = conn
        return conn

    def post(self, body: bytes) -> str:
        """Send one image; returns the HTTP status as text, or the exception's name. A request
        whose key was renewed under it is resent once with the new key, as clients should."""
        status, text = self._post_once(body)
        if auth_refused(int(status) if status.isdigit() else 0, text):
            time.sleep(KEY_RENEWAL_WAIT_S)
            status, _ = self._post_once(body)
        return status

    def _post_once(self, body: bytes) -> tuple[str, str]:
        # application/octet-stream: a raw body as form-urlencoded fails in TorchServe's frontend.
        headers = {"Content-Type": PROTOCOLS[self.target.protocol][1],
                   **self.target.keys.headers("inference")}
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request("POST", self.target.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self.local.conn = None
                return str(resp.status), data[:200].decode("utf-8", "replace")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                self.local.conn = None
                # A kept-alive connection the server closed while idle: retry once on a new one.
                if attempt == 1 or not isinstance(exc, http.client.RemoteDisconnected):
                    return type(exc).__name__, ""
            except Exception as exc:  # timeouts, refused connections: an error, not a crash
                conn.close()
                self.local.conn = None
                return type(exc).__name__, ""
        return "unreachable", ""


def load_images(folder: Path | None) -> list[bytes]:
    """The photos of `folder`, or the repository's sample photos (JPEG) when none is given."""
    if folder is None:
        from scripts.packaging.sample_photos import write_photos

        folder = Path(tempfile.mkdtemp(prefix="loadtest-photos-"))
        write_photos(folder, ("jpg",))
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {folder}")
    return [p.read_bytes() for p in files]


def request_bodies(images: list[bytes], protocol: str) -> list[bytes]:
    """Each photo as the protocol's request body: the bytes themselves, or a v2 request holding
    the photo in base64 as its one BYTES input (built once, before sending). The v2 shape is
    [1, 1], a batch of one image: our handler takes it as one image, and a batching Triton
    (the benchmark's peer, triton_peer.py) requires the batch dimension, so both get the same
    bytes."""
    if protocol == "raw":
        return images
    return [json.dumps({"id": f"load-{i}", "inputs": [
        {"name": "image", "shape": [1, 1], "datatype": "BYTES",
         "data": [base64.b64encode(image).decode()]}]}).encode() for i, image in enumerate(images)]


def batch_histogram(metrics_url: str) -> dict[str, float]:
    """The handler's batch-size histogram on /metrics (handler_batch_size, all workers summed):
    cumulative buckets by upper bound, and count (batches) and sum (requests)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{metrics_url}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "handler_batch_size":
            continue
        for sample in family.samples:
            kind = sample.name.removeprefix("handler_batch_size_")
            if kind == "bucket":
                kind = f"le={sample.labels['le']}"
            totals[kind] = totals.get(kind, 0.0) + sample.value
    return totals


def batch_sizes(before: dict[str, float], after: dict[str, float]) -> dict:
    """The batches formed between two readings: how many of 1, of 2, of 3-4 (the histogram's
    default buckets 1, 2.5, 5), and the mean size."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    ones, upto2, upto5 = (delta.get(f"le={b}", 0.0) for b in ("1.0", "2.5", "5.0"))
    count = delta.get("count", 0.0)
    return {"batches": int(count), "of_1": int(ones), "of_2": int(upto2 - ones),
            "of_3_4": int(upto5 - upto2), "mean": round(delta.get("sum", 0.0) / count, 2) if count else None}


def compare_protocols(workdir: Path, model: str, images: list[bytes], rate: float, duration: float,
                      warmup: float, rounds: int, concurrency: int = 64, timeout: float = 10.0,
                      progress: bool = True) -> dict:
    """Raw and v2 requests of the same photos against the same server, alternating `rounds`
    times (raw, v2, raw, v2, ...) at `rate` for `duration` s each (after `warmup`): each
    protocol's latencies over all its phases, and the batch sizes each phase formed."""
    metrics_url = addresses(workdir)[2]
    phases, latencies = [], {p: [] for p in PROTOCOLS}
    errors = {p: 0 for p in PROTOCOLS}
    for round_no in range(rounds):
        for protocol in PROTOCOLS:
            target = Target.from_workdir(workdir, model, timeout, protocol)
            records: list = []
            before = batch_histogram(metrics_url)
            rep = run_open(target, request_bodies(images, protocol), rate, duration, warmup,
                           concurrency, progress, records)
            sizes = batch_sizes(before, batch_histogram(metrics_url))  # warm-up's batches too
            start = min(r[0] for r in records) + warmup
            latencies[protocol] += [(end - t) * 1000 for t, _, end, _ in records if t >= start]
            errors[protocol] += rep["errors"]
            phases.append({"round": round_no + 1, "protocol": protocol,
                           "latency_ms": rep["latency_ms"], "errors": rep["errors"],
                           "achieved_rps": rep["achieved_rps"], "batch_sizes": sizes})
            time.sleep(1.0)  # the queue drains between phases
    overall = {p: {"requests": len(lat), "errors": errors[p],
                   "latency_ms": stats.summary(lat, ("p50", "p99", "p99.9", "max"))}
               for p, lat in latencies.items()}
    raw_p99, v2_p99 = overall["raw"]["latency_ms"]["p99"], overall["v2"]["latency_ms"]["p99"]
    return {"mode": "compare", "rate": rate, "duration_s": duration, "warmup_s": warmup,
            "rounds": rounds, "phases": phases, "overall": overall,
            "v2_over_raw_p99": round(v2_p99 / raw_p99, 2) if raw_p99 else None}


def summarize(records: list[tuple[float, float, float, str]], window: tuple[float, float],
              offered: float | None) -> dict:
    """Statistics of the requests whose intended send time falls in the measured window."""
    lo, hi = window
    rows = [r for r in records if lo <= r[0] < hi]
    lat = [(end - intended) * 1000 for intended, _, end, _ in rows]
    ok = [r for r in rows if r[3] == "200"]
    errors: dict[str, int] = {}
    for r in rows:
        if r[3] != "200":
            errors[r[3]] = errors.get(r[3], 0) + 1
    last_end = max((r[2] for r in ok), default=hi)
    report = {
        "offered_rps": offered,
        "requests": len(rows),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "achieved_rps": round(len(ok) / max(last_end - lo, hi - lo, 1e-9), 2),
        "latency_ms": stats.summary(lat, ("p50", "p90", "p99", "p99.9", "max", "mean")),
    }
    # How late the sender threads started requests: large values mean the generator itself lagged.
    starts = [(start - intended) * 1000 for intended, start, _, _ in rows]
    report["send_lag_ms_p99"] = stats.summary(starts, ("p99",))["p99"]
    return report


class Progress:
    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled, self.label, self.last = enabled, label, 0.0

    def show(self, elapsed: float, total: float, records: list, sent: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < 1.0:
            return
        self.last = now
        recent = [(r[2] - r[0]) * 1000 for r in records[-200:]]
        errs = sum(1 for r in records if r[3] != "200")
        p99 = f"{stats.percentile(recent, 99):7.1f}" if recent else "      -"
        print(f"\r[loadtest] {self.label} {elapsed:5.1f}/{total:.0f} s  sent {sent:6d}  "
              f"done {len(records):6d}  in flight {sent - len(records):4d}  errors {errs:4d}  "
              f"recent p99 {p99} ms", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def prewarm(pool: ThreadPoolExecutor, sender: Sender, threads: int, timeout: float = 10.0) -> None:
    """Start `threads` sender threads and open each one's connection before the first timed
    request. ThreadPoolExecutor starts a thread only when a request finds none idle, which is
    at a stall: without this, the generator adds a thread and a TCP connection (and the
    server's accept) to exactly the requests that are already late."""
    barrier = threading.Barrier(threads + 1, timeout=timeout)

    def hold() -> None:
        try:
            sender.connect()
        except OSError:
            pass  # the first request reports it
        barrier.wait()

    for _ in range(threads):
        pool.submit(hold)
    barrier.wait()


def run_open(target: Target, images: list[bytes], rate: float, duration: float, warmup: float = 5.0,
             concurrency: int = 64, progress: bool = True, records: list | None = None,
             prewarm_threads: int = PREWARM_THREADS) -> dict:
    """Send at `rate` rps for warmup + duration seconds; statistics over the last `duration` s.
    `records`, when given, receives every (intended, start, end, status) for windowed analysis.
    `prewarm_threads` senders are started, each with its connection, before the first request."""
    sender = Sender(target)
    records = [] if records is None else records
    total = warmup + duration
    count = int(round(total * rate))
    show = Progress(progress, f"{rate:g} rps")

    def one(intended: float, body: bytes) -> None:
        start = time.perf_counter()
        status = sender.post(body)
        records.append((intended, start, time.perf_counter(), status))  # list.append is atomic

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send") as pool:
        if prewarm_threads:
            prewarm(pool, sender, min(prewarm_threads, concurrency))
        t0 = time.perf_counter() + 0.05
        for i in range(count):
            intended = t0 + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, intended, images[i % len(images)])
            show.show(time.perf_counter() - t0, total, records, i + 1)
        # Bounded wait for the stragglers: every request has its own socket timeout.
        while len(records) < count and time.perf_counter() - t0 < total + target.timeout + 5:
            time.sleep(0.05)
            show.show(time.perf_counter() - t0, total, records, count)
    show.done()
    report = summarize(records, (t0 + warmup, t0 + total), rate)
    report.update(mode="open", warmup_s=warmup, duration_s=duration, concurrency=concurrency,
                  unfinished=count - len(records))
    return report


def run_closed(target: Target, images: list[bytes], clients: int, duration: float,
               warmup: float = 3.0, progress: bool = True) -> dict:
    """`clients` senders back to back: the saturated throughput (its latencies include queueing)."""
    sender = Sender(target)
    records: list[tuple[float, float, float, str]] = []
    t0 = time.perf_counter()
    stop_at = t0 + warmup + duration
    show = Progress(progress, f"closed x{clients}")

    def loop(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            status = sender.post(images[i % len(images)])
            records.append((start, start, time.perf_counter(), status))
            i += clients

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.perf_counter() < stop_at + target.timeout + 5:
        time.sleep(0.1)
        show.show(time.perf_counter() - t0, warmup + duration, records, len(records))
    show.done()
    report = summarize(records, (t0 + warmup, stop_at), None)
    ended = [r for r in records if t0 + warmup <= r[0] < stop_at and r[3] == "200"]
    report["achieved_rps"] = round(len(ended) / duration, 2)
    report.update(mode="closed", clients=clients, warmup_s=warmup, duration_s=duration)
    return report


def passes(report: dict, slo_ms: float) -> bool:
    p99 = report["latency_ms"]["p99"]
    return report["errors"] == 0 and p99 is not None and p99 < slo_ms


def sustained(report: dict) -> bool:
    """The server kept up: no error and at least 95% of the offered rate answered."""
    return report["errors"] == 0 and report["achieved_rps"] >= 0.95 * report["offered_rps"]


# A window with errors (or no answer) counts as missing the SLO by any margin: its p99 reads as
# this (finite, so a median across windows stays a number; reported as None).
MISSED_MS = 1e9


def window_p99(report: dict) -> float:
    """A window's p99 as a verdict reads it (MISSED_MS for a window with errors)."""
    p99 = report["latency_ms"]["p99"]
    return MISSED_MS if report["errors"] or p99 is None else p99


def rate_verdict(rate: float, windows: list[dict], slo_ms: float) -> dict:
    """One rate measured in several windows: it passes when the median window's p99 meets the
    SLO (one slow window neither makes nor breaks a capacity). Reports the windows' p99 spread
    and the median window's own figures (for the plot)."""
    if not windows:
        raise ValueError(f"rate {rate:g}: no window measured")
    ordered = sorted(windows, key=window_p99)
    middle = ordered[(len(ordered) - 1) // 2]  # the lower median: a window that was measured
    p99s = [window_p99(w) for w in windows]
    median = stats.median(p99s)
    return {"offered_rps": rate, "windows": len(windows), "passes_slo": median < slo_ms,
            "p99": {"min": _finite(min(p99s)), "median": _finite(median), "max": _finite(max(p99s))},
            "errors": sum(w["errors"] for w in windows), "latency_ms": middle["latency_ms"],
            "achieved_rps": middle["achieved_rps"]}


def _finite(value: float) -> float | None:
    return None if value >= MISSED_MS / 2 else round(value, 2)  # a median half way to a miss


def capacity(steps: list[dict]) -> float | None:
    """The highest rate below which every rate run (in increasing order) passed; None when the
    first did not."""
    best = None
    for step in steps:
        if not step["passes_slo"]:
            break
        best = step["offered_rps"]
    return best


def sweep(target: Target, images: list[bytes], rates: list[float], duration: float, warmup: float,
          slo_ms: float, concurrency: int = 64, progress: bool = True, misses: int = 2) -> dict:
    """Run each rate in turn; stop after `misses` consecutive rates that missed the SLO (the
    capacity is found: a higher rate cannot raise it) or could not be sustained.

    max_rps_under_slo: the highest rate below which every rate met the SLO (p99, zero errors);
    max_rps_sustained: the same for keeping up at all (zero errors, >= 95% answered in time),
    among the rates run.
    """
    steps, best, kept, slo_ok, up_ok, missed = [], None, None, True, True, 0
    for rate in rates:
        rep = run_open(target, images, rate, duration, warmup, concurrency, progress)
        rep["passes_slo"], rep["sustained"] = passes(rep, slo_ms), sustained(rep)
        steps.append(rep)
        slo_ok, up_ok = slo_ok and rep["passes_slo"], up_ok and rep["sustained"]
        best, kept = (rate if slo_ok else best), (rate if up_ok else kept)
        missed = 0 if rep["sustained"] and rep["passes_slo"] else missed + 1
        if progress:
            lat = rep["latency_ms"]
            print(f"[sweep] {rate:6g} rps: p50 {lat['p50']} p99 {lat['p99']} ms, errors "
                  f"{rep['errors']}, {'PASS' if rep['passes_slo'] else 'miss'}", file=sys.stderr)
        if missed >= misses:
            break
        time.sleep(1.0)  # let the server's queue drain before the next rate
    return {"mode": "sweep", "slo_ms": slo_ms, "max_rps_under_slo": best, "max_rps_sustained": kept,
            "steps": steps}


def plot_sweeps(sweeps: dict[str, dict], path: Path, slo_ms: float, title: str = "") -> Path:
    """Latency percentiles against offered rate, one colour per series; a line at the SLO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"p50": ":", "p99": "-", "p99.9": "--"}
    for (name, result), colour in zip(sweeps.items(), ("tab:blue", "tab:red", "tab:green", "tab:purple")):
        rates = [s["offered_rps"] for s in result["steps"]]
        for pct, style in styles.items():
            ax.plot(rates, [s["latency_ms"][pct] for s in result["steps"]], style, marker="o",
                    markersize=3, color=colour, label=f"{name} {pct}")
    ax.axhline(slo_ms, color="black", linewidth=0.8)
    ax.text(ax.get_xlim()[0], slo_ms * 1.05, f" SLO p99 < {slo_ms:g} ms", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (requests/s, open loop)")
    ax.set_ylabel("latency from intended send time (ms)")
    ax.set_title(title or "Latency vs offered rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_rates(spec: str) -> list[float]:
    """'10:150:20' (start:stop:step, inclusive), '10,50,100', or both: '5,10:150:10'."""
    rates: list[float] = []
    for part in filter(None, spec.split(",")):
        if ":" in part:
            start, stop, step = (float(v) for v in part.split(":"))
            rates += [round(start + i * step, 3) for i in range(int((stop - start) / step + 1e-9) + 1)]
        else:
            rates.append(float(part))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="prediction URL, e.g. http://127.0.0.1:8080/predictions/NAME")
    where.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                       help="working dir of a server started by scripts.ops.serve (default: run/)")
    parser.add_argument("--model", help="model name (with --workdir; default: the one model the "
                                        "server serves)")
    parser.add_argument("--key-file", type=Path, help="TorchServe key_file.json (with --url)")
    parser.add_argument("--images", type=Path, help="folder of photos, cycled (default: sample photos)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds sent before measuring")
    parser.add_argument("--concurrency", type=int, default=64, help="cap on requests in flight")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--prewarm", type=int, default=PREWARM_THREADS, metavar="THREADS",
                        help="open loop: sender threads and connections opened before the first "
                             "request (0: started on demand, at the first stall)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="raw",
                        help="raw image bodies (/predictions/NAME) or Open Inference Protocol v2 "
                             "JSON (/v2/models/NAME/infer) of the same photos (with --workdir)")
    parser.add_argument("--compare-protocols", type=int, metavar="ROUNDS",
                        help="alternate raw and v2 at --rate for --duration each, ROUNDS times "
                             "(with --workdir: batch sizes are read from its metrics address)")
    parser.add_argument("--closed", type=int, metavar="CLIENTS",
                        help="closed loop with CLIENTS back-to-back senders (saturated throughput)")
    parser.add_argument("--sweep", metavar="RATES", help="rate sweep: start:stop:step or a,b,c")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="p99 latency objective (ms)")
    parser.add_argument("--plot", type=Path, help="PNG of the sweep's latency percentiles")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)

    try:
        if not args.url:
            args.model = chosen_model(args.workdir, args.model)
        target = (Target(args.url, args.key_file, args.timeout, args.protocol) if args.url
                  else Target.from_workdir(args.workdir, args.model, args.timeout, args.protocol))
    except ModelChoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: no server config: {exc}", file=sys.stderr)
        return 2
    images = load_images(args.images)
    progress = not args.quiet
    if args.compare_protocols:
        if args.url:
            parser.error("--compare-protocols needs --workdir (the server's metrics address)")
        report = compare_protocols(args.workdir, args.model, images, args.rate, args.duration,
                                   args.warmup, args.compare_protocols, args.concurrency,
                                   args.timeout, progress)
        report.update(images=len(images), passed=True)
        text = json.dumps(report, indent=2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        print(text if args.json else compare_table(report))
        return 0
    images = request_bodies(images, args.protocol)
    if args.sweep:
        report = sweep(target, images, parse_rates(args.sweep), args.duration, args.warmup,
                       args.slo_ms, args.concurrency, progress)
        if args.plot:
            plot_sweeps({"service": report}, args.plot, args.slo_ms)
    elif args.closed:
        report = run_closed(target, images, args.closed, args.duration, args.warmup, progress)
    else:
        report = run_open(target, images, args.rate, args.duration, args.warmup, args.concurrency,
                          progress, prewarm_threads=args.prewarm)
        report["passes_slo"] = passes(report, args.slo_ms)
    report.update(url=target.url, images=len(images))
    report["passed"] = verdict(report, args.slo_ms)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text if args.json else headline(report, args.slo_ms))
    return 0 if report["passed"] else 1


def verdict(report: dict, slo_ms: float) -> bool:
    """The run's pass/fail, the exit status: an open-loop run meets the SLO with zero errors; a
    sweep meets it at one rate at least; a closed-loop (throughput) run has zero errors."""
    if report["mode"] == "sweep":
        return report["max_rps_under_slo"] is not None
    if report["mode"] == "closed":
        return report["errors"] == 0
    return passes(report, slo_ms)


def compare_table(report: dict) -> str:
    """The protocol comparison as a Markdown table: each phase, then each protocol overall."""
    lines = ["| Phase | Protocol | p50 ms | p99 ms | p99.9 ms | Errors | Batches (1 / 2 / 3-4), mean size |",
             "|---|---|---|---|---|---|---|"]
    for ph in report["phases"]:
        lat, b = ph["latency_ms"], ph["batch_sizes"]
        lines.append(f"| {ph['round']} | {ph['protocol']} | {lat['p50']} | {lat['p99']} | "
                     f"{lat['p99.9']} | {ph['errors']} | {b['of_1']} / {b['of_2']} / {b['of_3_4']}, "
                     f"{b['mean']} |")
    for protocol, o in report["overall"].items():
        lat = o["latency_ms"]
        lines.append(f"| all | **{protocol}** | {lat['p50']} | {lat['p99']} | {lat['p99.9']} | "
                     f"{o['errors']} of {o['requests']} | |")
    return "\n".join(lines) + f"\n\nv2 p99 / raw p99: {report['v2_over_raw_p99']}"


def headline(report: dict, slo_ms: float) -> str:
    """One human line per run (the JSON has everything: --json, --out)."""
    status = "PASS" if report["passed"] else "FAIL"
    if report["mode"] == "sweep":
        return (f"{status}: highest rate with p99 < {slo_ms:g} ms and no errors: "
                f"{report['max_rps_under_slo']} rps")
    lat = report["latency_ms"]
    return (f"{status}: {report['achieved_rps']} rps, p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} ms, "
            f"{report['errors']} errors of {report['requests']} {report['errors_by_status'] or ''}"
            + (f" (SLO p99 < {slo_ms:g} ms)" if report["mode"] == "open" else ""))


if __name__ == "__main__":
    sys.exit(main())
