"""The KServe variant (config/kserve/): the Open Inference Protocol (v2) read by our handler per
request, batched like raw images, served locally on loopback with the variant's settings and
archive; the v2 routes TorchServe itself answers."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import subprocess
import sys
import time

import pytest
import requests
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from scripts.ops import serve
from scripts.ops.server_config import read_properties
from scripts.packaging import kserve_storage, package
from scripts.packaging.plan import PackagingInputs
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.servers import MODEL, ROOT, free_ports, start_server

pytestmark = pytest.mark.e2e

KSERVE = ROOT / "config" / "kserve"
MOUNT = "/mnt/models"  # where KServe mounts the storage
# Addresses and paths are KServe's (0.0.0.0, /mnt/models); the test server gets loopback ones.
LOCAL_KEYS = ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
              "grpc_management_port", "model_store", "load_models")


@pytest.fixture(scope="module")
def v2_server(tmp_path_factory):
    """The storage laid out as KServe mounts it (kserve_storage), /mnt/models mapped onto it."""
    archives = tmp_path_factory.mktemp("kserve_archive")
    mar = package.package(PackagingInputs(model_config=KSERVE / "model-config.yaml", export_dir=archives))
    storage = kserve_storage.stage(tmp_path_factory.mktemp("kserve_storage"), mar)
    props = {k: v.replace(MOUNT, str(storage))
             for k, v in read_properties(KSERVE / "config.properties").items() if k not in LOCAL_KEYS}
    props["workflow_store"] = str(tmp_path_factory.mktemp("empty_workflow_store"))  # the image's
    grpc = free_ports(2)
    props.update(grpc_inference_port=str(grpc[0]), grpc_management_port=str(grpc[1]))
    workdir = tmp_path_factory.mktemp("kserve_ts")
    srv = start_server(workdir, f"{MODEL}={MODEL}.mar", storage / "model-store", overrides=props,
                       min_ready=2)
    yield srv
    serve.stop(workdir, grace=10)


def test_variant_serves_its_handler_metrics_from_the_mounted_metrics_config(v2_server, photos):
    """metrics_config points into the mounted storage: the handler's histograms reach /metrics
    (without it, every handler_* metric and alert would go dark under KServe)."""
    check_v2(post(v2_server, v2_body(photos, "cat", "m-1")), "m-1", "cat")
    text = requests.get(f"{v2_server.client.metrics_url}/metrics", timeout=10).text
    assert "handler_request_seconds_bucket" in text and "handler_batch_size" in text, text[:500]


def v2_body(photos, name: str, request_id: str = "req-1") -> dict:
    return {"id": request_id, "inputs": [
        {"name": "image", "shape": [1], "datatype": "BYTES",
         "data": [base64.b64encode(photos[f"{name}.jpg"].read_bytes()).decode()]}]}


def post(srv, body: dict, path: str = f"/v2/models/{MODEL}/infer") -> requests.Response:
    return requests.post(srv.client.inference_url + path, json=body, timeout=30,
                         headers=srv.client.auth_headers("inference"))


def check_v2(resp: requests.Response, request_id: str, name: str) -> None:
    """A v2 response: three typed tensors of the top 5, the photo's class first."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["id"] == request_id
    assert doc["model_name"] == MODEL and doc["model_version"] == "1.0"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert [o["name"] for o in doc["outputs"]] == ["labels", "probabilities", "indices"]
    assert {n: (o["datatype"], o["shape"]) for n, o in outputs.items()} == {
        "labels": ("BYTES", [5]), "probabilities": ("FP32", [5]), "indices": ("INT64", [5])}
    assert outputs["indices"]["data"][0] in EXPECTED_TOP1[name], (name, doc)
    probs = outputs["probabilities"]["data"]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert all(isinstance(label, str) and label for label in outputs["labels"]["data"])


@pytest.mark.parametrize("path", [f"/predictions/{MODEL}", f"/v2/models/{MODEL}/infer"])
def test_v2_request_gets_v2_response(v2_server, photos, path):
    check_v2(post(v2_server, v2_body(photos, "cat"), path), "req-1", "cat")


def test_two_inputs_in_one_request_are_refused_in_v2_form(v2_server, photos):
    body = v2_body(photos, "cat", "two")
    body["inputs"].append({**body["inputs"][0], "name": "second"})
    resp = post(v2_server, body)
    assert resp.status_code == 400, resp.text
    assert list(resp.json()) == ["error"] and resp.json()["error"].startswith("TooManyInputs: ")


