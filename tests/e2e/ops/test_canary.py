"""Two versions of the model, a canary share and a rollback, on real servers on loopback
(docs/canary.md).

- One TorchServe serves versions 1.0 and 2.0 of the model side by side (two archives of one name
  in load_models): /predictions/NAME/1.0 and /2.0 answer with their version, /predictions/NAME
  with the default one, which `manage set-default` switches; /metrics counts each version apart.
- A stable replica (1.0) and a canary replica (2.0 by default) behind HAProxy at 10 %
  (scripts/ops/canary.py): the canary answers 10 +- 5 % of 400 requests.
- `canary rollback` under traffic, then the canary replica stopped: every request answered 200,
  and every request sent after the rollback answered by 1.0.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import threading
import time

import pytest
import requests

from scripts.ops import balancer as lb
from scripts.ops import canary, manage, serve
from scripts.ops.torchserve_http import IMAGE_HEADERS, TorchServeClient, sample_jpeg
from scripts.packaging import package
from scripts.packaging.plan import PackagingInputs
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e

V2_MAR = f"{MODEL}-2.0.mar"
STABLE_MODELS = f"{MODEL}={MODEL}.mar"
# Both archives under one name: the first listed is the default at start.
BOTH_MODELS = f"{MODEL}={MODEL}.mar,{MODEL}={V2_MAR}"
SHARE = 10
REQUESTS = 400
CONCURRENCY = 4
TIMEOUT = 10.0        # per request
LOAD_DEADLINE = 120.0  # s: no load phase runs longer, whatever happens
IMAGE = sample_jpeg()


@pytest.fixture(scope="module")
def store(tmp_path_factory, default_mar):
    """A model store with version 1.0 (the default archive) and 2.0 (the same model packaged
    with --version 2.0, as docs/canary.md builds it)."""
    out = tmp_path_factory.mktemp("v2")
    v2 = package.package(PackagingInputs(version="2.0", export_dir=out / "export"))
    store = tmp_path_factory.mktemp("store")
    shutil.copy(default_mar, store / default_mar.name)
    shutil.copy(v2, store / V2_MAR)
    return store


def wait_versions(client: TorchServeClient, want: set[str], timeout: float = 180.0) -> None:
    """Until every version in `want` has 2 READY workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, requests.RequestException, ValueError):
            if {v["version"] for v in manage.versions(client, MODEL) if v["ready"] >= 2} >= want:
                return
        time.sleep(0.5)
    raise TimeoutError(f"versions {sorted(want)} not all READY after {timeout:.0f} s")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, store):
    """(stable, canary) replicas as the balancer runs them (auth off, management on a private
    socket): the stable one serves 1.0, the canary one 1.0 and 2.0 (1.0 the default at start)."""
    with contextlib.ExitStack() as stack:
        servers = []
        for name, models in (("stable", STABLE_MODELS), ("canary", BOTH_MODELS)):
            workdir = tmp_path_factory.mktemp(name)
            stack.callback(serve.stop, workdir, grace=10)
            servers.append(lb.start_replica(workdir, serve.free_ports(), models, store))
        for server, want in zip(servers, ({"1.0"}, {"1.0", "2.0"})):
            serve.wait_ready(server, MODEL, min_ready=2, progress=False)
            wait_versions(server.client, want)
        yield tuple(servers)


def post(url: str, session: requests.Session, headers: dict | None = None) -> requests.Response:
    return session.post(url, data=IMAGE, headers={**IMAGE_HEADERS, **(headers or {})}, timeout=TIMEOUT)


def version_of(resp: requests.Response) -> str | None:
    return resp.json().get("version") if resp.status_code == 200 else None


def test_two_versions_side_by_side_and_the_default_switched(replicas, capsys):
    _, both = replicas
    url = f"{both.client.inference_url}/predictions/{MODEL}"
    with requests.Session() as s:
        assert version_of(post(f"{url}/1.0", s)) == "1.0"
        assert version_of(post(f"{url}/2.0", s)) == "2.0"
        assert post(f"{url}/3.0", s).status_code == 404
        assert version_of(post(url, s)) == "1.0"  # the first archive of load_models
        assert manage.main(["set-default", "--version", "2.0", "--workdir", str(both.workdir)]) == 0
        assert "2.0" in capsys.readouterr().out
        assert [version_of(post(url, s)) for _ in range(4)] == ["2.0"] * 4
        assert manage.main(["set-default", "--version", "3.0", "--workdir", str(both.workdir)]) == 1
        assert manage.main(["set-default", "--version", "1.0", "--workdir", str(both.workdir)]) == 0
        assert version_of(post(url, s)) == "1.0"
    # TorchServe labels its request counter by the version in the path ("default": none given).
    counted = {line.split('model_version="')[1].split('"')[0]
               for line in both.client.metrics().splitlines()
               if line.startswith("ts_inference_requests_total{")}
    assert counted >= {"1.0", "2.0", "default"}


