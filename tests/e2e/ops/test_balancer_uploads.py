"""Slow and chunked uploads through HAProxy (config/haproxy.cfg) in front of a real replica on
loopback: a client trickling a large body never holds a replica connection slot, and a chunked
body over TorchServe's max_request_size gets the edge's 413 like a declared one. Figures are
printed (pytest -s) and recorded in docs/operations.md."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from scripts.ops import balancer as lb
from scripts.ops import serve
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e

MAX_REQUEST_SIZE = 6553500
DECLARED = 6_000_000      # under the limit: the edge must take it, and bound how long it arrives
FAST_PART = 2 * 1024 * 1024  # sent at once: past the 1 MiB buffer the edge used to have
WATCH_S = 16.0            # how long the trickle goes on (timeout http-request is 10 s)


@pytest.fixture(scope="module")
def edge(tmp_path_factory, default_mar):
    """One replica (as the balancer runs them) and HAProxy in front of it."""
    workdir = tmp_path_factory.mktemp("replica")
    ports = serve.free_ports(3)
    server = lb.start_replica(workdir, ports, f"{MODEL}={MODEL}.mar", default_mar.parent)
    try:
        serve.wait_ready(server, MODEL, min_ready=1, progress=False)
        balancer = lb.start([server.client.inference_url.removeprefix("http://")],
                            port=serve.free_ports(1)[0], workdir=tmp_path_factory.mktemp("lb"))
        try:
            balancer.wait_up(timeout=30)
            yield balancer
        finally:
            balancer.stop()
    finally:
        serve.stop(workdir, grace=10)


def connect(balancer: lb.Balancer, headers: str) -> socket.socket:
    host, port = balancer.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    key = balancer.headers()["Authorization"]
    sock.sendall(f"POST /predictions/{MODEL} HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n"
                 f"Content-Type: image/jpeg\r\n{headers}\r\n".encode())
    return sock


def replica_slots(balancer: lb.Balancer) -> int:
    """Connections HAProxy holds open to the replica right now (`scur`)."""
    return int(balancer.servers()["replica1"]["scur"])


def reply_of(sock: socket.socket) -> str:
    with contextlib.suppress(OSError):
        sock.settimeout(0.05)
        return sock.recv(65536).decode(errors="replace")
    return ""


def test_a_trickled_body_never_holds_a_replica_slot(edge):
    """2 MiB at once, then a byte every 0.5 s: before, HAProxy forwarded the request once its
    1 MiB buffer was full and the replica's slot stayed taken as long as the client trickled
    (no timeout applied); now the whole body must arrive within timeout http-request (10 s), the
    client gets 408, and the replica never sees the connection."""
    sock = connect(edge, f"Content-Length: {DECLARED}\r\n")
    sock.sendall(b"\0" * FAST_PART)
    t0, held, reply, freed_at = time.monotonic(), [], "", None
    with sock:
        while time.monotonic() - t0 < WATCH_S and not reply:
            with contextlib.suppress(OSError):
                sock.sendall(b"\0")
            held.append(replica_slots(edge))
            reply = reply_of(sock)
            time.sleep(0.45)
        answered_s = time.monotonic() - t0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and replica_slots(edge):
        time.sleep(0.1)
    freed_at = time.monotonic() - t0
    print(f"\ntrickled upload: replica slots held {max(held)} at most; answer after "
          f"{answered_s:.1f} s: {reply.splitlines()[0] if reply else 'none'}; slot free at {freed_at:.1f} s")
    assert max(held) == 0, f"the replica's slot was held while the client trickled: {held}"
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert answered_s < 12, answered_s


def test_a_chunked_body_over_the_limit_gets_the_edges_413(edge):
    """Transfer-Encoding: chunked carries no Content-Length for the header rule to read; the
    edge reads the body (whole, within its buffer) and refuses it from its size."""
    sock = connect(edge, "Transfer-Encoding: chunked\r\n")
    chunk = b"\0" * 65536
    sent, reply = 0, ""
    with sock:
        with contextlib.suppress(OSError):
            while sent <= MAX_REQUEST_SIZE + len(chunk) and not reply:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        sock.settimeout(15)
        with contextlib.suppress(OSError):
            reply = sock.recv(65536).decode(errors="replace")
    print(f"\nchunked {sent} bytes: {reply.splitlines()[0] if reply else 'no answer'}")
    assert reply.startswith("HTTP/1.1 413") and "PayloadTooLarge" in reply, reply[:300]


def test_a_chunked_body_under_the_limit_still_reaches_the_replica(edge, photos):
    """The fix refuses by size, not chunked bodies as such: a chunked photo is predicted."""
    body = photos["cat.jpg"].read_bytes()
    sock = connect(edge, "Transfer-Encoding: chunked\r\n")
    with sock:
        sock.sendall(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        sock.settimeout(15)
        reply = sock.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 200") and "predictions" in reply, reply[:300]
