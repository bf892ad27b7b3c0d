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
from scripts.packaging.plan import PackagingInputs

SMALL = {"eval_views_per_photo": 1, "calibration_views_per_photo": 1, "min_eval_photos": 21,
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
    good = {"eval_source_photos": 300, "top1_agreement": 0.98, "top5_overlap": 0.95}
    assert quantize.judge(good, settings)["passed"]
    for key, bad in (("eval_source_photos", 299), ("top1_agreement", 0.969), ("top5_overlap", 0.89)):
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
    mar = package(PackagingInputs(model_name="lite0_int8_test", fmt="onnx-int8",
                                  model_config=config_with_guard(tmp_path, SMALL), export_dir=tmp_path))
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
        package(PackagingInputs(model_name="lite0_int8_refused", fmt="onnx-int8", model_config=config,
                                export_dir=tmp_path))
    assert not list(tmp_path.glob("*.mar"))


def labelled_folder(folder, photos: dict[str, tuple[bytes, int]]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in photos.items():
        (folder / name).write_bytes(data)
    (folder / quantize.LABELS_FILE).write_text(
        "file\tindex\n" + "".join(f"{name}\t{label}\n" for name, (_, label) in photos.items()))
    return folder


def test_photo_folders_are_read_with_their_labels_and_must_be_disjoint(tmp_path):
    from scripts.packaging.sample_photos import validation_images

    images = list(validation_images().items())
    cal = labelled_folder(tmp_path / "cal", {f"{n}.jpg": (b, i) for i, (n, b) in enumerate(images[:3])})
    ev = labelled_folder(tmp_path / "ev", {f"{n}.jpg": (b, i) for i, (n, b) in enumerate(images[3:])})
    folder = quantize.photo_folder(ev)
    assert len(folder.photos) == len(images) - 3 and set(folder.labels) == set(folder.photos)
    quantize.check_disjoint(quantize.photo_folder(cal), folder)
    (ev / "copy.jpg").write_bytes(images[0][1])  # the same photo under another name
    with pytest.raises(quantize.GuardError, match="also in the calibration set"):
        quantize.check_disjoint(quantize.photo_folder(cal), quantize.photo_folder(ev))


def test_int8_from_photo_folders_records_both_sets_and_top1(tmp_path):
    """The guard judged on a folder of independent labelled photos; the manifest says which
    photos (content hash), how many, and top-1 of FP32 and INT8 on them with intervals."""
    from scripts.packaging.sample_photos import EXPECTED_TOP1, validation_images

    images = validation_images()
    cal = labelled_folder(tmp_path / "cal", {"a.jpg": (images["flower"], 0),
                                             "b.jpg": (images["astronaut"], 0)})
    ev = labelled_folder(tmp_path / "ev", {f"{n}.jpg": (images[n], min(EXPECTED_TOP1[n]))
                                           for n in sorted(EXPECTED_TOP1)})
    guard = {**SMALL, "min_eval_photos": 4, "min_top1_agreement": 0.5,
             "min_top5_overlap": 0.5}
    mar = package(PackagingInputs(model_name="lite0_int8_dirs", fmt="onnx-int8", export_dir=tmp_path,
                                  model_config=config_with_guard(tmp_path, guard), calibration_dir=cal,
                                  eval_dir=ev))
    with zipfile.ZipFile(mar) as zf:
        figures = json.loads(zf.read("provenance.json"))["validation"]["int8_guard"]
    assert figures["eval_source_photos"] == 4 and figures["calibration_images"] == 2
    assert figures["eval_set"]["photos"] == 4 and len(figures["eval_set"]["content_sha256"]) == 64
    assert figures["labelled"]["n"] == 4 and len(figures["labelled"]["fp32_top1_ci95"]) == 2
    assert "top1_loss_points" in figures["labelled"]


def test_photo_folders_need_the_int8_format_and_each_other(tmp_path):
    with pytest.raises(ExportError, match="--calibration-dir goes with --format onnx-int8"):
        package(PackagingInputs(model_name="x", fmt="onnx", export_dir=tmp_path, calibration_dir=tmp_path))
    with pytest.raises(ExportError, match="go together"):
        package(PackagingInputs(model_name="x", fmt="onnx-int8", export_dir=tmp_path,
                                calibration_dir=tmp_path))
