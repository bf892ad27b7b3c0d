"""A research team's code as it is, packaged through the CLI and served by a real TorchServe:
a model class in a package folder whose modules import each other (`--code-dir`,
`--model-class package.module:Class`), and a notebook's `transforms.Compose` preprocessing that
returns tensors. Each answer is compared with the eager model through the same preprocessing
on the same bytes. Tolerance as in test_own_model.py: 2e-3."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml
from PIL import Image

from handler import layout
from handler.model_code import import_module
from scripts import repo
from scripts.packaging import code_dir
from tests.support import research
from tests.support.servers import serving

pytestmark = pytest.mark.e2e

TOLERANCE = 2e-3
IMAGES = ["cat.jpg", "coffee.png", "astronaut.jpg"]
LABELS = [f"research-{i}" for i in range(5)]
KWARGS = {"width": 6, "classes": 5}


def package_cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "scripts.packaging.package", *args],
                          capture_output=True, text=True, timeout=600, cwd=repo.ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def research_model(tmp_path_factory) -> dict:
    """The research repository, its checkpoint, its archive (through the CLI) and the eager
    model and transform the notebook would use, imported from the repository itself."""
    tmp = tmp_path_factory.mktemp("research")
    code = research.write_repo(tmp / "repo")
    (tmp / "pre.py").write_text(research.PREPROCESS)
    (tmp / "labels.json").write_text(json.dumps(LABELS))
    config = yaml.safe_load((repo.CONFIG_DIR / repo.DEFAULT_MODEL / layout.MODEL_CONFIG).read_text())
    config.update(minWorkers=1, maxWorkers=1)
    (tmp / "model-config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(5)
    with code_dir.importing(code):  # forgotten after: the server's checks must not see them
        net = import_module("research_lib.net").ResearchNet(**KWARGS)
        transform = import_module("research_lib.transforms").eval_transform()
    for param in net.parameters():
        torch.nn.init.normal_(param, std=0.5)
    torch.save(net.state_dict(), tmp / "research.pth")
    package_cli("--code-dir", str(code), "--model-class", research.MODEL_CLASS,
                "--model-kwargs", json.dumps(KWARGS), "--checkpoint", str(tmp / "research.pth"),
                "--labels", str(tmp / "labels.json"), "--preprocess-code", str(tmp / "pre.py"),
                "--format", "onnx", "--model-name", "research",
                "--model-config", str(tmp / "model-config.yaml"), "--export-path", str(tmp / "store"))
    return {"tmp": tmp, "store": tmp / "store", "net": net.eval(), "transform": transform}


@pytest.fixture(scope="module")
def research_server(research_model):
    with serving(research_model["tmp"] / "server", research_model["store"], "research=research.mar",
                 model="research", timeout=300) as srv:
        yield srv


def reference(research_model: dict, body: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(body)).convert("RGB")
    with torch.inference_mode():
        return torch.softmax(research_model["net"](research_model["transform"](image)[None]), 1)[0]


@pytest.mark.parametrize("image", IMAGES)
def test_served_answer_equals_the_research_model(research_model, research_server, photos, image):
    body = photos[image].read_bytes()
    resp = research_server.client.predict("research", body)
    assert resp.status_code == 200, resp.text
    served = {p["index"]: p["probability"] for p in resp.json()["predictions"]}
    probs = reference(research_model, body)
    assert len(served) == 5
    assert max(abs(p - probs[i].item()) for i, p in served.items()) < TOLERANCE
    assert [p["label"] for p in resp.json()["predictions"]] == [LABELS[i] for i in served]


def test_the_archive_ships_and_hashes_the_code_folder(research_model):
    with zipfile.ZipFile(research_model["store"] / "research.mar") as mar:
        names = set(mar.namelist())
        provenance = json.loads(mar.read(layout.MANIFEST))
        arch = json.loads(mar.read(layout.ARCHITECTURE))
        shipped = {rel: mar.read(rel).decode() for rel in research.FILES}
    assert shipped == research.FILES  # the same bytes, at the archive's root
    assert set(research.FILES) <= set(provenance["files"]) and set(research.FILES) <= names
    assert layout.MODEL_FILE not in names  # no architecture file: the class is a module's
    assert arch["module"] == "research_lib.net" and arch["class"] == "ResearchNet"
    assert provenance["validation"]["preprocess_code"]["output_shape"] == [3, 64, 64]
