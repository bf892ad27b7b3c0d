"""The batching peer a user might write instead of TorchServe: BentoML 1.4 with adaptive batching.

Same model.onnx, preprocessing (handler.preprocessing), request (the raw photo as the body of
POST /predictions/NAME) and JSON (handler.responses) as our archive and the FastAPI peer
(fastapi_peer.py); `workers` BentoML worker processes of one ORT thread each, each with its own batcher.
The service itself is scripts/bench/peers/bento_service.py, run by `bentoml serve` in the peers'
environment (peer_env.py); this module only starts and stops it, so our .venv needs no bentoml.

Why BentoML and not Ray Serve: BentoML's batcher takes the raw body through a custom input spec
(bento_service.RawImage) with nothing else in front of it, it is already in
requirements-peers.txt, and it runs as plain processes on loopback; Ray Serve would add Ray's
cluster runtime (GCS, raylet, a proxy actor) to the two cores being measured.

Its knobs: `max_batch` (max_batch_size) and `max_latency_ms`. BentoML has no fixed wait: its
CorkDispatcher learns how long to hold a batch open from the forwards it has timed, and
max_latency_ms is a deadline: a request whose estimated latency passes it is refused with 503.
Each worker's first 12 batches train that estimate, most of size 1: start() sends sample photos
until every worker has run them (`TRAINING_BATCHES`, read on /metrics), so a benchmark starts
on a trained batcher. `batches(port)` reads the batch-size histogram BentoML keeps per worker.

    python -m scripts.bench.peers.batching_peer build/bench/unpacked/efficientnet_lite0 8091
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts import repo
from scripts.bench.peers import peer_env

ROUTE = "/predictions/{name}"
SERVICE = "scripts.bench.peers.bento_service:BatchingPeer"
HEALTH = "/readyz"
READY_LINE = "batching-peer worker {} ready"
# BentoML's dispatcher trains its latency model on its first batches (8 + 1 + 1 + 1 + 1, sizes
# 1 to 3) before it batches freely; start() warms each worker past them, in at most
# WARMUP_LIMIT requests per worker.
TRAINING_BATCHES = 12
WARMUP_LIMIT = 60
BATCH_HISTOGRAM = "bentoml_service_adaptive_batch_size"


def url(port: int, model: str = repo.DEFAULT_MODEL) -> str:
    """The prediction URL of a peer on 127.0.0.1:`port`."""
    return f"http://127.0.0.1:{port}{ROUTE.format(name=model)}"


def _env(model_dir: Path, workers: int, max_batch: int, max_latency_ms: float, home: Path) -> dict:
    return peer_env.env({
        "BATCHING_PEER_MODEL_DIR": str(Path(model_dir).resolve()),
        "BATCHING_PEER_WORKERS": str(workers),
        "BATCHING_PEER_MAX_BATCH": str(max_batch),
        "BATCHING_PEER_MAX_LATENCY_MS": str(max_latency_ms),
        "BENTOML_DO_NOT_TRACK": "True",  # BentoML's usage reports (the only thing it sends out)
        # its store and Prometheus files: its own, not ~/bentoml, nor shared with another peer
        "BENTOML_HOME": str(home),
    })


def _model_name(model_dir: Path) -> str:
    from handler import layout

    return json.loads((Path(model_dir) / layout.ARCHIVER_MANIFEST).read_text())["model"]["modelName"]


def _sample_photo() -> bytes:
    from scripts.packaging.sample_photos import jpeg_bytes, load_photos

    return jpeg_bytes(load_photos()["cat"])


def _status(address: str, body: bytes | None = None) -> int | None:
    """The HTTP status of a GET (or a POST of `body`), None when nothing answers."""
    req = urllib.request.Request(address, data=body, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def batches(port: int) -> dict[str, tuple[int, int]]:
    """worker index -> (batches run, requests in them), from the peer's /metrics: a batch of
    more than one request formed when the second exceeds the first."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    from prometheus_client.parser import text_string_to_metric_families  # ours, not the peer's venv

    found: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != BATCH_HISTOGRAM:
            continue
        for sample in family.samples:
            part = sample.name.removeprefix(f"{BATCH_HISTOGRAM}_")
            if part in ("count", "sum"):
                found.setdefault(sample.labels["worker_index"], {})[part] = int(sample.value)
    return {w: (v.get("count", 0), v.get("sum", 0)) for w, v in found.items()}


def _warm_up(port: int, address: str, photo: bytes, workers: int) -> None:
    """Sample photos, one after another, until every worker has run TRAINING_BATCHES batches."""
    for _ in range(WARMUP_LIMIT * workers):
        counts = batches(port)
        if len(counts) == workers and min(n for n, _ in counts.values()) >= TRAINING_BATCHES:
            return
        _status(address, photo)


def _tail(log: Path, lines: int = 20) -> str:
    """The last lines of the peer's output, for an error message."""
    text = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return f"the last lines of {log}:\n{text}"


def start(model_dir: Path, port: int, workers: int = 2, max_batch: int = 4,
          max_latency_ms: float = 10_000.0, timeout: float = 180.0) -> subprocess.Popen:
    """`bentoml serve` of the peer on 127.0.0.1:`port`; returns once every worker has its model
    (each prints READY_LINE after loading: the log holds `workers` of them), /readyz answers 200
    and a sample photo is predicted (200); then it warms every worker's batcher (_warm_up). Its
    output goes to `proc.log`, in its own BentoML home (a temporary folder stop() removes)."""
    python = peer_env.ensure()
    home = Path(tempfile.mkdtemp(prefix="batching-peer-"))
    log = home / "serve.log"
    cmd = [str(python), "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port),
           "--working-dir", str(repo.ROOT), "--do-not-track", "-q"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=_env(model_dir, workers, max_batch, max_latency_ms, home),
                                cwd=repo.ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    address, photo = url(port, _model_name(model_dir)), _sample_photo()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the BentoML peer exited with {proc.returncode}; {_tail(log)}")
        ready = sum(READY_LINE.format(i) in log.read_text(errors="replace") for i in range(1, workers + 1))
        if (ready == workers and _status(f"http://127.0.0.1:{port}{HEALTH}") == 200
                and _status(address, photo) == 200):
            _warm_up(port, address, photo, workers)
            return proc
        time.sleep(0.5)
    tail = _tail(log)
    stop(proc)
    raise TimeoutError(f"the BentoML peer did not answer within {timeout:.0f} s; {tail}")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop `bentoml serve` (its own process group: the arbiter and its workers, as fastapi_peer.stop
    stops uvicorn's), then remove its BentoML home."""
    from scripts.bench.peers import fastapi_peer

    fastapi_peer.stop(proc, grace)
    log = getattr(proc, "log", None)
    if log is not None:
        shutil.rmtree(log.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="an unpacked archive (python -m zipfile -e X.mar DIR)")
    parser.add_argument("port", type=int)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--max-latency-ms", type=float, default=10_000.0)
    args = parser.parse_args()
    proc = start(args.model_dir, args.port, args.workers, args.max_batch, args.max_latency_ms)
    address = url(args.port, _model_name(args.model_dir))
    print(f"[batching-peer] serving {address} (Ctrl-C stops it)", flush=True)
    # The server runs in its own session: Ctrl-C and SIGTERM reach only this process, which stops it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
