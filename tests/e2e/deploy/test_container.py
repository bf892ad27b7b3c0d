"""The contract against the runtime image (`make image`), run as the README runs it: read-only
root filesystem, tmpfs for run/ and /tmp, ports published on loopback only. One container serves
the whole module; the last tests stop it with SIGTERM and start it again.

No engine or no image fails (tests/support/container.py): `make test` builds the image first.
"""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image

from handler.integrity import sha256_file
from scripts import repo
from scripts.ops import inspect_mar
from scripts.ops.lifecycle import KEY_RENEWER_PID
from scripts.ops.server_config import read_keys
from scripts.packaging.sample_photos import EXPECTED_TOP1, load_photos
from tests.support.answers import HOSTILE_REQUESTS, check_error, check_label, post
from tests.support.container import (
    APP_DIR,
    Container,
    engine_run,
    image_labels,
    image_tag,
    run_container,
)
from tests.support.images import encode
from tests.support.inflight import burst, slow_photo
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e
MAR = repo.MODEL_STORE / f"{MODEL}.mar"
WORKERS = 2  # config.properties default_workers_per_model


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("container_keys")
    box = run_container(f"image-classifier-test-{os.getpid()}", key_dir)
    try:
        took = box.wait_ready(MODEL, WORKERS)
        print(f"\ncontainer start to {WORKERS} READY workers and warmed up: {took:.1f} s")
        yield box
    finally:
        box.remove()


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    return {name: encode(Image.fromarray(arr), "JPEG", quality=95)
            for name, arr in load_photos().items() if name in EXPECTED_TOP1}


def compare_with_archive(box: Container) -> list[str]:
    return inspect_mar.compare_running(box.client.management_url, MODEL, inspect_mar.inspect(MAR),
                                       box.client.keys.key("management"))


def test_image_metadata():
    info = image_labels(image_tag())
    labels = info["Config"]["Labels"]
    assert labels["io.image-classifier.archive.sha256"] == sha256_file(MAR)  # the archive built here
    assert labels["org.opencontainers.image.version"] == image_tag().rsplit(":", 1)[1]
    assert len(labels["org.opencontainers.image.revision"]) >= 40
    assert info["Config"]["User"] == "model-server"
    check = info.get("Healthcheck") or info["Config"].get("Healthcheck")  # podman / docker
    assert "scripts.ops.healthcheck ready" in " ".join(check["Test"]), check


def test_root_filesystem_is_read_only_and_runs_as_non_root(container: Container):
    out = container.exec("sh", "-c", f"id -u; touch {APP_DIR}/x 2>&1; touch /tmp/x && echo tmp-ok")
    assert out.stdout.splitlines()[0] != "0", out.stdout
    assert "Read-only file system" in out.stdout and "tmp-ok" in out.stdout, out.stdout


def test_real_photos_classified(container: Container, jpegs):
    for name, body in jpegs.items():
        check_label(post(container, data=body, headers={"Content-Type": "application/octet-stream"}), name)


@pytest.mark.parametrize("case", sorted(HOSTILE_REQUESTS))
def test_hostile_input_gets_its_4xx(container: Container, case):
    kwargs, status, kind = HOSTILE_REQUESTS[case]
    check_error(post(container, **kwargs), status, kind)


def test_healthcheck_ready(container: Container):
    """The image's own HEALTHCHECK command, run by the engine, and the probe run by hand."""
    assert engine_run("healthcheck", "run", container.name, check=False).returncode == 0
    out = container.exec("python", "-m", "scripts.ops.healthcheck", "ready", "--workdir", "run")
    assert out.returncode == 0 and f"ready: {MODEL}: 2 READY workers" in out.stdout, out.stdout + out.stderr
    # The check reads run/key_file.json: it survives key expiry because the key renewer, started
    # by serve (its pid in run/key_renewer.pid), keeps that file current.
    assert container.process_alive(KEY_RENEWER_PID)


