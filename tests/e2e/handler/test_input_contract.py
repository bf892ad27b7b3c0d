"""The input contract over HTTP on a real TorchServe: every accepted form gets the right label,
every hostile input its own 4xx with a JSON error, good neighbours in a batch still get their
predictions, and no bad request costs a worker (pids unchanged)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from PIL import Image

from scripts import repo
from scripts.ops import serve
from scripts.ops.server_config import read_properties
from scripts.packaging.sample_photos import EXPECTED_TOP1, load_photos
from tests.support.answers import HOSTILE_REQUESTS, check_error, check_label, post
from tests.support.images import (
    accepted_variants,
    ascii_bmp,
    encode,
    with_orientation,
)
from tests.support.servers import MODEL, free_ports

pytestmark = pytest.mark.e2e

MAX_REQUEST_SIZE = int(read_properties(repo.ROOT / "config.properties")["max_request_size"])


@pytest.fixture(scope="module")
def pictures() -> dict[str, Image.Image]:
    return {name: Image.fromarray(arr) for name, arr in load_photos().items() if name in EXPECTED_TOP1}


@pytest.fixture(scope="module")
def cat_jpeg(pictures) -> bytes:
    return encode(pictures["cat"], "JPEG", quality=95)


@pytest.fixture(scope="module", autouse=True)
def baseline_pids(server) -> list[int]:
    """Worker pids before any hostile input; compared again by the last test of this module."""
    return worker_pids(server, MODEL)


def worker_pids(srv: serve.Server, model: str) -> list[int]:
    workers = srv.client.workers(model)
    assert workers and all(w["status"] == "READY" for w in workers), workers
    return sorted(int(w["pid"]) for w in workers)


# ---- accepted inputs ----

@pytest.mark.parametrize("variant", sorted(accepted_variants(Image.new("RGB", (32, 32)))))
@pytest.mark.parametrize("photo", ["cat", "rocket"])
def test_accepted_formats_and_modes(server, pictures, variant, photo):
    data = accepted_variants(pictures[photo])[variant]
    check_label(post(server, data=data, headers={"Content-Type": "application/octet-stream"}), photo)


def request_forms(jpeg: bytes) -> dict[str, dict]:
    b64 = base64.b64encode(jpeg).decode()
    raw = {"data": jpeg}
    return {
        "image/jpeg": {**raw, "headers": {"Content-Type": "image/jpeg"}},
        "octet-stream": {**raw, "headers": {"Content-Type": "application/octet-stream"}},
        "no content type (curl -T)": raw,
        "wrong type image/png": {**raw, "headers": {"Content-Type": "image/png"}},
        "wrong type text/plain": {**raw, "headers": {"Content-Type": "text/plain"}},
        "wrong type application/json": {**raw, "headers": {"Content-Type": "application/json"}},
        "multipart data": {"files": {"data": ("cat.jpg", jpeg, "image/jpeg")}},
        "multipart other field": {"files": {"file": ("cat.jpg", jpeg, "application/octet-stream")},
                                  "data": {"caption": "my cat"}},
        "json base64": {"json": {"image": b64}},
        "json data url": {"json": {"image": "data:image/jpeg;base64," + b64}},
        "json sent as text/plain": {"data": json.dumps({"image": b64}),
                                    "headers": {"Content-Type": "text/plain"}},
        "base64 text body": {"data": b64, "headers": {"Content-Type": "text/plain"}},
    }


@pytest.mark.parametrize("form", sorted(request_forms(b"")))
def test_request_forms(server, cat_jpeg, form):
    check_label(post(server, **request_forms(cat_jpeg)[form]), "cat")


def test_image_bytes_that_are_valid_utf8_sent_as_text(server, pictures):
    # TorchServe's worker turns a text/* body that is valid UTF-8 into str before our handler.
    bmp = ascii_bmp(pictures["cat"])
    as_text = top5(post(server, data=bmp, headers={"Content-Type": "text/plain; charset=utf-8"}))
    as_image = top5(post(server, data=bmp, headers={"Content-Type": "image/bmp"}))
    assert as_text.keys() == as_image.keys()
    assert all(abs(as_text[i] - as_image[i]) < 1e-3 for i in as_image), (as_text, as_image)


def top5(resp: requests.Response) -> dict[int, float]:
    assert resp.status_code == 200, resp.text
    return {p["index"]: p["probability"] for p in resp.json()["predictions"]}


def test_exif_orientation_is_honoured(server, pictures):
    # The stored pixels lie on their side; EXIF orientation 6 says "turn 90 degrees clockwise".
    stored = pictures["cat"].transpose(Image.Transpose.ROTATE_90)
    jpeg = with_orientation(stored, 6)
    decoded = Image.open(io.BytesIO(jpeg))
    decoded.load()
    upright = encode(decoded.transpose(Image.Transpose.ROTATE_270), "PNG")  # same pixels, lossless
    sideways = encode(decoded, "PNG")
    octet = {"Content-Type": "application/octet-stream"}
    with_exif = top5(post(server, data=jpeg, headers=octet))
    reference = top5(post(server, data=upright, headers=octet))
    ignored = top5(post(server, data=sideways, headers=octet))
    assert with_exif.keys() == reference.keys()
    assert all(abs(with_exif[i] - reference[i]) < 1e-3 for i in reference), (with_exif, reference)
    # The check can tell the difference: the sideways picture scores differently.
    assert ignored != reference and max(
        abs(ignored.get(i, 0.0) - p) for i, p in reference.items()) > 1e-3


# ---- hostile inputs: each gets its 4xx and a JSON error ----

@pytest.mark.parametrize("case", sorted(HOSTILE_REQUESTS))
def test_hostile_input_gets_its_4xx(server, case):
    kwargs, status, kind = HOSTILE_REQUESTS[case]
    check_error(post(server, **kwargs), status, kind)


def early_status(host: str, port: int, head: bytes, body: bytes = b"") -> tuple[bytes, int]:
    """(status line, body bytes written) of a request whose body a thread writes while this one
    reads: the answer TorchServe sends from the headers is read even when it then closes the
    connection under the writer (a reset on the writing side is the expected end)."""
    written = [0]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)

        def write() -> None:
            try:
                for at in range(0, len(body), 65536):
                    written[0] += sock.send(body[at:at + 65536])
            except OSError:
                pass  # the frontend answered and closed: what this request is for

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        writer.join(timeout=30)
    return answer.split(b"\r\n", 1)[0], written[0]


def test_body_over_max_request_size_gets_413(server, cat_jpeg):
    # TorchServe's frontend answers 413 from the Content-Length header, before reading the body
    # (its answer has an empty body: the handler never sees the request).
    host, port = server.client.inference_url.removeprefix("http://").split(":")
    auth = server.client.auth_headers("inference")["Authorization"]

    def head(length: int, expect: str = "") -> bytes:
        return (f"POST /predictions/{MODEL} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: {auth}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {length}\r\n{expect}\r\n").encode()

    for expect in ("", "Expect: 100-continue\r\n"):  # headers alone, no body sent
        status_line, _ = early_status(host, int(port), head(MAX_REQUEST_SIZE + 1, expect))
        assert status_line.split()[1] == b"413", status_line
    # The whole body, one byte over the limit, written while the answer is read: 413 still.
    body = (cat_jpeg * (MAX_REQUEST_SIZE // len(cat_jpeg) + 1))[:MAX_REQUEST_SIZE + 1]
    status_line, written = early_status(host, int(port), head(len(body)), body)
    assert status_line.split()[1] == b"413", (status_line, written)
    # Half of it is read whole and reaches the handler (which judges the image), on the same path.
    # (Exactly max_request_size bytes were answered 413 too: the frontend's bound is not inclusive.)
    half = body[:MAX_REQUEST_SIZE // 2]
    status_line, written = early_status(host, int(port), head(len(half)), half)
    assert written == len(half) and status_line.split()[1] != b"413", (status_line, written)
    check_label(post(server, data=cat_jpeg, headers={"Content-Type": "image/jpeg"}), "cat")


def test_form_urlencoded_body_is_refused_by_the_frontend(server, cat_jpeg):
    # Not ours to fix: TorchServe's frontend parses form-urlencoded bodies itself and fails
    # (HTTP 500) before any handler runs. The README tells clients to send a Content-Type.
    resp = post(server, data=cat_jpeg, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 500 and resp.json()["type"] == "ErrorDataDecoderException", resp.text


def test_concurrent_mix_of_good_and_bad(server, pictures):
    """Good and bad requests interleaved from 12 threads while the model batches (batchSize 4)."""
    good = [(encode(pictures[name], "JPEG", quality=90), name) for name in sorted(pictures)]
    bad = sorted(HOSTILE_REQUESTS)
    jobs = []
    for i in range(32):
        if i % 2:
            jobs.append(("bad", bad[i // 2 % len(bad)]))
        else:
            jobs.append(("good", i // 2 % len(good)))

    def run(job):
        kind, key = job
        if kind == "good":
            data, name = good[key]
            return job, post(server, data=data, headers={"Content-Type": "image/jpeg"})
        return job, post(server, **HOSTILE_REQUESTS[key][0])

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(run, jobs))
    for (kind, key), resp in results:
        if kind == "good":
            check_label(resp, good[key][1])
        else:
            _, status, error_type = HOSTILE_REQUESTS[key]
            check_error(resp, status, error_type)


# ---- a real batch of 8 on a server of our own ----

@pytest.fixture(scope="module")
def batch8_server(tmp_path_factory):
    """One worker, batchSize 8 and a long maxBatchDelay, so 8 concurrent requests form one batch."""
    name = f"{MODEL}_batch8"
    tmp = tmp_path_factory.mktemp("batch8")
    config = yaml.safe_load((repo.CONFIG_DIR / MODEL / "model-config.yaml").read_text())
    config.update(batchSize=8, maxBatchDelay=3000, minWorkers=1, maxWorkers=1)
    (tmp / "model-config.yaml").write_text(yaml.safe_dump(config))
    from scripts.packaging import package
    from scripts.packaging.plan import PackagingInputs

    try:
        package.package(PackagingInputs(MODEL, model_name=name, model_config=tmp / "model-config.yaml",
                                        export_dir=tmp / "store"))
    finally:
        shutil.rmtree(repo.BUILD_DIR / name, ignore_errors=True)
    workdir = tmp / "server"
    srv = serve.start(workdir, models=f"{name}={name}.mar", ports=free_ports(), model_store=tmp / "store")
    try:
        serve.wait_ready(srv, name, min_ready=1, timeout=180, progress=False)
        yield srv, name
    finally:
        serve.stop(workdir, grace=10)


def batches_received(srv: serve.Server) -> int:
    """Batches the worker has taken: TorchServe logs one line per inference message."""
    log = srv.workdir / "logs" / "model_log.log"
    return log.read_text().count("Backend received inference") if log.is_file() else 0


def settled_batches(srv: serve.Server, timeout: float = 10.0) -> int:
    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:  # the log is written asynchronously
        now = batches_received(srv)
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    return last


def send_together(srv: serve.Server, model: str, requests_kwargs: list[dict]) -> list:
    barrier = threading.Barrier(len(requests_kwargs))

    def run(kwargs):
        barrier.wait(timeout=30)
        return post(srv, model, **kwargs)

    with ThreadPoolExecutor(max_workers=len(requests_kwargs)) as pool:
        return list(pool.map(run, requests_kwargs))


def test_batch_of_eight_with_bad_requests(batch8_server, pictures):
    srv, name = batch8_server
    assert srv.client.describe(name)[0]["batchSize"] == 8
    pids = worker_pids(srv, name)
    photos = sorted(pictures)
    good = [{"data": encode(pictures[photos[i % len(photos)]], "JPEG"),
             "headers": {"Content-Type": "image/jpeg"}} for i in range(8)]
    rounds = [
        # One garbage request among seven good ones.
        {3: HOSTILE_REQUESTS["random_bytes"]},
        # Half bad: empty, pixel bomb, a JPEG cut short, HTML.
        {i: HOSTILE_REQUESTS[c] for i, c in zip((0, 2, 5, 7), ("empty", "png_declaring_100000x100000",
                                                             "jpeg_cut_in_the_middle", "html as text/html"))},
    ]
    for bad in rounds:
        before = settled_batches(srv)
        responses = send_together(srv, name, [bad[i][0] if i in bad else good[i] for i in range(8)])
        for i, resp in enumerate(responses):
            if i in bad:
                check_error(resp, *bad[i][1:])
            else:
                check_label(resp, photos[i % len(photos)])
                assert resp.json()["model"] == name
        assert settled_batches(srv) - before == 1, "the 8 requests did not form one batch"
    assert worker_pids(srv, name) == pids


# Requests whose reading once failed before their own error handling began: the first made
# TorchServe answer 503 to every request batched with it. The body arrives as bytes
# (decode_input_request=false): its JSON header is what is refused.
V2_HEADER = "Inference-Header-Content-Length"
CRAFTED = {
    "json number with a binary-data header": (
        {"data": b"1.5", "headers": {"Content-Type": "application/json", V2_HEADER: "1"}},
        "InvalidJSON"),
    "json list with a binary-data header": (
        {"data": b"[1,2,3]", "headers": {"Content-Type": "application/json", V2_HEADER: "1"}},
        "InvalidJSON"),
    "v2 shape past int64": (
        {"json": {"inputs": [{"name": "image", "shape": [10**20], "datatype": "BYTES",
                              "data": ["aGk="]}]}}, "ShapeMismatch"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_request_fails_alone_in_its_batch(batch8_server, pictures, case):
    """Seven photos and one crafted request in ONE batch: the crafted one gets its 400 in v2
    form, each photo its label."""
    srv, name = batch8_server
    crafted, kind = CRAFTED[case]
    photos = sorted(pictures)
    good = [{"data": encode(pictures[photos[i % len(photos)]], "JPEG"),
             "headers": {"Content-Type": "image/jpeg"}} for i in range(8)]
    before = settled_batches(srv)
    responses = send_together(srv, name, [crafted if i == 3 else good[i] for i in range(8)])
    assert responses[3].status_code == 400, responses[3].text
    assert responses[3].json()["error"].startswith(f"{kind}: "), responses[3].text
    for i, resp in enumerate(responses):
        if i != 3:
            check_label(resp, photos[i % len(photos)])
    assert settled_batches(srv) - before == 1, "the 8 requests did not form one batch"


def test_worker_pids_unchanged(server, baseline_pids):
    """Runs last: after every hostile request above, the same workers are still serving."""
    assert worker_pids(server, MODEL) == baseline_pids
