"""Servers under test and the load put on them: each service started on free loopback ports
(a TorchServe of ours or stock, the container, or a peer in its own process), loaded by
scripts.bench.load.loadtest in its own process, its backlog drained after each window.

Kinds: torchserve (ours, stock), container (the runtime image, as the README runs it),
fastapi (fastapi_peer.py), triton (triton_peer.py: pytriton's callable), triton_repo (our archive as a
Triton model repository, scripts.deploy.triton_repo, served by scripts.deploy.triton_server), batching
(batching_peer.py, BentoML), floor
(floor.py, no model: the load generator's own floor). A service with `shares` measures another
one's server (ours in the v2 protocol)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.bench.load.loadtest import Sender, Target, request_bodies
from scripts.bench.workspace import BENCH, log, photos
from scripts.ops import serve
from scripts.ops.server_config import KEY_FILE


@dataclass
class Service:
    label: str
    kind: str
    model: str
    mar: Path | None = None
    protocol: str = "raw"
    knobs: dict = field(default_factory=dict)  # the peer's batching settings, stated in the report
    env: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    shares: Service | None = None
    model_dir: Path | None = None  # the unpacked archive a peer serves
    server: serve.Server | None = None
    proc: subprocess.Popen | None = None
    box: object | None = None  # scripts.deploy.container.Container
    url: str | None = None
    key_file: Path | None = None

    @property
    def workdir(self) -> Path:
        return BENCH / "servers" / (self.shares or self).label


def start(svc: Service, workers: int = 2) -> None:
    if svc.shares is not None:
        return
    shutil.rmtree(svc.workdir, ignore_errors=True)
    svc.workdir.mkdir(parents=True, exist_ok=True)
    port = serve.free_ports(1)[0]
    if svc.kind == "torchserve":
        start_torchserve(svc, workers)
    elif svc.kind == "container":
        start_container(svc, workers)
    elif svc.kind == "fastapi":
        from scripts.bench.peers import fastapi_peer

        svc.proc = fastapi_peer.start(svc.model_dir, port, workers)
        svc.url = f"http://127.0.0.1:{port}/predictions/{svc.model}"
    elif svc.kind == "triton":
        from scripts.bench.peers import triton_peer

        svc.proc = triton_peer.start(svc.model_dir, port, **svc.knobs)
        svc.url = triton_peer.url(port, svc.model)
    elif svc.kind == "triton_repo":
        start_triton_repo(svc, port)
    elif svc.kind == "batching":
        from scripts.bench.peers import batching_peer

        svc.proc = batching_peer.start(svc.model_dir, port, **svc.knobs)
        svc.url = batching_peer.url(port, svc.model)
    elif svc.kind == "floor":
        from scripts.bench.peers import floor

        svc.proc = floor.start(port)
        svc.url = f"http://127.0.0.1:{port}/predictions/{svc.model}"
    else:
        raise ValueError(f"unknown service kind {svc.kind!r}")
    log(f"{svc.label}: READY ({svc.kind}{', ' + str(svc.knobs) if svc.knobs else ''})")


def start_torchserve(svc: Service, workers: int) -> None:
    svc.server = serve.start(svc.workdir, models=f"{svc.model}={svc.mar.name}", ports=serve.free_ports(),
                             model_store=svc.mar.parent, overrides=svc.overrides, env=svc.env)
    try:
        # Warmed up as `serve start` does, so the first measured window is not the frontend's
        # cold start (RELIABILITY.md); the stock handler gets the same requests.
        serve.wait_ready(svc.server, svc.model, min_ready=workers, timeout=240, progress=False, warm=True)
    except BaseException:
        serve.stop(svc.workdir, grace=5)
        raise


def start_triton_repo(svc: Service, port: int) -> None:
    """The archive written as a Triton model repository (its knobs: instances, max_batch,
    delay_us) and served by the bundled tritonserver."""
    from scripts.bench.peers import peer_env, triton_peer
    from scripts.deploy import triton_repo, triton_server

    repository = svc.workdir / "repository"
    triton_repo.write_repository(svc.mar, repository, **svc.knobs)
    svc.proc = triton_server.start(repository, port, svc.model, peer_env.ensure(progress=False),
                                   log_path=svc.workdir / "tritonserver.log")
    svc.url = triton_peer.url(port, svc.model)


def start_container(svc: Service, workers: int) -> None:
    """The image as the README runs it (read-only, tmpfs, ports on loopback), its keys copied out."""
    from scripts.deploy.container import run_container

    svc.box = run_container(f"bench-{svc.label}", svc.workdir)
    try:
        svc.box.wait_ready(svc.model, min_ready=workers)
    except BaseException:
        svc.box.remove()
        raise
    svc.url = f"http://127.0.0.1:{svc.box.ports[0]}/predictions/{svc.model}"
    svc.key_file = svc.workdir / KEY_FILE


def stop(services: list[Service]) -> None:
    for svc in services:
        if svc.proc is not None:
            from scripts.bench.peers import batching_peer, fastapi_peer, triton_peer

            # every peer runs in its own process group; Triton's and BentoML's stop theirs whole
            stopper = {"triton": triton_peer.stop, "triton_repo": triton_peer.stop,
                       "batching": batching_peer.stop}
            stopper.get(svc.kind, fastapi_peer.stop)(svc.proc)
            svc.proc = None
        if svc.box is not None:
            svc.box.remove()
            svc.box = None
        if svc.server is not None:
            serve.stop(svc.workdir, grace=10, drain_timeout=5)
            svc.server = None


def target(svc: Service, timeout: float = 10.0) -> Target:
    base = svc.shares or svc
    if base.url:
        return Target(base.url, base.key_file, timeout, svc.protocol)
    return Target.from_workdir(svc.workdir, svc.model, timeout, svc.protocol)


def load(svc: Service, *args: str, tag: str) -> dict:
    """One loadtest.py run in its own process; returns its JSON report."""
    base = svc.shares or svc
    if base.box is not None:
        base.box.copy_keys()  # the container renews its keys on its own tmpfs
    out = BENCH / "runs" / f"{svc.label}-{tag}-{time.time_ns()}.json"
    where = (["--url", base.url] + (["--key-file", str(base.key_file)] if base.key_file else [])
             if base.url else ["--workdir", str(svc.workdir), "--model", svc.model])
    cmd = [sys.executable, "-m", "scripts.bench.load.loadtest", *where, "--protocol", svc.protocol,
           "--images", str(photos()), "--out", str(out), "--quiet", *args]
    # Exit 1 means a missed target (the stock handler misses most): the figures are the result.
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, timeout=1800)
    if proc.returncode not in (0, 1) or not out.is_file():
        raise RuntimeError(f"loadtest failed (exit {proc.returncode}) against {svc.label}")
    report = json.loads(out.read_text())
    settle(svc)
    lat = report.get("latency_ms", {})
    if report.get("mode") == "sweep":
        steps = ", ".join(f"{s['offered_rps']:g}: {s['latency_ms']['p99']}" for s in report["steps"])
        log(f"{svc.label} {tag}: max rps with p99 under SLO = {report['max_rps_under_slo']} (p99s {steps})")
    else:
        log(f"{svc.label} {tag}: {report['achieved_rps']} rps, p50 {lat['p50']} p99 {lat['p99']} "
            f"p99.9 {lat['p99.9']} max {lat['max']} ms, errors {report['errors']} "
            f"{report['errors_by_status'] or ''}")
    return report


def settle(svc: Service, timeout: float = 120.0) -> None:
    """Wait out the backlog an overload left behind: client timeouts do not cancel queued jobs,
    and a server still working through them would steal the cores from the next measurement.
    The queues are FIFO, so a probe request answers once what was ahead of it is done."""
    t0 = time.monotonic()
    body = request_bodies([next(photos().iterdir()).read_bytes()], svc.protocol)[0]
    status = Sender(target(svc, timeout)).post(body)
    if time.monotonic() - t0 > 1:
        log(f"{svc.label}: backlog drained in {time.monotonic() - t0:.0f} s (probe {status})")


def at_rate(svc: Service, rate: float, seconds: float, tag: str, warmup: float = 5) -> dict:
    return load(svc, "--rate", str(rate), "--duration", str(seconds), "--warmup", str(warmup), tag=tag)




def saturate(svc: Service, seconds: float, clients: int = 8) -> dict:
    return load(svc, "--closed", str(clients), "--duration", str(seconds), "--warmup", "3", tag="sat")
