"""The mission's scenario: a research team's own model, exactly as their notebook validated it.

Three archives packaged through the CLI and served by one real TorchServe:
- a "notebook" model class with constructor arguments, in a file this test writes, with its
  checkpoint and a preprocessing module of its own (greyscale, letterbox, a non-square resize),
  in the eager format (the architecture file + the state dict);
- a timm model, randomly initialised and saved locally, its preprocessing numbers from timm's
  pretrained config (ONNX);
- a Hugging Face model saved with save_pretrained, labels and preprocessing from its folder (ONNX);
- the notebook model again, with a preprocessing function that has a bug no validation photo hits.

Each HTTP answer is compared with the eager model plus the notebook's own preprocessing (the
module itself, timm's eval transform, the Hugging Face image processor) on the same bytes.
Tolerance: the export validated the artifact within 1e-3 of the eager logits (1e-5 eager);
softmax moves a probability by at most half the largest logit change, the answer rounds to
6 decimals, and the notebook's transforms differ from ours by float rounding: 2e-3.
"""

from __future__ import annotations

import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from handler import layout
from scripts import repo
from scripts.ops import serve
from tests.support.packaging import ConcurrentPackaging
from tests.support.servers import serving

pytestmark = pytest.mark.e2e

TOLERANCE = 2e-3
IMAGES = ["cat.jpg", "coffee.png", "astronaut.jpg"]
LABELS = [f"notebook-class-{i}" for i in range(10)]
MODEL_FILE = '''
import torch
from torch import nn


class NotebookNet(nn.Module):
    """A research team's own classifier: its constructor takes arguments."""

    def __init__(self, width: int = 8, classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width * 2, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))
'''
PREPROCESS_CODE = '''
import numpy as np
from PIL import Image, ImageOps


def preprocess(image: Image.Image) -> np.ndarray:
    """Greyscale, letterbox to 4:3 with a grey fill, 128 x 96, the team's own statistics."""
    grey = ImageOps.grayscale(image).convert("RGB")
    boxed = ImageOps.pad(grey, (128, 96), color=(114, 114, 114), method=Image.Resampling.BILINEAR)
    arr = np.asarray(boxed, dtype=np.float32) / 255.0
    return ((arr - 0.45) / 0.22).transpose(2, 0, 1).copy()
'''
# Passes validation (no validation photo is 33 or 35 pixels wide), fails at serving.
FRAGILE_CODE = PREPROCESS_CODE + '''

_validated = preprocess


def preprocess(image: Image.Image) -> np.ndarray:
    if image.width == 33:
        raise ValueError("a bug the validation photos did not hit")
    if image.width == 35:
        return _validated(image)[:, :50]  # the wrong shape
    return _validated(image)
'''
KWARGS = {"width": 12, "classes": 10, "dropout": 0.2}
TIMM_NAME = "mobilenetv3_small_050"


