"""Two models on one server, started through the CLI as `make serve MODELS=a,b` starts them: the
default archive and the same model packaged again with its own settings (one worker, no
batching). Both are READY and warmed up before the announcement, which names each model's URLs;
each answers predictions with its own name; `manage status` takes `--model` and, without it,
names both and exits 2; the readiness probe is ready for both, not ready while one of them has
no READY worker (scaled to 0) though the other answers, and ready when asked about the other
alone (`--model`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from scripts import repo
from scripts.ops import healthcheck, manage, serve
from scripts.ops.torchserve_http import IMAGE_HEADERS, TorchServeClient, sample_jpeg
from tests.support.servers import MODEL

OTHER = "other"
START_TIMEOUT_S = 150


# Each model's warm-up here, instead of serve.WARM_UP_S (5 s): this test needs each model warmed
# before the announcement, not the warm-up's effect (RELIABILITY.md "READY means ready" measures
# that; tests/e2e/ops/test_healthcheck.py runs serve start's full one against the probe).
WARM_UP_S = 1.0


# `serve start` as `make serve MODELS=a,b` runs it, on free ports instead of 8080-8082 and with a
# shorter warm-up: the same main(), with the module's default ports and its warm-up's length
# replaced before it reads them.
SERVE_START = """
import functools
import sys
from scripts.ops import serve
serve.DEFAULT_PORTS = serve.free_ports()
serve.warm_up = functools.partial(serve.warm_up, seconds=float(sys.argv[5]))
sys.exit(serve.main(["start", "--workdir", sys.argv[1], "--model-store", sys.argv[2],
                     "--model", sys.argv[3], "--timeout", sys.argv[4]]))
"""


@pytest.fixture(scope="module")
def two_model_store(tmp_path_factory, default_mar):
    """The default archive and the same model packaged as OTHER with one worker and no batching
    (its own settings, as any second model has)."""
    from scripts.packaging import package
    from scripts.packaging.plan import PackagingInputs

    tmp = tmp_path_factory.mktemp("other")
    config = yaml.safe_load((repo.CONFIG_DIR / MODEL / "model-config.yaml").read_text())
    config.update(minWorkers=1, maxWorkers=1, batchSize=1)
    (tmp / "model-config.yaml").write_text(yaml.safe_dump(config))
    store = tmp_path_factory.mktemp("store")
    shutil.copy(default_mar, store / default_mar.name)
    try:
        package.package(PackagingInputs(MODEL, model_name=OTHER, model_config=tmp / "model-config.yaml",
                                        export_dir=store))
    finally:
        shutil.rmtree(repo.BUILD_DIR / OTHER, ignore_errors=True)
    return store


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=repo.ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.e2e
def test_two_models_on_one_server(two_model_store, tmp_path):
    workdir = tmp_path / "run"
    try:
        started = subprocess.run([sys.executable, "-c", SERVE_START, str(workdir), str(two_model_store),
                                  f"{MODEL},{OTHER}", str(START_TIMEOUT_S), str(WARM_UP_S)],
                                 cwd=repo.ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S + 60)
        assert started.returncode == 0, started.stdout + started.stderr
        client = TorchServeClient.from_workdir(workdir)
        for name in (MODEL, OTHER):
            assert f"{client.inference_url}/predictions/{name}" in started.stdout, started.stdout
            assert f"{client.management_url}/models/{name}" in started.stdout, started.stdout
        assert started.stdout.count("warmed up with") == 2, started.stdout
        for name in (MODEL, OTHER):  # each model warmed before the announcement
            assert (started.stdout.index(f"{name} warmed up with")
                    < started.stdout.index("TorchServe is serving")), started.stdout
        assert client.ready_workers(MODEL) == 2 and client.ready_workers(OTHER) == 1
        assert client.describe(OTHER)[0]["batchSize"] == 1 and client.describe(MODEL)[0]["batchSize"] == 4
        for name in (MODEL, OTHER):
            resp = client.predict(name, sample_jpeg(), IMAGE_HEADERS)
            assert resp.status_code == 200 and resp.json()["model"] == name, resp.text

        ready = run_tool("scripts.ops.healthcheck", "ready", "--workdir", str(workdir))
        assert ready.returncode == 0, ready.stdout + ready.stderr
        assert MODEL in ready.stdout and OTHER in ready.stdout, ready.stdout

        status = run_tool("scripts.ops.manage", "status", "--model", OTHER, "--json",
                          "--workdir", str(workdir))
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["model"] == OTHER and json.loads(status.stdout)["ready"] == 1
        unnamed = run_tool("scripts.ops.manage", "status", "--workdir", str(workdir))
        assert unnamed.returncode == 2 and f"({MODEL}, {OTHER})" in unnamed.stderr, unnamed.stderr

        manage.scale(client, OTHER, 0, 0, timeout=60)
        not_ready = run_tool("scripts.ops.healthcheck", "ready", "--workdir", str(workdir))
        assert not_ready.returncode == healthcheck.NOT_READY, not_ready.stdout + not_ready.stderr
        assert f"{OTHER}: 0 READY workers" in not_ready.stderr, not_ready.stderr
        one = run_tool("scripts.ops.healthcheck", "ready", "--model", MODEL, "--workdir", str(workdir))
        assert one.returncode == 0, one.stdout + one.stderr
    finally:
        # Drained, then no grace (as tests.support.servers.serving): the frontend's unloading
        # of the workers is the graceful stop's test (test_recovery.py), here only 3 s more.
        serve.stop(workdir, grace=0)