def test_concurrent_v2_requests_each_get_their_own_answer(v2_server, photos):
    # Under TorchServe's kservev2 envelope, with batchSize 4, 16 of 18 of these failed with 503
    # ("number of batch response mismatched"): it read only the first request of a batch.
    names = sorted(EXPECTED_TOP1) * 3
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        resps = list(pool.map(lambda i: post(v2_server, v2_body(photos, names[i], f"r{i}")),
                              range(len(names))))
    for i, resp in enumerate(resps):
        check_v2(resp, f"r{i}", names[i])


def test_bad_image_is_a_client_error_in_v2_form(v2_server):
    body = {"id": "bad", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "data": [base64.b64encode(b"not an image at all").decode()]}]}
    resp = post(v2_server, body)
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"].startswith("UnsupportedMediaType: ")


def test_variant_batches_like_the_default(v2_server):
    default = yaml.safe_load((ROOT / "config" / MODEL / "model-config.yaml").read_text())
    variant = yaml.safe_load((KSERVE / "model-config.yaml").read_text())
    assert variant == default and variant["batchSize"] == 4
    assert v2_server.client.describe(MODEL)[0]["batchSize"] == 4
    props = read_properties(KSERVE / "config.properties")
    assert "service_envelope" not in props and props["enable_envvars_config"] == "false"


def test_open_inference_routes_torchserve_serves(v2_server):
    """ts_open_inference_protocol=true: health and server metadata are served (no key: token
    authorization is off in this config); the model's metadata and readiness are not (404)."""
    url = v2_server.client.inference_url

    def get(path: str) -> requests.Response:
        return requests.get(url + path, timeout=10)

    assert get("/v2/health/live").json() == {"live": True}
    assert get("/v2/health/ready").json() == {"ready": True}
    server = get("/v2").json()
    assert server["name"] == "Torchserve" and server["version"].startswith("0.12")
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready"):
        assert get(path).status_code == 404, path


def test_probes_need_no_key_where_token_authorization_is_off(v2_server):
    """The cluster configs turn token auth off: no key_file.json, and the probes still work."""
    assert not (v2_server.workdir / "key_file.json").exists()
    for check in ("ready", "live"):
        done = subprocess.run([sys.executable, "-m", "scripts.ops.healthcheck", check, "--workdir",
                               str(v2_server.workdir)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_four_v2_requests_are_answered_in_one_batch_and_ready_checks_no_worker(v2_server, photos):
    """One worker, busy with a slow image while four v2 requests queue: it takes them batched
    (handler_batch_size: 5 requests in 2 batches when all four were queued in time; 3 when the
    slow image finished while the last were still arriving: never one batch per request). Then
    with no worker at all, /v2/health/ready still says ready, and our readiness probe does not.
    Last in the module: it scales the model and restores 2 workers."""
    client = v2_server.client
    assert client.scale(MODEL, 1).status_code == 200
    try:
        before = batch_histogram(client.metrics())
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            slow = pool.submit(requests.post, f"{client.inference_url}/predictions/{MODEL}",
                               data=slow_png(), timeout=60,
                               headers={"Content-Type": "application/octet-stream"})
            # The slow image decodes in about 0.2 s on a quiet machine: the four must arrive well
            # within it (after 0.3 s they once came one by one, 4 batches).
            time.sleep(0.05)
            resps = list(pool.map(lambda i: post(v2_server, v2_body(photos, "cat", f"b{i}")), range(4)))
            assert slow.result().status_code == 200, slow.result().text
        for i, resp in enumerate(resps):
            check_v2(resp, f"b{i}", "cat")
        after = batch_histogram(client.metrics())
        batches, requests_seen = after[0] - before[0], after[1] - before[1]
        assert requests_seen == 5 and batches <= 3, (before, after)  # 4 v2 requests in <= 2 batches
        assert client.scale(MODEL, 0).status_code == 200
        assert requests.get(f"{client.inference_url}/v2/health/ready", timeout=10).json() == {"ready": True}
        done = subprocess.run([sys.executable, "-m", "scripts.ops.healthcheck", "ready", "--workdir",
                               str(v2_server.workdir)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, done.stdout
    finally:
        assert client.scale(MODEL, 2).status_code == 200


def batch_histogram(metrics_text: str) -> tuple[float, float]:
    """(batches, requests) so far: handler_batch_size's count and sum on /metrics, all workers."""
    values = {"count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "handler_batch_size":
            for sample in family.samples:
                kind = sample.name.removeprefix("handler_batch_size_")
                if kind in values:
                    values[kind] += sample.value
    return values["count"], values["sum"]


def slow_png() -> bytes:
    """An 8.4 MP gradient PNG (about 120 KB): a few hundred ms of decoding, while the v2
    requests queue."""
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((2900, 2900)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()
