"""scripts.ops.manage against a real TorchServe: status, describe, and scaling 1 -> 3 -> 1 workers
while traffic flows, every request answered 200."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import requests

from scripts.ops.client import worker_died
from tests.support.servers import MODEL, serving

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def srv(tmp_path_factory, default_mar):
    with serving(tmp_path_factory.mktemp("manage_ts"), default_mar.parent, min_ready=2) as server:
        yield server


def manage(srv, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.ops.manage", *args,
                           "--workdir", str(srv.workdir)], capture_output=True, text=True, timeout=180)


def test_describe_and_status(srv):
    done = manage(srv, "describe")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["modelName"] == MODEL
    done = manage(srv, "status", "--json")
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    assert st["ready"] == len(st["workers"]) == 2
    for w in st["workers"]:
        assert w["status"] == "READY" and w["pid"] > 0
        assert w["memory_mb"] > 50  # a loaded torch worker; measured about 750 MB RSS
    assert "READY" in manage(srv, "status").stdout


def test_scale_refuses_min_above_max(srv):
    done = manage(srv, "scale", "--min", "3", "--max", "2")
    assert done.returncode == 1 and "min" in done.stderr


class Traffic:
    """A few clients sending real photos back to back, recording every outcome."""

    def __init__(self, srv, image: bytes, clients: int = 3, max_seconds: float = 150) -> None:
        self.srv, self.image, self.max_seconds = srv, image, max_seconds
        self.outcomes: list[tuple[float, object]] = []
        self.resent: list[float] = []  # when a request got "Worker died." and was sent again
        # When a request went unanswered (client timeout) and was sent again: TorchServe 0.12
        # sometimes drops, instead of failing with "Worker died.", a request held by a worker it
        # removes at scale-down (seen about 1 run in 5, on earlier builds too).
        self.unanswered: list[float] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        session = requests.Session()
        t0 = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - t0 < self.max_seconds:
            try:
                sent = time.monotonic()
                try:
                    resp = self.srv.client.predict(MODEL, self.image, session=session)
                except requests.ReadTimeout:  # as a client with a timeout should: resend once
                    self.unanswered.append(sent)
                    resp = self.srv.client.predict(MODEL, self.image, session=session)
                if worker_died(resp):  # as a client should: a prediction is safe to resend
                    self.resent.append(time.monotonic())
                    resp = self.srv.client.predict(MODEL, self.image, session=session)
                # A failure keeps its body, so an assertion shows what TorchServe said.
                outcome: object = 200 if resp.status_code == 200 else f"{resp.status_code} {resp.text[:200]}"
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            self.outcomes.append((time.monotonic(), outcome))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client hung"

    def answered_between(self, start: float, end: float) -> int:
        return sum(1 for t, _ in self.outcomes if start <= t <= end)


def test_scale_1_3_1_under_traffic_every_request_200(srv, photos):
    """Every request is answered 200. Scaling down, TorchServe 0.12 stops the removed workers at
    once, and a request one of them holds gets an explicit 500 "Worker died.", or, now and then,
    no answer at all (the client's timeout): only then, only during the scale-down, at most one
    batch per removed worker, the client resends it once."""
    assert manage(srv, "scale", "--min", "1", "--max", "1").returncode == 0
    assert srv.client.ready_workers(MODEL) == 1
    with Traffic(srv, photos["cat.jpg"].read_bytes()) as traffic:
        time.sleep(1.5)
        steps = []
        for n in (3, 1):
            t0 = time.monotonic()
            done = manage(srv, "scale", "--min", str(n), "--max", str(n), "--json")
            assert done.returncode == 0, done.stderr
            st = json.loads(done.stdout)
            assert st["ready"] == len(st["workers"]) == n
            assert len({w["pid"] for w in st["workers"]}) == n
            steps.append((t0, time.monotonic()))
            time.sleep(1.5)
    outcomes = [o for _, o in traffic.outcomes]
    assert len(outcomes) >= 30
    assert all(o == 200 for o in outcomes), {o: outcomes.count(o) for o in set(outcomes)}
    for start, end in steps:  # requests were in flight while each scaling step ran
        assert traffic.answered_between(start, end + 0.5) >= 1
    down_start, down_end = steps[1]
    batch = srv.client.describe(MODEL)[0]["batchSize"]
    assert all(down_start <= t <= down_end + 0.5 for t in traffic.resent), (traffic.resent, steps)
    # An unanswered request was in flight when the scale-down began or sent while it ran.
    assert all(down_start - 1 <= t <= down_end + 0.5 for t in traffic.unanswered), (traffic.unanswered, steps)
    assert len(traffic.resent) + len(traffic.unanswered) <= 2 * batch  # two workers removed
    assert srv.client.ready_workers(MODEL) == 1
