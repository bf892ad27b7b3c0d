"""The container's entrypoint (`serve.py --foreground`, its PID 1) run for real: on SIGTERM, as
`docker stop` sends it, the requests in flight are answered, then it exits 0 and TorchServe is
gone; when the Java frontend dies it exits 1 (so an on-failure restart policy restarts the
container) and leaves no worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from scripts.ops import lifecycle, serve
from tests.support.servers import MODEL, ROOT

FOREGROUND = """
import sys
from scripts.ops import serve
from tests.support.servers import start_server
server = start_server({workdir!r}, "{model}={model}.mar", {store!r}, min_ready=1)
print("READY", flush=True)
sys.exit(serve.run_foreground(server))
"""


@pytest.mark.e2e
def test_foreground_entrypoint_drains_on_sigterm(tmp_path, default_mar):
    """The container's PID 1 (serve.py --foreground) on `docker stop`: in-flight requests finish,
    then it exits 0 and TorchServe is gone."""
    code = FOREGROUND.format(workdir=str(tmp_path), model=MODEL, store=str(default_mar.parent))
    # From the repository root, where `tests` is importable as a package.
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "READY"
        from tests.support.inflight import burst, slow_photo

        client = serve.TorchServeClient.from_workdir(tmp_path, timeout=60)
        pgid = lifecycle.read_pid(tmp_path / lifecycle.PID_FILE).pid
        # A burst of slow requests; SIGTERM once at least 8 are written and unanswered.
        result = burst(f"{client.inference_url}/predictions/{MODEL}", slow_photo(),
                       lambda: client.auth_headers("inference"),
                       lambda: proc.send_signal(signal.SIGTERM), n=16, min_outstanding=8)
        assert proc.wait(60) == 0
        print(f"\nSIGTERM with {result.in_flight_at_signal} of {result.sent} requests in flight")
        assert result.in_flight_at_signal >= 8, result
        assert result.all_ok, result.statuses  # every request in flight answered 200
        assert not serve._group(pgid)  # no live process of the server is left
    finally:
        if proc.poll() is None:
            proc.kill()
        serve.stop(tmp_path, grace=5)


@pytest.mark.e2e
def test_foreground_entrypoint_fails_when_the_frontend_dies(tmp_path, default_mar):
    """`torchserve --foreground` exits 0 when its Java frontend dies; the entrypoint exits 1, so a
    restart policy of on-failure restarts the container, and leaves no worker behind."""
    code = FOREGROUND.format(workdir=str(tmp_path), model=MODEL, store=str(default_mar.parent))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "READY"
        pgid = lifecycle.read_pid(tmp_path / lifecycle.PID_FILE).pid
        (java,) = serve._group(pgid, "java")
        os.kill(java, signal.SIGKILL)
        assert proc.wait(60) == 1
        assert "frontend is gone" in proc.stderr.read()
        assert not serve._group(pgid)
    finally:
        if proc.poll() is None:
            proc.kill()
        serve.stop(tmp_path, grace=5)
