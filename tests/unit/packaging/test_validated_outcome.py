"""The validated outcome at packaging: accuracy measured on labelled photos through the served
path (--eval-dir) and the archive refused when it is not the expected one (--expect-top1, which
needs --eval-dir); the figures and golden answers the archive records, and the default archive
replaying its own golden answers; how a golden difference and a changed library are named.

The labelled set (tests/support/labelled.py) is views of the project's sample photos, labelled
with the default model's answers through its RGB preprocessing, so top-1 is 1.0 by construction
and a BGR preprocessing must fall short of it.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from handler import golden, layout, provenance
from handler.preprocessing import PreprocessConfig
from handler.runner import load_runner
from scripts import repo
from scripts.packaging import package
from scripts.packaging.sample_photos import load_photos
from tests.support.labelled import VIEWS_PER_PHOTO
from tests.support.servers import MODEL


def test_expect_top1_without_eval_dir_is_an_error(capsys):
    with pytest.raises(SystemExit) as exited:
        package.main(["--expect-top1", "0.87"])
    assert exited.value.code == 2
    assert "--expect-top1 needs --eval-dir" in capsys.readouterr().err


def test_bgr_preprocessing_refused_by_expect_top1(tmp_path, labelled, capsys):
    """The archive's preprocessing differs from the labels' (BGR for RGB): the artifact and the
    eager model still agree with each other, but top-1 1.0 is outside the measured interval."""
    bgr = json.loads((repo.CONFIG_DIR / MODEL / layout.PREPROCESS_CONFIG).read_text())
    bgr["channel_order"] = "BGR"
    (tmp_path / "bgr.json").write_text(json.dumps(bgr))
    store = tmp_path / "store"
    rc = package.main(["--model-name", "lite0_bgr", "--preprocess", str(tmp_path / "bgr.json"),
                       "--eval-dir", str(labelled), "--expect-top1", "1.0", "--export-path", str(store)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2
    assert len(errors) == 1 and "--expect-top1 1.0 lies outside the packaged model's top-1" in errors[0]
    assert not list(store.glob("*.mar")) if store.exists() else True  # nothing archived


def test_packaging_records_accuracy_and_golden_answers(evaluated_mar, labelled):
    with zipfile.ZipFile(evaluated_mar) as zf:
        manifest = json.loads(zf.read(layout.MANIFEST))
        names = zf.namelist()
    figures = manifest["validation"]["accuracy"]
    n = len(load_photos()) * VIEWS_PER_PHOTO
    assert figures["served"]["n"] == figures["eager"]["n"] == n
    assert figures["served"]["top1"] == 1.0 and figures["served"]["top1_ci95"][1] == 1.0
    assert figures["set"]["folder"] == str(labelled)
    assert layout.GOLDEN_ANSWERS in manifest["files"] and layout.GOLDEN_ANSWERS in names
    golden_bytes = sum(e["bytes"] for name, e in manifest["files"].items() if name.startswith("golden/"))
    assert golden_bytes < 1 << 20
    assert manifest["environment"]["pillow"]["libjpeg"] and "onnxruntime" in manifest["environment"]


def test_golden_difference_names_top1_and_probability():
    probs = np.full(10, 0.01, dtype=np.float32)
    probs[3] = 0.91
    found = torch.from_numpy(probs)
    same = {"indices": [3, 0], "probabilities": [0.91, 0.01]}
    assert golden.difference(same, found, 1e-4) is None
    moved = {**same, "probabilities": [0.9, 0.01]}
    assert "probability difference" in golden.difference(moved, found, 1e-4)
    other = {"indices": [4, 3], "probabilities": [0.5, 0.4]}
    assert "expected top-1 4" in golden.difference(other, found, 1e-4)


def test_environment_differences_name_the_changed_library():
    running = provenance.environment()
    manifest = {"versions": {}, "environment": {**running, "pillow": {**running["pillow"], "libjpeg": "0.1"}}}
    changed = provenance.environment_differences(manifest)
    assert changed == [f"environment.pillow.libjpeg: exported 0.1, running {running['pillow']['libjpeg']}"]


def test_the_default_archive_replays_its_own_golden_answers(default_model_dir):
    cfg = PreprocessConfig.load(default_model_dir / layout.PREPROCESS_CONFIG)
    manifest = json.loads((default_model_dir / layout.MANIFEST).read_text())
    seconds = golden.replay(default_model_dir, load_runner(default_model_dir / "model.onnx"), cfg, manifest)
    assert seconds is not None and seconds < 1.0
    answers = json.loads((default_model_dir / layout.GOLDEN_ANSWERS).read_text())["photos"]
    assert all(0.0 < sum(a["probabilities"]) <= 1.0 + 1e-6 for a in answers.values())
