"""The INT8 export path: quantized graph, accuracy guard in the manifest, refusal below threshold.

Bounded for the suite: one view per photo (the shipped guard uses 25 views of 21 photos and 8
calibration views of 8 photos; BENCHMARKS.md has its figures), so the thresholds here are set
for what 21 images can show, and the refusal uses a threshold no model can meet.
"""

from __future__ import annotations

import json
import zipfile

import pytest
import yaml

from scripts import repo
from scripts.packaging import quantize
from scripts.packaging.export import ExportError
from scripts.packaging.package import package

SMALL = {"eval_views_per_photo": 1, "calibration_views_per_photo": 1, "min_eval_images": 21,
         "min_top1_agreement": 0.8, "min_top5_overlap": 0.6}


def config_with_guard(tmp_path, guard: dict):
    doc = yaml.safe_load((repo.CONFIG_DIR / repo.DEFAULT_MODEL / "model-config.yaml").read_text())
    doc.setdefault("export", {})["int8_guard"] = guard
    path = tmp_path / "model-config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_guard_settings_reject_unknown_keys():
    with pytest.raises(quantize.GuardError, match="min_top1_agreemnt"):
        quantize.guard_settings({"min_top1_agreemnt": 0.9})


def test_judge_refuses_each_unmet_threshold():
    settings = quantize.guard_settings({})
    good = {"eval_images": 525, "top1_agreement": 0.98, "top5_overlap": 0.95}
    assert quantize.judge(good, settings)["passed"]
    for key, bad in (("eval_images", 499), ("top1_agreement", 0.969), ("top5_overlap", 0.89)):
        with pytest.raises(quantize.GuardError, match="guard failed"):
            quantize.judge({**good, key: bad}, settings)


def test_wilson_interval():
    assert quantize.wilson(18, 20) == [0.699, 0.972]
    assert quantize.wilson(20, 20)[1] == 1.0


def test_labelled_photos_are_foolbox_twenty():
    found = quantize.labelled_photos()
    assert len(found) == 20 and found[0][:2] == ("imagenet_00_243.jpg", 243)
    # disjoint in source photo: no evaluation photo is a calibration photo
    assert not set(quantize.evaluation_photos()) & set(quantize.calibration_photos())


def test_int8_archive_carries_its_guard(tmp_path):
    mar = package(model_name="lite0_int8_test", fmt="onnx-int8",
                  model_config=config_with_guard(tmp_path, SMALL), export_dir=tmp_path)
    with zipfile.ZipFile(mar) as zf:
        manifest = json.loads(zf.read("provenance.json"))
        graph = zf.read("model.onnx")
    guard = manifest["validation"]["int8_guard"]
    assert manifest["model"]["format"] == "onnx-int8" and guard["passed"]
    assert guard["eval_images"] == 21 and guard["top1_agreement"] >= 0.8
    assert guard["labelled"]["n"] == 20 and len(guard["labelled"]["int8_top1_ci95"]) == 2
    assert guard["thresholds"]["min_top1_agreement"] == 0.8
    assert b"QuantizeLinear" in graph and b"DequantizeLinear" in graph


def test_int8_below_threshold_is_not_packaged(tmp_path):
    config = config_with_guard(tmp_path, {**SMALL, "min_top1_agreement": 1.01})
    with pytest.raises(ExportError, match="refusing to package"):
        package(model_name="lite0_int8_refused", fmt="onnx-int8", model_config=config,
                export_dir=tmp_path)
    assert not list(tmp_path.glob("*.mar"))