def import_file(path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict:
    """The three models' files, their archives (through the CLI) and their eager references.
    The four packagings (distinct model names) run concurrently, each started when its files exist."""
    tmp = tmp_path_factory.mktemp("own_model")
    store = tmp / "store"
    config = yaml.safe_load((repo.CONFIG_DIR / repo.DEFAULT_MODEL / layout.MODEL_CONFIG).read_text())
    config.update(minWorkers=1, maxWorkers=1)
    (tmp / "model-config.yaml").write_text(yaml.safe_dump(config))
    common = ["--model-config", str(tmp / "model-config.yaml"), "--export-path", str(store)]
    (tmp / "labels.json").write_text(json.dumps(LABELS))
    torch.manual_seed(3)

    with ConcurrentPackaging() as packagings:
        (tmp / "notebook_net.py").write_text(MODEL_FILE)
        (tmp / "notebook_pre.py").write_text(PREPROCESS_CODE)
        net = import_file(tmp / "notebook_net.py", "notebook_net_reference").NotebookNet(**KWARGS)
        for param in net.parameters():  # non-trivial BatchNorm statistics in the checkpoint too
            torch.nn.init.normal_(param, std=0.5)
        net.features[1].running_mean.uniform_(-0.2, 0.2)
        torch.save(net.state_dict(), tmp / "notebook.pth")
        packagings.start("--model-file", str(tmp / "notebook_net.py"), "--model-class", "NotebookNet",
                         "--model-kwargs", json.dumps(KWARGS), "--checkpoint", str(tmp / "notebook.pth"),
                         "--labels", str(tmp / "labels.json"),
                         "--preprocess-code", str(tmp / "notebook_pre.py"),
                         "--format", "eager", "--model-name", "notebook", *common)
        (tmp / "fragile_pre.py").write_text(FRAGILE_CODE)
        packagings.start("--model-file", str(tmp / "notebook_net.py"), "--model-kwargs", json.dumps(KWARGS),
                         "--checkpoint", str(tmp / "notebook.pth"), "--labels", str(tmp / "labels.json"),
                         "--preprocess-code", str(tmp / "fragile_pre.py"), "--format", "onnx",
                         "--model-name", "fragile", *common)

        import timm

        timm_model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=10)
        torch.save(timm_model.state_dict(), tmp / "timm.pth")
        packagings.start("--arch", f"timm:{TIMM_NAME}", "--checkpoint", str(tmp / "timm.pth"),
                         "--labels", str(tmp / "labels.json"), "--format", "onnx",
                         "--model-name", "timm_small", *common)

        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        hf_config = ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=96, image_size=64, patch_size=16, num_labels=10,
                              id2label={i: f"hf-{i}" for i in range(10)},
                              label2id={f"hf-{i}": i for i in range(10)})
        ViTForImageClassification(hf_config).save_pretrained(tmp / "hf_vit")
        ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.4, 0.45, 0.5],
                          image_std=[0.25, 0.25, 0.3]).save_pretrained(tmp / "hf_vit")
        packagings.start("--arch", f"hf:{tmp / 'hf_vit'}", "--format", "onnx", "--model-name", "hf_vit",
                         *common)
        packagings.wait()
    return {"tmp": tmp, "store": store, "net": net.eval(), "timm": timm_model.eval()}


@pytest.fixture(scope="module")
def own_server(own):
    models = ",".join(f"{n}={n}.mar" for n in ("notebook", "timm_small", "hf_vit", "fragile"))
    with serving(own["tmp"] / "server", own["store"], models, model="notebook", timeout=300) as srv:
        for name in ("timm_small", "hf_vit", "fragile"):
            serve.wait_ready(srv, name, timeout=180, progress=False)
        yield srv


def notebook_reference(own: dict, body: bytes) -> torch.Tensor:
    pre = import_file(own["tmp"] / "notebook_pre.py", "notebook_pre_reference").preprocess
    image = Image.open(io.BytesIO(body)).convert("RGB")
    with torch.inference_mode():
        return torch.softmax(own["net"](torch.from_numpy(pre(image))[None]), 1)[0]


def timm_reference(own: dict, body: bytes) -> torch.Tensor:
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=own["timm"]))
    with torch.inference_mode():
        return torch.softmax(own["timm"](transform(Image.open(io.BytesIO(body)).convert("RGB"))[None]), 1)[0]


