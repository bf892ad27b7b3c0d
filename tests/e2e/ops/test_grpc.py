"""TorchServe's gRPC inference API against real servers, listening on loopback only: the same
answers as REST, the same bearer keys (refused without one, a stale one re-read after a
renewal), a bad image refused as the 4xx equivalent while the server goes on serving, a body
over max_request_size and an unknown model refused, the CLI's answer, and the Open Inference
Protocol's ModelInfer: not served by the default config (UNIMPLEMENTED), served with
ts_open_inference_protocol=true and the v2 envelope, the key required there too."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import grpc
import psutil
import pytest
from image_classifier_client.contract import AUTH_REFUSED

from scripts.ops.grpc_inference import GrpcClient, HandlerRefused, grpc_target
from scripts.ops.server_config import read_properties
from scripts.ops.torchserve_http import IMAGE_HEADERS
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.servers import MODEL, ROOT, serving

PHOTOS = sorted(EXPECTED_TOP1)
NOT_AN_IMAGE = b"not an image at all"
V2_KEYS = ("service_envelope", "ts_open_inference_protocol")  # the KServe variant's v2 settings


@pytest.fixture(scope="module")
def grpc_client(server):
    with GrpcClient.for_workdir(server.workdir) as client:
        yield client


@pytest.fixture(scope="module")
def oip_server(tmp_path_factory, default_mar):
    """The default archive with the KServe variant's v2 settings (what shapes answers as
    ModelInfer's) and the Open Inference Protocol on: its gRPC service is registered on the gRPC
    inference port."""
    kserve = read_properties(ROOT / "config" / "kserve" / "config.properties")
    overrides = {key: kserve[key] for key in V2_KEYS if key in kserve}
    overrides["ts_open_inference_protocol"] = "true"
    with serving(tmp_path_factory.mktemp("oip_ts"), default_mar.parent, overrides=overrides) as srv:
        yield srv


def top1(answer: dict) -> dict:
    return answer["predictions"][0]


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---- the default server (config.properties): plain envelope, token authorization on ----

@pytest.mark.e2e
def test_grpc_listens_on_loopback_only(server):
    port = int(server.properties["grpc_inference_port"])
    listening = {ipaddress.ip_address(c.laddr.ip) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    # Java's socket is dual-stack: 127.0.0.1 shows as ::ffff:127.0.0.1.
    assert {getattr(ip, "ipv4_mapped", None) or ip for ip in listening} == {ipaddress.ip_address("127.0.0.1")}


@pytest.mark.e2e
@pytest.mark.parametrize("name", PHOTOS)
def test_grpc_prediction_has_the_rest_top1(server, grpc_client, photos, name):
    image = photos[f"{name}.jpg"].read_bytes()
    rest = server.client.predict(MODEL, image, IMAGE_HEADERS)
    assert rest.status_code == 200, rest.text
    over_grpc, over_rest = top1(grpc_client.predict(MODEL, image)), top1(rest.json())
    assert over_grpc["index"] == over_rest["index"] and over_grpc["index"] in EXPECTED_TOP1[name]
    assert over_grpc["probability"] == pytest.approx(over_rest["probability"], abs=1e-4)


@pytest.mark.e2e
def test_without_the_key_every_call_is_refused(server, grpc_client, photos):
    keyless = GrpcClient(grpc_target(server.workdir), key_file=None)
    wrong = GrpcClient(grpc_target(server.workdir), key_file=None)
    wrong.key = "0" * 32
    image = photos["cat.jpg"].read_bytes()
    for call in (lambda: keyless.predict(MODEL, image), keyless.ping, lambda: wrong.predict(MODEL, image)):
        exc = refusal(call)
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        assert AUTH_REFUSED in exc.details()
    assert json.loads(grpc_client.ping())["status"] == "Healthy"  # the keyed client is answered


@pytest.mark.e2e
def test_a_stale_key_after_a_renewal_is_read_again(server, photos):
    image = photos["coffee.jpg"].read_bytes()
    with GrpcClient.for_workdir(server.workdir) as client:
        assert top1(client.predict(MODEL, image))["index"] in EXPECTED_TOP1["coffee"]
        stale = client.key
        subprocess.run([sys.executable, "-m", "scripts.ops.keys", "rotate", "--workdir", str(server.workdir)],
                       cwd=ROOT, check=True, timeout=60, capture_output=True)
        with GrpcClient(client.target, key_file=None) as old:
            old.key = stale
            assert refusal(lambda: old.predict(MODEL, image)).code() == grpc.StatusCode.PERMISSION_DENIED
        assert top1(client.predict(MODEL, image))["index"] in EXPECTED_TOP1["coffee"]
        assert client.rereads == 1 and client.key != stale


@pytest.mark.e2e
@pytest.mark.parametrize(("body", "status", "code", "words"), [
    (NOT_AN_IMAGE, 415, grpc.StatusCode.FAILED_PRECONDITION, "not a recognised image"),
    (b"", 400, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
])
def test_a_bad_image_is_the_4xx_equivalent_and_the_server_goes_on(server, grpc_client, photos,
                                                                   body, status, code, words):
    pids = sorted(w["pid"] for w in server.client.workers(MODEL))
    # TorchServe 0.12 sends the handler's refusal with gRPC status OK and the error JSON REST
    # sends with the HTTP status (GRPCJob.response drops the status): the client maps it.
    raw = json.loads(grpc_client.predict_raw(MODEL, body).prediction)
    assert raw["code"] == status and words in raw["message"]
    with pytest.raises(HandlerRefused) as info:
        grpc_client.predict(MODEL, body)
    assert info.value.code() == code and words in info.value.details()
    assert info.value.status == status
    assert top1(grpc_client.predict(MODEL, photos["cat.jpg"].read_bytes()))["index"] in EXPECTED_TOP1["cat"]
    assert sorted(w["pid"] for w in server.client.workers(MODEL)) == pids


@pytest.mark.e2e
def test_a_body_over_max_request_size_is_resource_exhausted(server, grpc_client, photos):
    too_big = b"\xff" * (int(server.properties["max_request_size"]) + 1)
    # Seen: CANCELLED "Stream removed (RST_STREAM ... error code 8)": the server's inbound limit
    # resets the stream while the client is still sending; RESOURCE_EXHAUSTED if it answers first.
    exc = refusal(lambda: grpc_client.predict(MODEL, too_big))
    assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED), exc
    assert top1(grpc_client.predict(MODEL, photos["cat.jpg"].read_bytes()))["index"] in EXPECTED_TOP1["cat"]


@pytest.mark.e2e
def test_an_unknown_model_is_torchserve_s_own_refusal(grpc_client):
    # REST says 404; TorchServe 0.12's gRPC InferenceImpl sends ModelNotFoundException as INTERNAL.
    exc = refusal(lambda: grpc_client.predict("no_such_model", NOT_AN_IMAGE))
    assert exc.code() == grpc.StatusCode.INTERNAL and "Model not found" in exc.details()


@pytest.mark.e2e
def test_open_inference_is_not_served_by_the_default_config(grpc_client, photos):
    exc = refusal(lambda: grpc_client.model_infer(MODEL, [photos["cat.jpg"].read_bytes()]))
    assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "GRPCInferenceService/ModelInfer" in exc.details()


@pytest.mark.e2e
def test_the_cli_prints_the_answer(server, photos):
    done = subprocess.run([sys.executable, "-m", "scripts.ops.grpc_inference", str(photos["temple.jpg"]),
                           "--workdir", str(server.workdir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert top1(json.loads(done.stdout))["index"] in EXPECTED_TOP1["temple"]


# ---- ts_open_inference_protocol=true: the Open Inference Protocol's gRPC service ----

def v2_top1(response) -> int:
    """The top-1 class index of a ModelInfer answer: its integer `indices` output."""
    contents = {out.name: out for out in response.outputs}["indices"].contents
    return int((list(contents.int64_contents) or list(contents.int_contents))[0])


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["cat", "rocket"])
def test_model_infer_with_a_bytes_input(oip_server, photos, name):
    with GrpcClient.for_workdir(oip_server.workdir) as client:
        response = client.model_infer(MODEL, [photos[f"{name}.jpg"].read_bytes()], request_id=f"oip-{name}")
    assert (response.id, response.model_name) == (f"oip-{name}", MODEL)
    assert v2_top1(response) in EXPECTED_TOP1[name]


@pytest.mark.e2e
def test_model_infer_needs_the_key(oip_server, photos):
    with GrpcClient(grpc_target(oip_server.workdir), key_file=None) as keyless:
        exc = refusal(lambda: keyless.model_infer(MODEL, [photos["cat.jpg"].read_bytes()]))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED and AUTH_REFUSED in exc.details()
