"""The output head and test-time augmentation travel with the model: four archives of the research
repository (tests/support/research.py), packaged through the CLI and served by one real
TorchServe, each answer compared with the eager model through the same head and the same
preprocessing on the same bytes:

- multi-label: --activation sigmoid --temperature 1.5 --threshold 0.4, the predicted set marked;
- binary: one output logit, served as two classes 1 - p and p;
- probabilities already: a forward that ends in softmax, --activation none;
- test-time augmentation: a preprocessing module returning the image and its mirror image,
  batched (batchSize 4) so that several requests' views share forwards.

The head is written out here (torch.sigmoid, torch.softmax) rather than taken from handler/head.py:
the server's answer is checked against the notebook's arithmetic. Tolerance as in
test_research_code.py: 2e-3."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
import yaml
from image_classifier_client import results
from PIL import Image

from handler import layout
from handler.model_code import import_module
from scripts import repo
from scripts.ops import serve
from scripts.packaging import code_dir
from tests.support import research
from tests.support.servers import serving

pytestmark = pytest.mark.e2e

TOLERANCE = 2e-3
IMAGES = ["cat.jpg", "coffee.png", "astronaut.jpg"]
TEMPERATURE, THRESHOLD = 1.5, 0.4
# A forward that ends in softmax, as many notebooks' `predict` models do.
FILES = {"research_lib/prob_net.py": '''
import torch

from research_lib.net import ResearchNet


class ProbNet(ResearchNet):
    def forward(self, x):
        return torch.softmax(super().forward(x), dim=1)
'''}
# Test-time augmentation: the notebook's transform, and the same image mirrored.
FLIP = '''
import torch

from research_lib.transforms import eval_transform

_transform = eval_transform()


def preprocess(image):
    view = _transform(image)
    return torch.stack([view, view.flip(-1)])
'''
# name -> (model class, kwargs, labels, the package CLI's head flags, preprocessing module)
MODELS = {
    "multilabel": ("research_lib.net:ResearchNet", {"width": 6, "classes": 6}, 6,
                   ["--activation", "sigmoid", "--temperature", str(TEMPERATURE),
                    "--threshold", str(THRESHOLD)], research.PREPROCESS),
    "binary": ("research_lib.net:ResearchNet", {"width": 6, "classes": 1}, 2, [], research.PREPROCESS),
    "probs": ("research_lib.prob_net:ProbNet", {"width": 6, "classes": 5}, 5,
              ["--activation", "none"], research.PREPROCESS),
    "flip": ("research_lib.net:ResearchNet", {"width": 6, "classes": 5}, 5, [], FLIP),
}


def package_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.packaging.package", *args],
                          capture_output=True, text=True, timeout=600, cwd=repo.ROOT)


def model_config(tmp, name: str) -> str:
    config = yaml.safe_load((repo.CONFIG_DIR / repo.DEFAULT_MODEL / layout.MODEL_CONFIG).read_text())
    # The flip model batches concurrent requests: their views share forwards of at most 4 rows.
    config.update(minWorkers=1, maxWorkers=1, batchSize=4 if name == "flip" else 1, maxBatchDelay=200)
    path = tmp / f"{name}-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def prepare(tmp, code, name: str) -> tuple[torch.nn.Module, object, list[str]]:
    """`name`'s eager model, preprocessing function and files, and the package CLI's arguments.
    Imports run here, one model at a time (code_dir.importing is per process, not per thread)."""
    cls, kwargs, classes, flags, pre = MODELS[name]
    module, _, class_name = cls.partition(":")
    torch.manual_seed(11)
    with code_dir.importing(code):  # forgotten after: the server's checks must not see them
        net = getattr(import_module(module), class_name)(**kwargs)
        namespace: dict = {}
        exec(pre, namespace)
    (tmp / f"{name}_pre.py").write_text(pre)
    for param in net.parameters():
        torch.nn.init.normal_(param, std=0.5)
    torch.save(net.state_dict(), tmp / f"{name}.pth")
    (tmp / f"{name}.json").write_text(json.dumps([f"{name}-{i}" for i in range(classes)]))
    args = ["--code-dir", str(code), "--model-class", cls, "--model-kwargs", json.dumps(kwargs),
            "--checkpoint", str(tmp / f"{name}.pth"), "--labels", str(tmp / f"{name}.json"),
            "--preprocess-code", str(tmp / f"{name}_pre.py"), "--format", "onnx",
            "--model-name", name, "--model-config", model_config(tmp, name),
            "--export-path", str(tmp / "store"), *flags]
    return net.eval(), namespace["preprocess"], args


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("heads")
    code = research.write_repo(tmp / "repo", FILES)
    built = {name: prepare(tmp, code, name) for name in MODELS}
    with ThreadPoolExecutor(2) as pool:  # two packaging processes at a time: one per core
        for proc in pool.map(lambda args: package_cli(*args), [b[2] for b in built.values()]):
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {"tmp": tmp, "models": {name: b[:2] for name, b in built.items()}}


@pytest.fixture(scope="module")
def server(heads):
    models = ",".join(f"{name}={name}.mar" for name in MODELS)
    with serving(heads["tmp"] / "server", heads["tmp"] / "store", models, model="multilabel",
                 timeout=300) as srv:
        for name in MODELS:
            serve.wait_ready(srv, name, timeout=180, progress=False)
        yield srv


def eager_probabilities(heads: dict, name: str, body: bytes) -> torch.Tensor:
    """The notebook's answer: its preprocessing, its model, its head, its views averaged."""
    net, preprocess = heads["models"][name]
    views = preprocess(Image.open(io.BytesIO(body)).convert("RGB"))
    views = views if views.dim() == 4 else views[None]
    with torch.inference_mode():
        out = net(views)
    if name == "multilabel":
        return torch.sigmoid(out / TEMPERATURE)[0]
    if name == "binary":
        p = torch.sigmoid(out[0, 0])
        return torch.stack([1 - p, p])
    if name == "probs":
        return out[0]
    return torch.softmax(out, dim=1).mean(dim=0)