def hf_reference(own: dict, body: bytes) -> torch.Tensor:
    from transformers import ViTForImageClassification, ViTImageProcessor

    folder = own["tmp"] / "hf_vit"
    model = ViTForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    pixels = ViTImageProcessor.from_pretrained(folder)(Image.open(io.BytesIO(body)).convert("RGB"),
                                                       return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return torch.softmax(model(pixel_values=pixels).logits, 1)[0]


REFERENCES = {"notebook": notebook_reference, "timm_small": timm_reference, "hf_vit": hf_reference}


def assert_same_top5(answer: dict, probs: torch.Tensor) -> None:
    """The served top-5 are the reference's five best (up to TOLERANCE where two are that close)
    and each served probability is the reference's within TOLERANCE."""
    served = {p["index"]: p["probability"] for p in answer["predictions"]}
    assert len(served) == 5
    assert max(abs(p - probs[i].item()) for i, p in served.items()) < TOLERANCE
    others = [probs[i].item() for i in range(len(probs)) if i not in served]
    assert min(served.values()) >= max(others) - TOLERANCE
    assert list(served) == sorted(served, key=lambda i: -served[i])


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("image", IMAGES)
def test_served_top5_equals_the_notebook_model(own, own_server, photos, name, image):
    body = photos[image].read_bytes()
    resp = own_server.client.predict(name, body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["model"] == name
    assert_same_top5(answer, REFERENCES[name](own, body))


def test_labels_travel_with_each_model(own, own_server, photos):
    body = photos["cat.jpg"].read_bytes()
    hf = own_server.client.predict("hf_vit", body).json()["predictions"]
    assert all(p["label"] == f"hf-{p['index']}" for p in hf)  # the folder's id2label
    nb = own_server.client.predict("notebook", body).json()["predictions"]
    assert all(p["label"] == LABELS[p["index"]] for p in nb)


def test_the_archive_ships_and_hashes_the_code_it_validated(own):
    with zipfile.ZipFile(own["store"] / "notebook.mar") as mar:
        names = set(mar.namelist())
        provenance = json.loads(mar.read(layout.MANIFEST))
        arch = json.loads(mar.read(layout.ARCHITECTURE))
        pre = json.loads(mar.read(layout.PREPROCESS_CONFIG))
        code = mar.read(layout.PREPROCESS_CODE).decode()
        model_file = mar.read(layout.MODEL_FILE).decode()
        archiver = json.loads(mar.read(layout.ARCHIVER_MANIFEST))
    assert code == PREPROCESS_CODE and model_file == MODEL_FILE  # the same bytes
    assert {layout.PREPROCESS_CODE, layout.MODEL_FILE, "weights.pth"} <= names
    assert {layout.PREPROCESS_CODE, layout.MODEL_FILE} <= set(provenance["files"])
    assert pre["code"] == layout.PREPROCESS_CODE
    assert arch["class"] == "NotebookNet" and arch["kwargs"] == KWARGS and arch["format"] == "eager"
    assert archiver["model"]["modelFile"] == layout.MODEL_FILE  # TorchServe's model file
    check = provenance["validation"]["preprocess_code"]
    assert check["output_shape"] == [3, 96, 128] and check["photos"] >= 6
    with zipfile.ZipFile(own["store"] / "timm_small.mar") as mar:
        timm_pre = json.loads(mar.read(layout.PREPROCESS_CONFIG))
    assert timm_pre["input_size"] == 224 and timm_pre["resize_size"] == 256  # crop_pct 0.875
    assert timm_pre["interpolation"] == "bicubic"


def test_preprocessing_that_fails_at_serving_fails_that_request_alone(own, own_server, photos):
    """A notebook function with a bug that the validation photos did not hit: at serving, the
    request that hits it gets a 500 JSON (a server fault, counted as one), and its batch
    neighbours their predictions; the worker lives on."""
    pids = {w["pid"] for w in own_server.client.workers("fragile")}
    good = photos["cat.jpg"].read_bytes()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: own_server.client.predict("fragile", body),
                                [png(33), good, png(35), good, good, png(33)]))
    for resp, expected in zip(answers, (500, 200, 500, 200, 200, 500)):
        assert resp.status_code == expected, resp.text
        if expected == 500:
            assert resp.json()["type"] == "InternalServerError"
    assert {w["pid"] for w in own_server.client.workers("fragile")} == pids
    metrics = own_server.client.metrics()
    faults = [line for line in metrics.splitlines()
              if line.startswith("handler_server_errors_total{") and 'ModelName="fragile"' in line]
    assert faults and float(faults[0].rsplit(" ", 1)[1]) >= 3


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()
