"""scripts.ops.healthcheck: ready only with READY workers and a working prediction; exit codes for
container and Kubernetes probes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from scripts.ops import serve
from tests.support.servers import MODEL, free_ports, serving

pytestmark = pytest.mark.e2e


def probe(workdir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.ops.healthcheck", *args,
                           "--workdir", str(workdir)], capture_output=True, text=True, timeout=60)


def test_ready_and_live_on_a_serving_model(server):
    done = probe(server.workdir, "ready")
    assert done.returncode == 0 and "prediction ok" in done.stdout, done.stderr
    assert probe(server.workdir, "live").returncode == 0


def test_not_ready_while_serve_warms_up(server):
    """`serve start` keeps WORKDIR/warm_up.pending until its warm-up is done: a server whose
    workers are READY is not ready yet while it is there."""
    pending = server.workdir / serve.WARM_UP_PENDING
    pending.touch()
    try:
        done = probe(server.workdir, "ready")
        assert done.returncode == 1 and "warming up" in done.stderr, done.stderr
    finally:
        pending.unlink()
    assert probe(server.workdir, "ready").returncode == 0


# `serve start` (the CLI, as `make serve` runs it) on free ports instead of 8080-8082: the same
# main(), with the module's default ports replaced before it reads them.
SERVE_START = """
import sys
from scripts.ops import serve
serve.DEFAULT_PORTS = serve.free_ports()
sys.exit(serve.main(["start", "--workdir", sys.argv[1], "--model-store", sys.argv[2]]))
"""


def test_serve_start_keeps_the_pending_file_through_its_warm_up(tmp_path, default_mar):
    """The pending file is serve's own: created before the workers are READY, still there while
    they are READY and the warm-up runs (the probe then says warming up), gone when serve
    announces the server."""
    pending = tmp_path / serve.WARM_UP_PENDING
    proc = subprocess.Popen([sys.executable, "-c", SERVE_START, str(tmp_path), str(default_mar.parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if pending.exists():
                seen.setdefault("pending", time.monotonic())
                if "ready_while_pending" not in seen and (tmp_path / "key_file.json").exists():
                    try:
                        ready = serve.TorchServeClient.from_workdir(tmp_path).ready_workers(MODEL)
                    except Exception:  # the frontend is not listening yet
                        ready = 0
                    if ready:
                        seen["ready_while_pending"] = ready
                        seen["probe"] = probe(tmp_path, "ready")
            elif "pending" in seen:
                seen.setdefault("gone", time.monotonic())
            time.sleep(0.05)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, out
        assert "pending" in seen and seen.get("ready_while_pending"), (seen, out)
        during = seen["probe"]
        assert during.returncode == 1 and "warming up" in during.stderr, (during.stdout, during.stderr)
        assert not pending.exists() and "warmed up with" in out and "TorchServe is serving" in out, out
        assert probe(tmp_path, "ready").returncode == 0  # and, the file gone, it is ready
    finally:
        if proc.poll() is None:
            proc.kill()
        serve.stop(tmp_path, grace=10)


def test_not_ready_below_the_required_workers(server):
    done = probe(server.workdir, "ready", "--min-workers", "3")
    assert done.returncode == 1 and "2 READY workers of 3" in done.stderr


def test_unreachable_server(tmp_path):
    assert probe(tmp_path, "ready").returncode == 2  # no config.properties at all
    port = free_ports(1)[0]
    (tmp_path / "config.properties").write_text(
        "".join(f"{k}=http://127.0.0.1:{port}\n"
                for k in ("inference_address", "management_address", "metrics_address")))
    (tmp_path / "key_file.json").write_text(json.dumps(
        {"management": {"key": "k"}, "inference": {"key": "k"}}))
    for kind in ("ready", "live"):
        done = probe(tmp_path, kind)
        assert done.returncode == 2 and "unreachable" in done.stderr


LOAD_REFUSED = "environment variable HANDLER_THREADS"


@pytest.fixture(scope="module")
def crash_looping(tmp_path_factory, default_mar):
    """A TorchServe whose only model fails to load on every try: its workers inherit a handler
    setting that does not parse (HANDLER_THREADS=two, refused by the strict settings reader at
    initialize), so they never become READY. An altered archive cannot do it: serve start
    refuses that before TorchServe runs."""
    workdir = tmp_path_factory.mktemp("broken_ts")
    # min_ready=0: no worker ever turns READY; wait only until the frontend lists the model.
    with serving(workdir, default_mar.parent, f"{MODEL}={default_mar.name}", min_ready=0,
                 env={"HANDLER_THREADS": "two"}) as srv:
        log = workdir / "logs" / "model_log.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until a worker has tried to load and failed
            if log.is_file() and LOAD_REFUSED in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        yield srv


def test_crash_looping_model_is_not_ready_although_ping_is_healthy(crash_looping):
    log = (crash_looping.workdir / "logs" / "model_log.log").read_text(errors="replace")
    assert LOAD_REFUSED in log  # the workers really failed to load
    ping = crash_looping.client.ping()
    assert ping.status_code == 200 and json.loads(ping.text)["status"] == "Healthy"
    assert crash_looping.client.ready_workers(MODEL) == 0
    done = probe(crash_looping.workdir, "ready")
    assert done.returncode == 1 and "0 READY workers" in done.stderr, done.stdout + done.stderr
    assert probe(crash_looping.workdir, "live").returncode == 0  # the frontend itself is up


def test_under_traffic_readiness_comes_from_the_counters_not_a_queued_prediction(server, photos):
    """Requests answered since the previous probe prove the model answers: the probe does not
    queue its own prediction behind the traffic it is judging."""
    probe(server.workdir, "ready")  # sets the baseline
    image = photos["cat.jpg"].read_bytes()
    for _ in range(3):
        assert server.client.predict(MODEL, image).status_code == 200
    deadline = time.monotonic() + 10  # the frontend's counters follow the worker's metric log
    while True:
        done = probe(server.workdir, "ready")
        if "answered since the last probe" in done.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done.returncode == 0 and "answered since the last probe" in done.stdout, done.stdout


def test_requests_received_and_none_answered_is_not_ready(server):
    received, answered = serve.in_flight(server.client.metrics())
    state = server.workdir / "health_state.json"
    state.write_text(json.dumps({"received": received - 5, "answered": answered}))
    done = probe(server.workdir, "ready")
    assert done.returncode == 1 and "none answered" in done.stderr, (done.stdout, done.stderr)
    state.unlink()
