"""The client library (client/, image_classifier_client) without a TorchServe.

Its resend rules, against a local stub answering each request as scripted: it stands in for
TorchServe only where a real one cannot produce the case on demand, and each stub test says why.
"Worker died." is resent with backoff within the budget, then Unavailable; a full queue (503) is
never resent, a short Retry-After is honoured and a long one reported; a reset connection is
resent and the total time bounded; a refused key is read again once, then AuthError (a fixed key:
no resend). The project's own client (scripts/ops/torchserve_http.py) resends through the same
contract.

Also: the key file read again when it changes, the content type told from the bytes, and the
package installed into a fresh venv with nothing but its own dependency.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time

import pytest
from image_classifier_client import (
    AuthError,
    Client,
    Overloaded,
    RetryPolicy,
    Unavailable,
    contract,
)
from image_classifier_client.keys import KeySource
from image_classifier_client.wire import content_type

from scripts.ops import torchserve_http
from scripts.ops.server_config import KEY_FILE
from tests.support.client_cli import classify
from tests.support.servers import MODEL

WORKER_DIED = (500, {"code": 500, "type": "InternalServerError", "message": "Worker died."})


# ---- a scripted stub: only for what a real TorchServe cannot be made to do on demand ----------

class Stub:
    """An HTTP server on loopback answering each request with the next scripted step:
    (status, json_body[, headers]), "reset" (close before any answer) or ("hang", seconds)."""

    def __init__(self, script: list) -> None:
        self.script, self.seen = list(script), []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.seen.append((time.monotonic(), self.path, dict(self.headers), body))
                step = stub.script.pop(0) if stub.script else (200, {})
                if step == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if step[0] == "hang":
                    time.sleep(step[1])
                    return
                status, doc, headers = (*step, {})[:3]
                data = json.dumps(doc).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Stub:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(preds: int = 5) -> dict:
    return {"model": MODEL, "version": "1.0", "predictions": [
        {"index": i, "label": f"class {i}", "probability": 0.5 / (i + 1)} for i in range(preds)]}


JPEG = torchserve_http.sample_jpeg()


def test_lost_answers_are_resent_within_the_budget_then_unavailable():
    """Why a stub: "Worker died." needs a worker killed while it holds this request's batch,
    which a real server gives only by chance (tests/e2e/ops/test_recovery.py); here exactly twice."""
    with Stub([WORKER_DIED, (507, {"message": "Worker died."}), (200, answer())]) as stub:
        with Client(stub.url) as client:
            result = client.classify(JPEG, MODEL)
    assert result.attempts == 3 and result.top1.index == 0
    waits = [b[0] - a[0] for a, b in zip(stub.seen, stub.seen[1:])]
    assert waits[0] >= contract.RESEND_WAIT_S and waits[1] >= 2 * contract.RESEND_WAIT_S  # backoff
    with Stub([WORKER_DIED] * 5) as stub:
        with Client(stub.url) as client, pytest.raises(Unavailable) as err:
            client.classify(JPEG, MODEL)
    assert len(stub.seen) == 1 + contract.RESEND_BUDGET and err.value.attempts == 3


def test_queue_full_is_never_resent_and_retry_after_is_honoured():
    """Why a stub: TorchServe's 503 needs its job queue full (a saturating load, test_overload),
    and TorchServe never sends Retry-After (the balancer's edge does, behind HAProxy)."""
    with Stub([(503, {"message": "Model is overloaded"})]) as stub:
        with Client(stub.url) as client, pytest.raises(Overloaded) as err:
            client.classify(JPEG, MODEL)
    assert len(stub.seen) == 1 and err.value.retry_after is None
    with Stub([(503, {"message": "queue deadline"}, {"Retry-After": "1"}), (200, answer())]) as stub:
        with Client(stub.url) as client:
            assert client.classify(JPEG, MODEL).attempts == 2
    assert stub.seen[1][0] - stub.seen[0][0] >= 0.95
    with Stub([(503, {"message": "later"}, {"Retry-After": "30"})]) as stub:  # longer than allowed
        with Client(stub.url) as client, pytest.raises(Overloaded) as err:
            client.classify(JPEG, MODEL)
    assert len(stub.seen) == 1 and err.value.retry_after == 30


def test_reset_connection_is_resent_and_total_time_is_bounded():
    """Why a stub: TorchServe resets or drops a request only in a scale-down race (about one
    run in five of tests/e2e/ops/test_manage_scale.py)."""
    with Stub(["reset", (200, answer())]) as stub:
        with Client(stub.url) as client:
            assert client.classify(JPEG, MODEL).attempts == 2
    with Stub([("hang", 2.0)] * 4) as stub:
        policy = RetryPolicy(resends=5, total_s=1.0)
        with Client(stub.url, timeout=0.4, retry=policy) as client:
            start = time.monotonic()
            with pytest.raises(Unavailable) as err:
                client.classify(JPEG, MODEL)
    assert time.monotonic() - start < 1.6  # the total budget, not 6 timeouts
    assert 2 <= err.value.attempts <= 3 and set(err.value.resent) == {"ReadTimeout"}


def test_a_refused_key_is_read_again_once_then_auth_error(tmp_path):
    """Why a stub: a refusal that races a renewal (TorchServe drops the old key before it
    rewrites key_file.json) lasts milliseconds on a real server; the stub refuses the old key
    while the test rewrites the file in the client's wait."""
    refused = (400, {"code": 400, "message": "Token Authorization failed. Token either incorrect"})
    key_file = tmp_path / KEY_FILE
    key_file.write_text(json.dumps({"inference": {"key": "old"}}))
    with Stub([refused, (200, answer())]) as stub, Client(stub.url, key_file=key_file) as client:
        # Same size and a restored mtime: only the refusal can make the client read it again.
        stat = key_file.stat()
        threading.Timer(0.05, lambda: (key_file.write_text(json.dumps({"inference": {"key": "new"}})),
                                       os.utime(key_file, ns=(stat.st_atime_ns, stat.st_mtime_ns)))).start()
        assert client.classify(JPEG, MODEL).attempts == 2
    assert [s[2]["Authorization"] for s in stub.seen] == ["Bearer old", "Bearer new"]
    with Stub([refused] * 3) as stub, Client(stub.url, key_file=key_file) as client:
        with pytest.raises(AuthError):
            client.classify(JPEG, MODEL)
    assert len(stub.seen) == 2  # one resend with the key read again, no more
    with Stub([refused] * 3) as stub, Client(stub.url, key="fixed") as client:
        with pytest.raises(AuthError):
            client.classify(JPEG, MODEL)
    assert len(stub.seen) == 1  # a fixed key cannot change: no resend


def test_key_source_reads_the_file_when_it_changes(tmp_path, monkeypatch):
    key_file = tmp_path / KEY_FILE
    key_file.write_text(json.dumps({"inference": {"key": "a"}}))
    keys = KeySource(key_file)
    assert keys.headers() == {"Authorization": "Bearer a"}
    replacement = tmp_path / "new.json"
    replacement.write_text(json.dumps({"inference": {"key": "bb"}}))
    replacement.replace(key_file)  # how a file is rewritten atomically: a new inode
    assert keys.key() == "bb"
    key_file.write_text("{half")  # being written: the last good key stays
    assert keys.key() == "bb"
    monkeypatch.setenv("IMAGE_CLASSIFIER_KEY", "from-env")
    assert KeySource.resolve().key() == "from-env"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"inference": {"key": "c"}}))
    assert KeySource.resolve(key_file=other).key() == "c"  # the caller's choice wins


def test_content_type_is_told_from_the_bytes():
    assert content_type(JPEG) == "image/jpeg"
    assert content_type(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert content_type(b"anything") == "application/octet-stream"  # never urlencoded


def test_the_project_client_resends_through_the_library_contract():
    """scripts/ops/torchserve_http.py's predict(retries=N) takes the library's decisions. Why a stub:
    as above, a "Worker died." on demand."""
    with Stub([WORKER_DIED, (503, {"message": "full"})]) as stub:
        resent: list = []
        ts = torchserve_http.TorchServeClient(stub.url, key_file=None)
        resp = ts.predict(MODEL, JPEG, retries=contract.RESEND_BUDGET, resent=resent)
    assert resp.status_code == 503 and resent == [500] and len(stub.seen) == 2


def test_installs_alone_into_a_fresh_venv(installed_client):
    done = classify("--help", exe=str(installed_client / "bin" / "classify"))
    assert done.returncode == 0 and "--key-file" in done.stdout and "Exit status" in done.stdout
    python = str(installed_client / "bin" / "python")
    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"image-classifier-client", "httpx"} <= names
    assert not names & {"requests", "torch", "torchserve", "pillow"}  # only its own dependencies