@pytest.fixture(scope="module")
def edge(replicas, tmp_path_factory):
    """HAProxy with the canary config in front of the pair; the canary replica's default 2.0."""
    stable, both = replicas
    manage.set_default(both.client, MODEL, "2.0")
    workdir = tmp_path_factory.mktemp("edge")
    bal = canary.start([str(stable.workdir)], [str(both.workdir)], SHARE, serve.free_ports(1)[0], workdir)
    try:
        bal.wait_up()
        yield bal
    finally:
        bal.stop()


def wait_weights(workdir, timeout: float = 15.0) -> dict:
    """Until each server's effective weight is its configured one (slowstart has ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = canary.status(workdir)
        want = dict(zip(("stable", "canary"), canary.weights(st["percent"], 1, 1)))
        if all(s["weight"] == want[s["group"]] for s in st["servers"].values()):
            return st
        time.sleep(0.2)
    raise TimeoutError(f"weights not settled: {st}")


def load(bal: lb.Balancer, count: int, stop: threading.Event | None = None) -> list[tuple]:
    """`count` predictions through the edge, CONCURRENCY at a time (or until `stop`): one
    (sent, answered, status, version) per request, in monotonic seconds."""
    deadline = time.monotonic() + LOAD_DEADLINE
    url = f"{bal.url}/predictions/{MODEL}"
    local = threading.local()

    def one(_) -> tuple:
        if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
            return ()
        local.s = getattr(local, "s", None) or requests.Session()
        sent = time.monotonic()
        try:
            resp = post(url, local.s, bal.headers())
        except requests.RequestException as exc:
            return sent, time.monotonic(), type(exc).__name__, None
        return sent, time.monotonic(), resp.status_code, version_of(resp)

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        return [r for r in pool.map(one, range(count)) if r]


def test_canary_gets_its_share(edge):
    assert canary.main(["set", str(SHARE), "--workdir", str(edge.workdir)]) == 0
    wait_weights(edge.workdir)
    results = load(edge, REQUESTS)
    statuses = [r[2] for r in results]
    versions = [r[3] for r in results]
    share = 100 * versions.count("2.0") / len(versions)
    print(f"\ncanary {SHARE} %: {versions.count('2.0')} of {len(versions)} answered by 2.0 ({share:.1f} %)")
    assert len(results) == REQUESTS and statuses == [200] * REQUESTS
    assert set(versions) == {"1.0", "2.0"}
    assert abs(share - SHARE) <= 5


def test_rollback_under_traffic_loses_nothing(edge, replicas):
    _, both = replicas
    assert canary.main(["set", str(SHARE), "--workdir", str(edge.workdir)]) == 0
    wait_weights(edge.workdir)
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as runner:
        traffic = runner.submit(load, edge, 10_000, stop)
        time.sleep(2.0)
        rolled = time.monotonic()
        assert canary.main(["rollback", "--workdir", str(edge.workdir)]) == 0
        drained = time.monotonic()
        # The canary holds no request now: stopping its replica must cost none either.
        serve.stop(both.workdir, grace=10)
        time.sleep(1.0)
        stop.set()
        results = traffic.result(timeout=LOAD_DEADLINE + 30)
    before = [r for r in results if r[1] < rolled]
    after = [r for r in results if r[0] > drained]
    failed = [r for r in results if r[2] != 200]
    print(f"\nrollback: {len(results)} requests, {len(failed)} failed; {len(before)} answered before "
          f"it ({sum(r[3] == '2.0' for r in before)} by 2.0), {len(after)} sent after it; "
          f"the canary's last requests answered {drained - rolled:.3f} s after the move")
    assert not failed, failed[:5]
    assert any(r[3] == "2.0" for r in before)  # the canary had its share until the move
    assert len(after) >= 20 and all(r[3] == "1.0" for r in after)
    st = canary.status(edge.workdir)
    assert st["percent"] == 0
    assert {s["weight"] for s in st["servers"].values() if s["group"] == "canary"} == {0}
    with requests.Session() as s:
        assert [version_of(post(f"{edge.url}/predictions/{MODEL}", s, edge.headers()))
                for _ in range(100)] == ["1.0"] * 100
