"""Bring your own model: a random-init torchvision ResNet-18 with 10 classes, its own labels and
its own preprocessing (160 px, bilinear, other mean/std, BGR), packaged with scripts.packaging.package
and served by a real TorchServe over HTTP. The served prediction must equal the eager model's
on the same bytes through the same preprocessing config."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch
import torchvision
import yaml

from handler.preprocessing import PreprocessConfig, preprocess_bytes
from scripts import repo
from scripts.packaging import package
from tests.support.servers import serving

pytestmark = pytest.mark.e2e

NAME = "byo_resnet18_test"
LABELS = [f"byo-class-{i}" for i in range(10)]
PREPROCESS = {"input_size": 160, "resize_size": 182, "interpolation": "bilinear",
              "mean": [0.5, 0.45, 0.4], "std": [0.2, 0.25, 0.3], "channel_order": "BGR"}
IMAGES = ["cat.jpg", "coffee.png", "rocket.jpg"]


def eager_model(state: dict) -> torch.nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def byo(tmp_path_factory) -> dict:
    """Checkpoint, labels, preprocessing and model config files, and the packaged archive."""
    tmp = tmp_path_factory.mktemp("byo")
    torch.manual_seed(7)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.save(state, tmp / "resnet18_10.pth")
    (tmp / "labels.json").write_text(json.dumps(LABELS))
    (tmp / "preprocess.json").write_text(json.dumps(PREPROCESS))
    config = yaml.safe_load((repo.CONFIG_DIR / repo.DEFAULT_MODEL / "model-config.yaml").read_text())
    config.update(minWorkers=1, maxWorkers=1)
    (tmp / "model-config.yaml").write_text(yaml.safe_dump(config))
    try:
        code = package.main(["--arch", "resnet18", "--checkpoint", str(tmp / "resnet18_10.pth"),
                             "--labels", str(tmp / "labels.json"),
                             "--preprocess", str(tmp / "preprocess.json"),
                             "--model-config", str(tmp / "model-config.yaml"),
                             "--model-name", NAME, "--version", "2.1", "--export-path", str(tmp / "store")])
    finally:
        shutil.rmtree(repo.BUILD_DIR / NAME, ignore_errors=True)
    assert code == 0
    return {"tmp": tmp, "mar": tmp / "store" / f"{NAME}.mar", "state": state}


@pytest.fixture(scope="module")
def byo_server(byo):
    with serving(byo["tmp"] / "server", byo["mar"].parent, f"{NAME}={NAME}.mar", model=NAME) as srv:
        yield srv


def test_archive_says_what_it_holds(byo):
    with zipfile.ZipFile(byo["mar"]) as mar:
        names = set(mar.namelist())
        arch = json.loads(mar.read("architecture.json"))
        labels = json.loads(mar.read("index_to_name.json"))
        pre = json.loads(mar.read("preprocess.json"))
        provenance = json.loads(mar.read("provenance.json"))
    assert "model.py" not in names  # TorchScript needs no model code for a torchvision arch
    assert arch["arch"] == "resnet18" and arch["source"] == "torchvision"
    assert arch["num_classes"] == 10
    assert arch["torchvision_version"] == torchvision.__version__.split("+")[0]
    assert labels == {str(i): name for i, name in enumerate(LABELS)}
    assert pre == PREPROCESS
    assert provenance["model"]["version"] == "2.1"
    assert provenance["files"]["architecture.json"]["bytes"] > 0
    assert provenance["checkpoint"]["name"] == "resnet18_10.pth"


@pytest.mark.parametrize("image", IMAGES)
def test_served_prediction_equals_eager_model(byo, byo_server, photos, image):
    body = photos[image].read_bytes()
    resp = byo_server.client.predict(NAME, body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["model"] == NAME and answer["version"] == "2.1"
    served = {p["index"]: p["probability"] for p in answer["predictions"]}
    assert [p["label"] for p in answer["predictions"]] == [LABELS[i] for i in served]

    cfg = PreprocessConfig.from_dict(PREPROCESS)
    with torch.inference_mode():
        probs = torch.softmax(eager_model(byo["state"])(preprocess_bytes(body, cfg)[None]), 1)[0]
    top = probs.topk(5)
    assert list(served) == top.indices.tolist()
    assert max(abs(served[i] - probs[i].item()) for i in served) < 1e-4

    # The model's own config is what makes them equal: RGB order or the default model's
    # preprocessing would give other probabilities.
    for other in (PreprocessConfig.from_dict({**PREPROCESS, "channel_order": "RGB"}),
                  PreprocessConfig.load(repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json")):
        with torch.inference_mode():
            wrong = torch.softmax(eager_model(byo["state"])(preprocess_bytes(body, other)[None]), 1)[0]
        assert max(abs(served[i] - wrong[i].item()) for i in served) > 1e-3


def test_only_the_byo_model_is_served(byo_server):
    # One worker, from the model's own config; no other model answers on this server.
    assert byo_server.client.ready_workers(NAME) == 1
    assert byo_server.client.predict("efficientnet_lite0", b"x").status_code == 404
