"""The client library (client/, image_classifier_client) and its `classify` CLI.

End to end against a real TorchServe (the shared `server`): v1 and v2 predictions with the
expected top-1, the async client, the CLI's output and exit codes, a key renewal survived, bad
images as typed 4xx errors with the server's message, and the package installed into a fresh
venv with nothing but its own dependency. A local stub stands in for TorchServe only where a
real one cannot produce the case on demand; each stub test says why.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest
from image_classifier_client import (
    AsyncClient,
    AuthError,
    Client,
    ClientError,
    Overloaded,
    RetryPolicy,
    Unavailable,
    contract,
)
from image_classifier_client.keys import KeySource
from image_classifier_client.wire import content_type

from scripts.ops import torchserve_http
from scripts.ops.server_config import KEY_FILE
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.servers import MODEL, ROOT

PHOTOS = ("cat", "coffee", "rocket", "temple")
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
    which a real server gives only by chance (tests/test_recovery.py); here exactly twice."""
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
    run in five of tests/test_manage_scale.py)."""
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


# ---- end to end: a real TorchServe ----------------------------------------------------------

def key_file_of(server) -> Path:
    return server.workdir / KEY_FILE


@pytest.fixture(scope="module")
def jpegs(photos) -> dict[str, bytes]:
    return {name: photos[f"{name}.jpg"].read_bytes() for name in PHOTOS}


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_predictions_top1_in_both_protocols(server, jpegs, protocol):
    with Client(server.client.inference_url, key_file=key_file_of(server), protocol=protocol) as client:
        for name in PHOTOS:
            result = client.classify(jpegs[name], MODEL, top_k=3)
            assert result.top1.index in EXPECTED_TOP1[name], (name, result)
            assert result.model == MODEL and result.protocol == protocol and len(result.predictions) == 3
            assert result.predictions[0].probability >= result.predictions[1].probability


@pytest.mark.e2e
def test_async_client_concurrent(server, jpegs):
    async def run() -> list:
        async with AsyncClient(server.client.inference_url, key_file=key_file_of(server)) as client:
            return await asyncio.gather(*(client.classify(jpegs[n], MODEL, protocol=p)
                                          for n in PHOTOS for p in ("v1", "v2")))

    results = asyncio.run(asyncio.wait_for(run(), 60))
    assert [r.top1.index in EXPECTED_TOP1[n] for r, n in zip(results, [n for n in PHOTOS for _ in "12"])] \
        == [True] * 8


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_bad_images_are_typed_client_errors_with_the_servers_message(server, jpegs, protocol):
    with Client(server.client.inference_url, key_file=key_file_of(server), protocol=protocol) as client:
        with pytest.raises(ClientError) as err:
            client.classify(b"not an image", MODEL)
        assert (err.value.status, err.value.error_type) == (415, "UnsupportedMediaType")
        assert "not a recognised image" in err.value.message
        with pytest.raises(ClientError) as err:
            client.classify(jpegs["cat"][:3000], MODEL)  # a JPEG cut short
        assert (err.value.status, err.value.error_type) == (400, "CorruptImage")
        with pytest.raises(ClientError) as err:
            client.classify(jpegs["cat"], "no_such_model")
        assert err.value.status == 404 and err.value.attempts == 1


@pytest.mark.e2e
def test_key_renewal_survived(server, jpegs):
    key_file = key_file_of(server)
    with Client(server.client.inference_url, key_file=key_file) as client:
        assert client.classify(jpegs["cat"], MODEL).top1.index in EXPECTED_TOP1["cat"]
        old = json.loads(key_file.read_text())["inference"]["key"]
        rotated = subprocess.run([sys.executable, "-m", "scripts.ops.keys", "rotate", "--workdir",
                                  str(server.workdir)], cwd=ROOT, capture_output=True, text=True,
                                 timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        assert json.loads(key_file.read_text())["inference"]["key"] != old
        assert client.classify(jpegs["coffee"], MODEL).top1.index in EXPECTED_TOP1["coffee"]
    with Client(server.client.inference_url, key=old) as stale, pytest.raises(AuthError):
        stale.classify(jpegs["cat"], MODEL)  # the old key is gone: the renewal was real


def classify(*args: str, env: dict | None = None, exe: str | None = None) -> subprocess.CompletedProcess:
    cmd = [exe] if exe else [sys.executable, "-m", "image_classifier_client"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **(env or {})})


@pytest.mark.e2e
def test_cli_table_json_and_exit_codes(server, photos, tmp_path):
    url, key = server.client.inference_url, str(key_file_of(server))
    done = classify(str(photos["cat.jpg"]), str(photos["coffee.jpg"]), "--url", url, "--model", MODEL,
                    "--key-file", key, "--top-k", "2")
    assert done.returncode == 0, done.stderr
    assert "cat.jpg" in done.stdout and "coffee.jpg" in done.stdout and "prob" in done.stdout
    assert len([line for line in done.stdout.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 4
    done = classify(str(photos["cat.jpg"]), "--url", url, "--model", MODEL, "--protocol", "v2", "--json",
                    env={"IMAGE_CLASSIFIER_KEY_FILE": key})
    [entry] = json.loads(done.stdout)
    assert done.returncode == 0 and entry["protocol"] == "v2"
    assert entry["predictions"][0]["index"] in EXPECTED_TOP1["cat"] and len(entry["predictions"]) == 5
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    done = classify(str(bad), str(photos["cat.jpg"]), "--url", url, "--model", MODEL, "--key-file", key)
    assert done.returncode == ClientError.exit_code and "UnsupportedMediaType" in done.stderr
    assert "cat.jpg" in done.stdout  # a refused photo does not stop the others
    wrong = tmp_path / KEY_FILE
    wrong.write_text(json.dumps({"inference": {"key": "wrong"}}))
    done = classify(str(photos["cat.jpg"]), "--url", url, "--model", MODEL, "--key-file", str(wrong))
    assert done.returncode == AuthError.exit_code and "refused" in done.stderr
    done = classify(str(photos["cat.jpg"]), "--url", "http://127.0.0.1:1", "--model", MODEL,
                    "--timeout", "2")  # port 1: nothing listens there, every connect is refused
    assert done.returncode == Unavailable.exit_code and "3 attempt" in done.stderr, done.stderr
    done = classify(str(tmp_path / "missing.jpg"), "--url", url, "--model", MODEL)
    assert done.returncode == 1


# ---- the package on its own: a fresh venv, its one dependency ------------------------------

@contextmanager
def fresh_venv(tmp: Path) -> Iterator[Path]:
    """A venv without the system's packages, holding only the client and what it requires,
    installed from wheels built and collected here (pip wheel: the client, httpx at the version
    this environment runs, their dependencies), then with --no-index."""
    wheels, env, source = tmp / "wheels", tmp / "venv", tmp / "client"
    # A copy: setuptools builds in the source folder, and the checkout stays as it is.
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "-w",
                            str(wheels), str(source), f"httpx=={metadata.version('httpx')}"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    venv.create(env, with_pip=True, system_site_packages=False)
    installed = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                                "--find-links", str(wheels), "image-classifier-client"],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    yield env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Path]:
    with fresh_venv(tmp_path_factory.mktemp("client_install")) as env:
        yield env


def test_installs_alone_into_a_fresh_venv(installed):
    done = classify("--help", exe=str(installed / "bin" / "classify"))
    assert done.returncode == 0 and "--key-file" in done.stdout and "Exit status" in done.stdout
    listed = subprocess.run([str(installed / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"image-classifier-client", "httpx"} <= names
    assert not names & {"requests", "torch", "torchserve", "pillow"}  # only its own dependencies


@pytest.mark.e2e
def test_the_installed_cli_classifies(installed, server, photos):
    done = classify(str(photos["cat.jpg"]), "--url", server.client.inference_url, "--model", MODEL,
                    "--json", env={"IMAGE_CLASSIFIER_KEY_FILE": str(key_file_of(server))},
                    exe=str(installed / "bin" / "classify"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["predictions"][0]["index"] in EXPECTED_TOP1["cat"]
