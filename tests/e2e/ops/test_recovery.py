"""Crash recovery and graceful stop on a real TorchServe.

- kill -9 one worker under steady load: TorchServe restarts it; every request gets an explicit
  status (none hangs or vanishes); we measure failures and the time until READY again.
- `python -m scripts.ops.serve stop` (what `make stop` runs) lets in-flight requests finish.
Figures are printed (pytest -s) and reported in README "Operating it".
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from image_classifier_client.contract import lost

from scripts.ops import manage
from tests.support.inflight import burst, slow_photo
from tests.support.servers import MODEL, serving

pytestmark = pytest.mark.e2e

RATE = 20          # requests per second, sent on schedule (open loop)
TIMEOUT = 30.0     # per request: a request without an answer by then counts as hung


@pytest.fixture(scope="module")
def srv(tmp_path_factory, default_mar):
    with serving(tmp_path_factory.mktemp("recovery_ts"), default_mar.parent, min_ready=2) as server:
        yield server


def send(srv, image: bytes) -> tuple[object, object]:
    """(first outcome, outcome after one retry of a request whose worker died)."""
    outcomes: list[object] = []
    for _ in range(2):
        try:
            resp = srv.client.predict(MODEL, image)
            outcomes.append(resp.status_code)
            if not lost(resp.status_code, resp.text):
                break
        except requests.RequestException as exc:
            outcomes.append(type(exc).__name__)
            break
    return outcomes[0], outcomes[-1]


def kill_one_worker_under_load(srv, image: bytes, workers: int) -> dict:
    manage.scale(srv.client, MODEL, workers, workers)
    srv.client.timeout = TIMEOUT
    victim = srv.client.workers(MODEL)[0]["pid"]
    futures, killed_at, ready_at = [], None, None
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        for i in range(RATE * 60):  # bounded: at most 60 s of load
            time.sleep(max(0.0, start + i / RATE - time.monotonic()))
            futures.append(pool.submit(send, srv, image))
            now = time.monotonic()
            if killed_at is None and now - start >= 2:
                os.kill(victim, signal.SIGKILL)
                killed_at = now
            elif killed_at is not None and ready_at is None and i % 2 == 0:
                pids = [w["pid"] for w in srv.client.workers(MODEL) if w["status"] == "READY"]
                if len(pids) >= workers and victim not in pids:
                    ready_at = time.monotonic()
            if ready_at is not None and now - ready_at >= 1:
                break
        done, pending = concurrent.futures.wait(futures, timeout=2 * TIMEOUT + 10)
    first = [f.result()[0] for f in done]
    final = [f.result()[1] for f in done]
    failed = [o for o in first if o != 200]
    return {"workers": workers, "sent": len(futures), "answered": len(done),
            "vanished": len(pending), "hung": first.count("ReadTimeout") + final.count("ReadTimeout"),
            "failed": len(failed), "failures": {str(o): failed.count(o) for o in set(failed)},
            "failed_after_one_retry": sum(o != 200 for o in final),
            "ready_again_s": None if ready_at is None else round(ready_at - killed_at, 1)}


# Two workers first: the module's server starts with two, and scaling down is quick.
@pytest.mark.parametrize("workers", [2, 1])
def test_worker_killed_under_load_is_restarted(srv, photos, workers):
    figures = kill_one_worker_under_load(srv, photos["cat.jpg"].read_bytes(), workers)
    print(f"\nrecovery figures: {figures}")
    assert figures["ready_again_s"] is not None and figures["ready_again_s"] < 45, figures
    assert figures["vanished"] == 0 and figures["hung"] == 0, figures
    # Every failure is an explicit HTTP status ("Worker died."), never a dropped connection.
    assert all(k in ("500", "507") for k in figures["failures"]), figures
    # Only the batch the killed worker held fails (batchSize 4); resent once, each succeeds:
    # the other worker serves on, or the request waits in the queue for the restarted one.
    assert figures["failed"] <= 4 and figures["failed_after_one_retry"] == 0, figures
    assert srv.client.ready_workers(MODEL) == workers


def test_graceful_stop_lets_in_flight_requests_finish(srv):
    """Runs last in this module: it stops the module's server (one worker left, so most of the
    in-flight requests are queued, not running, when the stop begins). A burst of slow requests
    (tests/support/inflight.py); the stop starts once at least 8 are written and unanswered."""
    times: dict[str, float] = {}

    def stop() -> subprocess.CompletedProcess:
        times["t0"] = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "scripts.ops.serve", "stop",  # = make stop
                               "--workdir", str(srv.workdir)], capture_output=True, text=True, timeout=90)
        times["took"] = time.monotonic() - times["t0"]
        return done

    result = burst(f"{srv.client.inference_url}/predictions/{MODEL}", slow_photo(),
                   lambda: srv.client.auth_headers("inference"), stop, n=16, min_outstanding=8)
    done = result.signal_result
    print(f"\ngraceful stop: {result.in_flight_at_signal} of {result.sent} requests in flight at "
          f"the stop, answered {sorted(map(str, set(result.statuses)))}, stop took {times['took']:.1f} s")
    assert done.returncode == 0 and "TorchServe stopped." in done.stdout, done.stdout + done.stderr
    assert result.in_flight_at_signal >= 8, result  # written, unanswered when the stop began
    assert result.all_ok, result.statuses  # every one of them answered 200
    assert times["took"] < 30
    with pytest.raises(OSError):  # and the server is gone
        socket.create_connection(("127.0.0.1", int(srv.client.inference_url.rsplit(":", 1)[1])), 2)
