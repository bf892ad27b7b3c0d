"""Served predictions equal the research model's, for both backends.

One TorchServe serves a TorchScript .mar and an ONNX .mar (the shipped default) of the same checkpoint; every
sample photo, sent one by one and then concurrently (so batches form), must get the eager
(research) model's top-1 and probabilities within 1e-4.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from handler.preprocessing import PreprocessConfig, preprocess_bytes
from scripts.ops import serve
from scripts.packaging.export import build_model, default_checkpoint, load_checkpoint
from tests.support.servers import MODEL, ROOT, serving

pytestmark = pytest.mark.e2e

PROB_TOLERANCE = 1e-4
ONNX_LOGIT_TOLERANCE = 1e-3  # what export.py enforces for ONNX; measured far below it


def test_export_cli_onnx_is_checked_with_onnxruntime(tmp_path):
    out, report = tmp_path / "model.onnx", tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "scripts.packaging.export", "--format", "onnx",
                           "--out", str(out), "--report", str(report)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["format"] == "onnx" and result["passed"] and result["top1_agreement"] == 1.0
    assert result["max_abs_logit_diff"] <= ONNX_LOGIT_TOLERANCE
    import onnxruntime  # the artifact really is ONNX, runnable on its own

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    # The batch axis stays dynamic: one graph serves every batch size TorchServe forms.
    (logits,) = session.run(None, {"input": torch.zeros(3, 3, 224, 224).numpy()})
    assert logits.shape == (3, 1000)


def test_exported_onnx_is_fusable(tmp_path):
    """Constant pads and no empty Pad inputs: ORT folds every Pad into its convolution, so the
    graph it runs holds no Pad (the unfused export kept 17, each with layout reorders)."""
    from scripts.packaging.export import export
    from scripts.packaging.onnx_graph import op_counts

    model = build_model("efficientnet_lite0", 1000).eval()
    fused = export(model, tmp_path / "fused.onnx", "onnx", 224)
    before = export(model, tmp_path / "before.onnx", "onnx", 224, fusable=False)
    assert op_counts(fused)["Pad"] == 17 and all("" not in n.input for n in _nodes(fused, "Pad"))
    ran = op_counts(fused, optimized=True)
    assert ran["Pad"] == 0 and ran["Conv"] == 49
    assert op_counts(before, optimized=True)["Pad"] == 17


def _nodes(path: Path, op: str) -> list:
    import onnx

    return [n for n in onnx.load(str(path)).graph.node if n.op_type == op]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """A model store holding the default model built both ways (ONNX ships by default)."""
    from scripts.packaging import package
    from scripts.packaging.plan import PackagingInputs

    store = tmp_path_factory.mktemp("parity_store")
    for fmt in ("torchscript", "onnx"):
        package.package(PackagingInputs(model_name=f"lite0_{fmt}_parity", fmt=fmt, export_dir=store))
        (store / f"lite0_{fmt}_parity.mar").rename(store / f"{fmt}.mar")
    return store


@pytest.fixture(scope="module")
def both_served(stores, tmp_path_factory):
    with serving(tmp_path_factory.mktemp("parity_ts"), stores, "torchscript=torchscript.mar,onnx=onnx.mar",
                 min_ready=2, model="torchscript") as srv:
        serve.wait_ready(srv, "onnx", min_ready=2, timeout=180, progress=False)
        yield srv


@pytest.fixture(scope="module")
def eager_probs(stores, photos) -> dict[str, torch.Tensor]:
    """The research model: the checkpoint in eager PyTorch, fed by the archive's preprocessing."""
    with zipfile.ZipFile(stores / "torchscript.mar") as zf:
        cfg_path = stores / "served_preprocess.json"
        cfg_path.write_bytes(zf.read("preprocess.json"))
    cfg = PreprocessConfig.load(cfg_path)
    model = build_model(MODEL, 1000)
    load_checkpoint(model, default_checkpoint())
    model.eval()
    names = sorted(photos)
    batch = torch.stack([preprocess_bytes(photos[n].read_bytes(), cfg) for n in names])
    with torch.inference_mode():
        probs = torch.softmax(model(batch), dim=1)
    return dict(zip(names, probs))