def predict(srv, name: str, body: bytes) -> list[dict]:
    resp = srv.client.predict(name, body, {"Content-Type": "image/jpeg"})
    assert resp.status_code == 200, resp.text
    return resp.json()["predictions"]


def assert_equal_to_eager(served: list[dict], probs: torch.Tensor) -> None:
    assert served, "no predictions"
    worst = max(abs(p["probability"] - probs[p["index"]].item()) for p in served)
    assert worst < TOLERANCE, (served, probs.tolist())
    assert [p["index"] for p in served] == probs.argsort(descending=True)[:len(served)].tolist()


@pytest.mark.parametrize("image", IMAGES)
def test_multilabel_sigmoid_answer_marks_the_classes_at_or_above_the_threshold(heads, server, photos, image):
    body = photos[image].read_bytes()
    served, probs = predict(server, "multilabel", body), eager_probabilities(heads, "multilabel", body)
    assert_equal_to_eager(served, probs)
    # Every class the eager head predicts is listed (beyond top_k if need be), and marked.
    clear = [i for i, p in enumerate(probs.tolist()) if abs(p - THRESHOLD) > TOLERANCE]
    marks = {p["index"]: p["predicted"] for p in served}
    assert {i for i in clear if probs[i] >= THRESHOLD} <= set(marks)
    assert all(marks[i] == (probs[i].item() >= THRESHOLD) for i in clear if i in marks)


@pytest.mark.parametrize("image", IMAGES)
def test_single_logit_is_served_as_two_classes(heads, server, photos, image):
    body = photos[image].read_bytes()
    served, probs = predict(server, "binary", body), eager_probabilities(heads, "binary", body)
    assert len(served) == 2 and {p["label"] for p in served} == {"binary-0", "binary-1"}
    assert_equal_to_eager(served, probs)
    assert abs(sum(p["probability"] for p in served) - 1) < 1e-5
    positive = {p["index"]: p["predicted"] for p in served}[1]
    assert positive == (probs[1].item() >= 0.5)


@pytest.mark.parametrize("image", IMAGES)
def test_a_forward_ending_in_softmax_is_served_as_it_is(heads, server, photos, image):
    body = photos[image].read_bytes()
    served, probs = predict(server, "probs", body), eager_probabilities(heads, "probs", body)
    assert_equal_to_eager(served, probs)
    assert all("predicted" not in p for p in served)


def test_flip_views_are_averaged_per_request_in_a_batch(heads, server, photos):
    """Six requests at once (batches of up to 4, 8 views): each answer is its own image's mean
    of two views, never a neighbour's."""
    bodies = [photos[name].read_bytes() for name in IMAGES * 2]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: predict(server, "flip", body), bodies))
    for body, served in zip(bodies, answers):
        assert_equal_to_eager(served, eager_probabilities(heads, "flip", body))


def test_open_inference_and_the_client_library_carry_the_predicted_set(heads, server, photos):
    body = photos["cat.jpg"].read_bytes()
    plain = predict(server, "multilabel", body)
    doc = {"id": "h", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                  "data": [base64.b64encode(body).decode()]}]}
    resp = requests.post(f"{server.client.inference_url}/v2/models/multilabel/infer", json=doc,
                         headers=server.client.auth_headers("inference"), timeout=60)
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    assert outputs["predicted"]["datatype"] == "BOOL"
    assert outputs["predicted"]["data"] == [p["predicted"] for p in plain]
    v1 = results.from_v1({"model": "multilabel", "version": "1.0", "predictions": plain})[2]
    v2 = results.from_v2(resp.json())[2]
    assert [p.predicted for p in v1] == [p.predicted for p in v2] == [p["predicted"] for p in plain]
    marked = results.Classification("multilabel", "1.0", v1).predicted
    assert marked == tuple(p["label"] for p in plain if p["predicted"])


def test_the_archive_records_its_head(heads):
    with zipfile.ZipFile(heads["tmp"] / "store" / "multilabel.mar") as mar:
        arch = json.loads(mar.read(layout.ARCHITECTURE))
        validation = json.loads(mar.read(layout.MANIFEST))["validation"]
    head = {"activation": "sigmoid", "temperature": TEMPERATURE, "threshold": THRESHOLD}
    assert arch["head"] == head and validation["head"] == head
    assert validation["max_abs_prob_diff"] <= validation["tolerance"]
