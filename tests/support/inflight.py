"""Requests in flight at the moment of a stop signal, counted rather than hoped for.

`burst` sends N predictions at once, each on its own connection (http.client: `request()`
returns once the whole request is written to the socket, `getresponse()` once the answer has
come). When at least `min_outstanding` of them are written and unanswered it calls `signal`,
and records how many were written and unanswered at that moment. The photo is slow on purpose
(a large PNG: decoded whole, no JPEG draft, small on the wire), so a burst keeps both workers
busy for a second or more.
"""

from __future__ import annotations

import functools
import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.support.images import encode, gradient

# 2,900 x 2,900 (8.4 MP, under the 9 MP PNG cap) of smooth gradients: about 0.1 s of decode and
# resize per request here, yet only 118 KB on the wire, so the frontend has each body whole at
# once (a photo of the same size, megabytes, was still being read when the stop came, and
# TorchServe's counters, which the drain reads, do not count a request until its body is in).
# A batch of 4 stays well inside the 2 s a drain waits for the counts to move.
SLOW_SIDE = 2900


@functools.cache  # the same bytes every call; encoding them takes most of a second
def slow_photo() -> bytes:
    return encode(gradient(SLOW_SIDE, SLOW_SIDE), "PNG", compress_level=9)


@dataclass
class Burst:
    sent: int = 0
    in_flight_at_signal: int = -1  # written and unanswered when `signal` was called
    statuses: list[object] = field(default_factory=list)
    signal_result: object = None

    @property
    def all_ok(self) -> bool:
        return self.statuses == [200] * self.sent


def burst(url: str, body: bytes, headers: Callable[[], dict], signal: Callable[[], object],
          n: int = 24, min_outstanding: int = 8, wait_s: float = 30.0,
          timeout_s: float = 120.0) -> Burst:
    """POST `body` to `url` n times at once, call `signal` once `min_outstanding` are in flight
    (or after `wait_s`, the count then says how many were), wait for every answer. `headers()`
    is read per request (keys are renewed)."""
    parts = urlsplit(url)
    lock = threading.Lock()
    written, answered = set(), set()
    result = Burst(sent=n, statuses=[None] * n)
    go = threading.Event()

    def one(i: int) -> None:
        go.wait()
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        try:
            conn.request("POST", parts.path, body=body,
                         headers={"Content-Type": "application/octet-stream", **headers()})
            with lock:
                written.add(i)
            resp = conn.getresponse()
            resp.read()
            result.statuses[i] = resp.status
        except (OSError, http.client.HTTPException) as exc:
            result.statuses[i] = type(exc).__name__
        finally:
            with lock:
                answered.add(i)
            conn.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    go.set()
    deadline = time.monotonic() + wait_s
    while True:
        with lock:
            result.in_flight_at_signal = len(written - answered)
        if result.in_flight_at_signal >= min_outstanding or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    result.signal_result = signal()  # right after the count, whatever it is
    for t in threads:
        t.join(timeout=timeout_s)
    return result