def compare(name: str, body: dict, eager: torch.Tensor) -> float:
    """Assert parity for one response; returns the largest probability difference."""
    served = body["predictions"]
    top = eager.topk(len(served))
    assert served[0]["index"] == top.indices[0].item(), (name, served[0], top.indices[:3])
    assert {p["index"] for p in served} == set(top.indices.tolist()), name
    diffs = [abs(p["probability"] - eager[p["index"]].item()) for p in served]
    assert max(diffs) <= PROB_TOLERANCE, (name, diffs)
    return max(diffs)


@pytest.mark.parametrize("model", ["torchscript", "onnx"])
def test_served_predictions_equal_eager(both_served, photos, eager_probs, model):
    client = both_served.client
    names = sorted(photos)
    worst = 0.0
    for name in names:  # one by one: batches of 1
        resp = client.predict(model, photos[name].read_bytes())
        assert resp.status_code == 200, resp.text
        worst = max(worst, compare(name, resp.json(), eager_probs[name]))
    with ThreadPoolExecutor(4) as pool:  # concurrently: batches of up to batchSize
        responses = list(pool.map(lambda n: client.predict(model, photos[n].read_bytes()), names * 2))
    for name, resp in zip(names * 2, responses):
        assert resp.status_code == 200, resp.text
        worst = max(worst, compare(name, resp.json(), eager_probs[name]))
    print(f"\n{model}: {len(names) * 3} predictions, top-1 identical, max |prob diff| {worst:.2e}")


def test_each_archive_runs_its_own_backend(both_served):
    log = (Path(both_served.workdir) / "logs" / "model_log.log").read_text(errors="replace")
    # "Loaded NAME vVERSION (FORMAT, ...": the worker's JSON lines (config/log4j2.xml)
    loaded = re.findall(r"Loaded (\S+) v\S+ \((\w+),", log)
    assert any("_onnx" in name and fmt == "onnx" for name, fmt in loaded), loaded
    assert any("_torchscript" in name and fmt == "torchscript" for name, fmt in loaded), loaded
    assert not any("_onnx" in name and fmt != "onnx" for name, fmt in loaded), loaded


def test_default_archive_is_onnx_as_its_model_config_says(default_mar):
    """config/efficientnet_lite0/model-config.yaml export.format decides what `make package` ships."""
    from scripts.packaging.plan import export_settings

    assert export_settings(ROOT / "config" / MODEL / "model-config.yaml")["format"] == "onnx"
    with zipfile.ZipFile(default_mar) as zf:
        manifest = json.loads(zf.read("provenance.json"))
        names = set(zf.namelist())
    assert manifest["model"]["format"] == "onnx" and manifest["validation"]["passed"]
    assert "model.onnx" in names and "model.pt" not in names


def test_export_format_errors_are_clear(tmp_path):
    from scripts.packaging.export import ExportError
    from scripts.packaging.plan import export_settings

    config = tmp_path / "model-config.yaml"
    config.write_text("minWorkers: 1\n")
    assert export_settings(config)["format"] == "torchscript"
    config.write_text("export:\n  format: tflite\n")
    with pytest.raises(ExportError, match="export.format 'tflite'"):
        export_settings(config)


def test_onnx_runner_pins_torch_threads(stores, tmp_path):
    """The handler's own torch ops run beside ONNX Runtime: torch's pool must shrink too, or its
    idle OpenMP threads spin on the other workers' cores."""
    from handler.runner import load_runner

    with zipfile.ZipFile(stores / "onnx.mar") as zf:
        zf.extract("model.onnx", tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        runner = load_runner(tmp_path / "model.onnx", threads=1)
        assert runner.backend == "onnx" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_bench_can_package_the_unfused_graph(tmp_path):
    """PackagingInputs(fuse_pads=False), no model setting, packages the graph as torch emits it (the
    benchmark's "before" archive), still validated against the eager model."""
    from scripts.packaging import package
    from scripts.packaging.onnx_graph import op_counts
    from scripts.packaging.plan import PackagingInputs

    mar = package.package(PackagingInputs(model_name="lite0_unfused", export_dir=tmp_path, fuse_pads=False))
    with zipfile.ZipFile(mar) as zf:
        zf.extract("model.onnx", tmp_path)
        validation = json.loads(zf.read("provenance.json"))["validation"]
    assert validation["passed"]
    assert op_counts(tmp_path / "model.onnx", optimized=True)["Pad"] == 17  # none folded
