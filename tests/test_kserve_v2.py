"""The KServe variant (config/kserve/): TorchServe's v2 (Open Inference Protocol) envelope in front
of our handler, served locally on loopback with the variant's settings and archive."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import subprocess
import sys

import pytest
import requests
import yaml

from scripts.ops import serve
from scripts.ops.server_config import read_properties
from scripts.packaging import kserve_storage, package
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
    mar = package.package(model_config=KSERVE / "model-config.yaml", export_dir=archives)
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
    check_v2(post(v2_server, v2_body(photos, "cat", request_id="m-1"), f"/v2/models/{MODEL}/infer"),
             "m-1", ["cat"])
    text = requests.get(f"{v2_server.client.metrics_url}/metrics", timeout=10).text
    assert "handler_request_seconds_bucket" in text and "handler_batch_size" in text, text[:500]


def v2_body(photos, *names: str, request_id: str = "req-1") -> dict:
    return {"id": request_id, "inputs": [
        {"name": f"input-{i}", "shape": [1], "datatype": "BYTES",
         "data": [base64.b64encode(photos[f"{name}.jpg"].read_bytes()).decode()]}
        for i, name in enumerate(names)]}


def post(srv, body: dict, path: str = f"/predictions/{MODEL}") -> requests.Response:
    return requests.post(srv.client.inference_url + path, json=body, timeout=30,
                         headers=srv.client.auth_headers("inference"))


def check_v2(resp: requests.Response, request_id: str, names: list[str]) -> None:
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["id"] == request_id
    assert doc["model_name"] == MODEL and doc["model_version"] == "1.0"
    assert [o["name"] for o in doc["outputs"]] == [f"input-{i}" for i in range(len(names))]
    for out, name in zip(doc["outputs"], names):
        assert out["datatype"] == "BYTES" and out["shape"] == [1] and len(out["data"]) == 1
        prediction = json.loads(out["data"][0])  # a BYTES element is a string: our JSON
        assert prediction["predictions"][0]["index"] in EXPECTED_TOP1[name], (name, prediction)


@pytest.mark.parametrize("path", [f"/predictions/{MODEL}", f"/v2/models/{MODEL}/infer"])
def test_v2_request_gets_v2_response(v2_server, photos, path):
    check_v2(post(v2_server, v2_body(photos, "cat"), path), "req-1", ["cat"])


def test_two_inputs_of_one_request_are_two_outputs(v2_server, photos):
    check_v2(post(v2_server, v2_body(photos, "cat", "coffee", request_id="two")), "two",
             ["cat", "coffee"])


def test_concurrent_v2_requests_each_get_their_own_answer(v2_server, photos):
    # The envelope reads only the first request of a TorchServe batch: with batchSize 4 most of
    # these failed with 503 "number of batch response mismatched". The variant's batchSize is 1.
    names = sorted(EXPECTED_TOP1) * 3
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        resps = list(pool.map(lambda i: post(v2_server, v2_body(photos, names[i], request_id=f"r{i}")),
                              range(len(names))))
    for i, resp in enumerate(resps):
        check_v2(resp, f"r{i}", [names[i]])


def test_bad_image_is_a_client_error(v2_server):
    body = {"id": "bad", "inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES",
                                     "data": [base64.b64encode(b"not an image at all").decode()]}]}
    resp = post(v2_server, body)
    assert resp.status_code == 415, resp.text
    assert "UnsupportedMediaType" in resp.text


def test_variant_differs_from_default_only_in_batch_size(v2_server):
    default = yaml.safe_load((ROOT / "config" / MODEL / "model-config.yaml").read_text())
    variant = yaml.safe_load((KSERVE / "model-config.yaml").read_text())
    assert variant.pop("batchSize") == 1
    default.pop("batchSize")
    assert variant == default
    assert v2_server.client.describe(MODEL)[0]["batchSize"] == 1


def test_probes_need_no_key_where_token_authorization_is_off(v2_server):
    """The cluster configs turn token auth off: no key_file.json, and the probes still work."""
    assert not (v2_server.workdir / "key_file.json").exists()
    for check in ("ready", "live"):
        done = subprocess.run([sys.executable, "-m", "scripts.ops.healthcheck", check, "--workdir",
                               str(v2_server.workdir)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
