"""Servers under test and the load put on them: start/stop a TorchServe per service on free
loopback ports, run scripts.bench.load.loadtest against it in its own process, drain backlogs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.bench.load.loadtest import Sender, Target
from scripts.bench.workspace import BENCH, log, photos
from scripts.ops import serve


@dataclass
class Service:
    label: str
    model: str
    mar: Path
    env: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    server: serve.Server | None = None
    # The FastAPI peer (scripts/bench/load/peer.py): the unpacked archive it serves, its process, URL.
    peer_dir: Path | None = None
    proc: subprocess.Popen | None = None
    url: str | None = None

    @property
    def workdir(self) -> Path:
        return BENCH / "servers" / self.label


def start(svc: Service, workers: int = 2) -> None:
    shutil.rmtree(svc.workdir, ignore_errors=True)
    if svc.peer_dir is not None:
        from scripts.bench.load import peer

        port = serve.free_ports()[0]
        svc.proc = peer.start(svc.peer_dir, port, workers)
        svc.url = f"http://127.0.0.1:{port}/predictions/{svc.model}"
        log(f"{svc.label}: FastAPI + uvicorn READY ({workers} processes)")
        return
    overrides = dict(svc.overrides)
    log_config = overrides.pop("_log_config", serve.LOG_CONFIG)
    svc.server = serve.start(svc.workdir, models=f"{svc.model}={svc.mar.name}", ports=serve.free_ports(),
                             model_store=svc.mar.parent, overrides=overrides, env=svc.env,
                             log_config=log_config)
    try:
        # Warmed up as `serve start` does, so the first measured window is not the frontend's
        # cold start (RELIABILITY.md); the stock handler gets the same requests.
        serve.wait_ready(svc.server, svc.model, min_ready=workers, timeout=240, progress=False, warm=True)
    except BaseException:
        serve.stop(svc.workdir, grace=5)
        raise
    log(f"{svc.label}: {svc.model} READY ({workers} workers)")


def stop(services: list[Service]) -> None:
    for svc in services:
        if svc.proc is not None:
            from scripts.bench.load import peer

            peer.stop(svc.proc)
            svc.proc = None
        if svc.server is not None:
            serve.stop(svc.workdir, grace=10, drain_timeout=5)
            svc.server = None


def load(svc: Service, *args: str, tag: str) -> dict:
    """One loadtest.py run in its own process; returns its JSON report."""
    out = BENCH / "runs" / f"{svc.label}-{tag}-{time.time_ns()}.json"
    where = ["--url", svc.url] if svc.url else ["--workdir", str(svc.workdir), "--model", svc.model]
    cmd = [sys.executable, "-m", "scripts.bench.load.loadtest", *where, "--images", str(photos()),
           "--out", str(out), *args]
    # Exit 1 means a missed target (the stock handler misses most): the figures are the result.
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, timeout=1800)
    if proc.returncode not in (0, 1) or not out.is_file():
        raise RuntimeError(f"loadtest failed (exit {proc.returncode}) against {svc.label}")
    report = json.loads(out.read_text())
    settle(svc)
    lat = report.get("latency_ms", {})
    if report.get("mode") == "sweep":
        log(f"{svc.label} {tag}: max rps with p99 under SLO = {report['max_rps_under_slo']}")
    else:
        log(f"{svc.label} {tag}: {report['achieved_rps']} rps, p50 {lat['p50']} p99 {lat['p99']} "
            f"max {lat['max']} ms, errors {report['errors']} {report['errors_by_status'] or ''}")
    return report


def settle(svc: Service, timeout: float = 120.0) -> None:
    """Wait out the backlog an overload left behind: client timeouts do not cancel queued jobs,
    and a server still working through them would steal the cores from the next measurement.
    TorchServe's queue is FIFO, so a probe request answers once what was ahead of it is done."""
    target = (Target(svc.url, None, timeout) if svc.url
              else Target.from_workdir(svc.workdir, svc.model, timeout))
    t0 = time.monotonic()
    status = Sender(target).post(next(photos().iterdir()).read_bytes())
    if time.monotonic() - t0 > 1:
        log(f"{svc.label}: backlog drained in {time.monotonic() - t0:.0f} s (probe {status})")


def at_rate(svc: Service, rate: float, seconds: float, tag: str) -> dict:
    return load(svc, "--rate", str(rate), "--duration", str(seconds), "--warmup", "3", tag=tag)


def sweep(svc: Service, rates: str, seconds: float, slo: float) -> dict:
    return load(svc, "--sweep", rates, "--duration", str(seconds), "--warmup", "2",
                "--slo-ms", str(slo), tag="sweep")


def saturate(svc: Service, seconds: float, clients: int = 4) -> dict:
    return load(svc, "--closed", str(clients), "--duration", str(seconds), "--warmup", "3", tag="sat")