def test_the_keys_are_the_server_users_alone(container: Container):
    """key_file.json is readable by the server's user only (TorchServe writes it rw-------), and
    no process in the container has a key on its command line (/proc/PID/cmdline is world-readable)."""
    assert container.key_file_mode_and_owner() == ("600", "model-server")
    container.copy_keys()
    keys = set(read_keys(container.key_dir / "key_file.json").values())
    assert len(keys) == 3 and all(len(k) >= 8 for k in keys), "no keys read"
    lines = container.command_lines()
    assert any("scripts.ops.keys" in cmd for cmd in lines.values()), lines  # /proc was read
    assert {pid: cmd for pid, cmd in lines.items() if any(k in cmd for k in keys)} == {}


def test_running_container_matches_the_archive(container: Container):
    """inspect_mar compares what the container's worker loaded with the archive file."""
    assert compare_with_archive(container) == []


def scale_and_settle(box: Container, workers: int, timeout: float = 120) -> list[dict]:
    """PUT min/max workers (asynchronous: 202), then wait for exactly `workers` READY ones.

    Not synchronous=true: in the container TorchServe 0.12 answered a synchronous scale-down 500
    "Failed to start workers" although it removed the worker ("WorkerThread interrupted during
    waitFor" in ts_log), so the outcome is read from the worker list instead."""
    client = box.client
    resp = client._send("PUT", f"{client.management_url}/models/{MODEL}", "management",
                        params={"min_worker": workers, "max_worker": workers})
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.workers(MODEL)
        if len(found) == workers and all(w.get("status") == "READY" for w in found):
            return found
        time.sleep(0.5)
    raise AssertionError(f"not {workers} READY workers after {timeout:.0f} s: {client.workers(MODEL)}")


def test_scaling_through_the_management_api(container: Container, jpegs):
    """Up to 3 workers and back to 2 through the management API; it serves on."""
    assert len(scale_and_settle(container, 3)) == 3
    assert len(scale_and_settle(container, WORKERS)) == WORKERS
    check_label(container.client.predict(MODEL, jpegs["cat"]), "cat")


def test_worker_kill_9_inside_the_container_recovers(container: Container, jpegs):
    client = container.client
    victim = int(client.workers(MODEL)[0]["pid"])
    assert container.exec("sh", "-c", f"kill -9 {victim}").returncode == 0
    deadline = time.monotonic() + 120
    pids: set[int] = set()
    while time.monotonic() < deadline:
        workers = client.workers(MODEL)
        pids = {int(w["pid"]) for w in workers if w.get("status") == "READY"}
        if len(pids) == WORKERS and victim not in pids:
            break
        time.sleep(0.5)
    assert len(pids) == WORKERS and victim not in pids, client.workers(MODEL)
    check_label(client.predict(MODEL, jpegs["cat"]), "cat")


def test_sigterm_drains_in_flight_then_restarts_cleanly(container: Container, jpegs):
    """`podman stop` sends SIGTERM to the entrypoint: every request in flight is answered 200,
    the container exits 0; started again, it serves the same archive with new keys. The burst is
    of slow requests (tests/support/inflight.py); the stop is sent once 8 are written and
    unanswered."""
    client = container.client
    result = burst(f"{client.inference_url}/predictions/{MODEL}", slow_photo(),
                   lambda: client.auth_headers("inference"),
                   lambda: engine_run("stop", "-t", "60", container.name, timeout=90, check=False),
                   n=16, min_outstanding=8)
    stop = result.signal_result
    print(f"\npodman stop with {result.in_flight_at_signal} of {result.sent} requests in flight")
    assert stop.returncode == 0, stop.stderr
    assert result.in_flight_at_signal >= 8, result
    assert result.all_ok, result.statuses
    state = container.state()
    assert not state["Running"] and state["ExitCode"] == 0, (state, container.logs())
    old_keys = (container.key_dir / "key_file.json").read_text()

    engine_run("start", container.name)
    took = container.wait_ready(MODEL, WORKERS)
    print(f"\ncontainer restart to {WORKERS} READY workers and warmed up: {took:.1f} s")
    assert (container.key_dir / "key_file.json").read_text() != old_keys  # a fresh tmpfs, new keys
    check_label(client.predict(MODEL, jpegs["cat"]), "cat")
    assert compare_with_archive(container) == []
