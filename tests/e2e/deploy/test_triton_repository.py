"""The archive as a Triton model repository (scripts/deploy/triton_repo.py) served by the real
tritonserver 2.51 (scripts/deploy/triton_server.py, from the peers' environment) with the
archive's own code: it answers as TorchServe does from the same bytes, a bad image fails alone
with 400 in a shared batch, the metadata and health routes answer, and a file changed after
writing refuses the load."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

# Only for the environment that holds the wheel's tritonserver (made on first use).
from scripts.bench.peers import peer_env
from scripts.deploy import triton_repo, triton_server
from scripts.ops.serve import free_ports
from tests.support.open_inference import v2
from tests.support.servers import MODEL

MAX_BATCH = 4
DELAY_US = 200_000  # long enough that requests sent together share a batch


@pytest.fixture(scope="module")
def triton(tmp_path_factory, default_mar):
    repository = tmp_path_factory.mktemp("triton")
    triton_repo.write_repository(default_mar, repository, environ={}, max_batch=MAX_BATCH, delay_us=DELAY_US)
    port = free_ports(1)[0]
    proc = triton_server.start(repository, port, MODEL, peer_env.ensure(progress=False),
                               log_path=repository.parent / "tritonserver.log")
    yield f"http://127.0.0.1:{port}/v2/models/{MODEL}"
    triton_server.stop(proc)


def body(image: bytes) -> bytes:
    """A v2 request of one image with the batch dimension a batching Triton model requires
    ([1, 1]; TorchServe takes the same as one image)."""
    return json.dumps(v2(image, shape=[1, 1])).encode()


def outputs(answer: dict) -> dict[str, list]:
    """Each v2 output's data, flat (TorchServe's are [5], Triton's [1, 5])."""
    return {o["name"]: o["data"] for o in answer["outputs"]}


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["cat.jpg", "coffee.png"])
def test_triton_answers_as_torchserve_from_the_same_bytes(server, photos, triton, name):
    sent = body(photos[name].read_bytes())
    theirs = requests.post(f"{triton}/infer", data=sent, timeout=60)
    ours = requests.post(f"{server.client.inference_url}/v2/models/{MODEL}/infer", data=sent,
                         headers={"Content-Type": "application/json",
                                  **server.client.auth_headers("inference")}, timeout=60)
    assert theirs.status_code == 200 and ours.status_code == 200, (theirs.text, ours.text)
    theirs, ours = outputs(theirs.json()), outputs(ours.json())
    assert theirs["indices"] == ours["indices"] and theirs["labels"] == ours["labels"]
    assert theirs["probabilities"] == pytest.approx(ours["probabilities"], abs=1e-5)


@pytest.mark.e2e
def test_a_bad_image_fails_alone_with_400_in_a_shared_batch(photos, triton):
    good, bad = body(photos["cat.jpg"].read_bytes()), body(b"not an image")
    stats = f"{triton}/stats"
    before = requests.get(stats, timeout=10).json()["model_stats"][0]["execution_count"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda sent: requests.post(f"{triton}/infer", data=sent, timeout=60),
                                [good, bad, good, good]))
    executions = requests.get(stats, timeout=10).json()["model_stats"][0]["execution_count"] - before
    assert [a.status_code for a in answers] == [200, 400, 200, 200], [a.text for a in answers]
    assert answers[1].json()["error"].startswith("UnsupportedMediaType:"), answers[1].text
    assert executions < 4  # the bad image was batched with good ones, and failed alone


@pytest.mark.e2e
def test_the_metadata_and_health_routes_answer(triton):
    meta = requests.get(triton, timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == ["image"]
    assert [o["name"] for o in meta["outputs"]] == ["labels", "probabilities", "indices"]
    assert requests.get(f"{triton}/ready", timeout=10).status_code == 200


@pytest.mark.e2e
def test_a_file_changed_after_writing_refuses_the_load(tmp_path, default_mar, triton):
    # After `triton`: the peers' environment and the server folder exist, so this times a load.
    model_dir = triton_repo.write_repository(default_mar, tmp_path / "repo", environ={})
    labels = model_dir / "index_to_name.json"
    labels.write_text(json.dumps({**json.loads(labels.read_text()), "0": "changed"}))
    log = tmp_path / "tritonserver.log"
    with pytest.raises(RuntimeError, match="tritonserver exited"):
        triton_server.start(tmp_path / "repo", free_ports(1)[0], MODEL, peer_env.ensure(progress=False),
                            timeout=120, log_path=log)
    assert "Integrity check failed: file index_to_name.json sha256" in log.read_text()
