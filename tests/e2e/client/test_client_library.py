"""The client library (client/, image_classifier_client) and its `classify` CLI against a real
TorchServe (the shared `server`): v1 and v2 predictions with the expected top-1, the async client
with concurrent requests in both protocols, bad images and an unknown model as typed 4xx errors
with the server's message, a key renewal survived (the old key then refused), the CLI's table,
JSON output and exit codes, and the CLI installed into a fresh venv classifying a photo."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from image_classifier_client import (
    AsyncClient,
    AuthError,
    Client,
    ClientError,
    Unavailable,
)

from scripts.ops.server_config import KEY_FILE
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.client_cli import classify
from tests.support.servers import MODEL, ROOT

PHOTOS = ("cat", "coffee", "rocket", "temple")


def key_file_of(server) -> Path:
    return server.workdir / KEY_FILE


@pytest.fixture(scope="module")
def jpegs(photos) -> dict[str, bytes]:
    return {name: photos[f"{name}.jpg"].read_bytes() for name in PHOTOS}


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_predictions_top1_in_both_protocols(server, jpegs, protocol):
    with Client(server.client.inference_url, key_file=key_file_of(server), protocol=protocol) as client:
        for name in PHOTOS:
            result = client.classify(jpegs[name], MODEL, top_k=3)
            assert result.top1.index in EXPECTED_TOP1[name], (name, result)
            assert result.model == MODEL and result.protocol == protocol and len(result.predictions) == 3
            assert result.predictions[0].probability >= result.predictions[1].probability


@pytest.mark.e2e
def test_async_client_concurrent(server, jpegs):
    async def run() -> list:
        async with AsyncClient(server.client.inference_url, key_file=key_file_of(server)) as client:
            return await asyncio.gather(*(client.classify(jpegs[n], MODEL, protocol=p)
                                          for n in PHOTOS for p in ("v1", "v2")))

    results = asyncio.run(asyncio.wait_for(run(), 60))
    assert [r.top1.index in EXPECTED_TOP1[n] for r, n in zip(results, [n for n in PHOTOS for _ in "12"])] \
        == [True] * 8


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_bad_images_are_typed_client_errors_with_the_servers_message(server, jpegs, protocol):
    with Client(server.client.inference_url, key_file=key_file_of(server), protocol=protocol) as client:
        with pytest.raises(ClientError) as err:
            client.classify(b"not an image", MODEL)
        assert (err.value.status, err.value.error_type) == (415, "UnsupportedMediaType")
        assert "not a recognised image" in err.value.message
        with pytest.raises(ClientError) as err:
            client.classify(jpegs["cat"][:3000], MODEL)  # a JPEG cut short
        assert (err.value.status, err.value.error_type) == (400, "CorruptImage")
        with pytest.raises(ClientError) as err:
            client.classify(jpegs["cat"], "no_such_model")
        assert err.value.status == 404 and err.value.attempts == 1


@pytest.mark.e2e
def test_key_renewal_survived(server, jpegs):
    key_file = key_file_of(server)
    with Client(server.client.inference_url, key_file=key_file) as client:
        assert client.classify(jpegs["cat"], MODEL).top1.index in EXPECTED_TOP1["cat"]
        old = json.loads(key_file.read_text())["inference"]["key"]
        rotated = subprocess.run([sys.executable, "-m", "scripts.ops.keys", "rotate", "--workdir",
                                  str(server.workdir)], cwd=ROOT, capture_output=True, text=True,
                                 timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        assert json.loads(key_file.read_text())["inference"]["key"] != old
        assert client.classify(jpegs["coffee"], MODEL).top1.index in EXPECTED_TOP1["coffee"]
    with Client(server.client.inference_url, key=old) as stale, pytest.raises(AuthError):
        stale.classify(jpegs["cat"], MODEL)  # the old key is gone: the renewal was real


@pytest.mark.e2e
def test_cli_table_json_and_exit_codes(server, photos, tmp_path):
    url, key = server.client.inference_url, str(key_file_of(server))
    done = classify(str(photos["cat.jpg"]), str(photos["coffee.jpg"]), "--url", url, "--model", MODEL,
                    "--key-file", key, "--top-k", "2")
    assert done.returncode == 0, done.stderr
    assert "cat.jpg" in done.stdout and "coffee.jpg" in done.stdout and "prob" in done.stdout
    assert len([line for line in done.stdout.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 4
    done = classify(str(photos["cat.jpg"]), "--url", url, "--model", MODEL, "--protocol", "v2", "--json",
                    env={"IMAGE_CLASSIFIER_KEY_FILE": key})
    [entry] = json.loads(done.stdout)
    assert done.returncode == 0 and entry["protocol"] == "v2"
    assert entry["predictions"][0]["index"] in EXPECTED_TOP1["cat"] and len(entry["predictions"]) == 5
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    done = classify(str(bad), str(photos["cat.jpg"]), "--url", url, "--model", MODEL, "--key-file", key)
    assert done.returncode == ClientError.exit_code and "UnsupportedMediaType" in done.stderr
    assert "cat.jpg" in done.stdout  # a refused photo does not stop the others
    wrong = tmp_path / KEY_FILE
    wrong.write_text(json.dumps({"inference": {"key": "wrong"}}))
    done = classify(str(photos["cat.jpg"]), "--url", url, "--model", MODEL, "--key-file", str(wrong))
    assert done.returncode == AuthError.exit_code and "refused" in done.stderr
    done = classify(str(photos["cat.jpg"]), "--url", "http://127.0.0.1:1", "--model", MODEL,
                    "--timeout", "2")  # port 1: nothing listens there, every connect is refused
    assert done.returncode == Unavailable.exit_code and "3 attempt" in done.stderr, done.stderr
    done = classify(str(tmp_path / "missing.jpg"), "--url", url, "--model", MODEL)
    assert done.returncode == 1


@pytest.mark.e2e
def test_the_installed_cli_classifies(installed_client, server, photos):
    done = classify(str(photos["cat.jpg"]), "--url", server.client.inference_url, "--model", MODEL,
                    "--json", env={"IMAGE_CLASSIFIER_KEY_FILE": str(key_file_of(server))},
                    exe=str(installed_client / "bin" / "classify"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["predictions"][0]["index"] in EXPECTED_TOP1["cat"]
