"""Device selection follows TorchServe: the worker runs on the GPU TorchServe assigned it
(`gpu_id`), on the CPU otherwise, and falls back to the CPU with a reason when it cannot use
the GPU. Reduced precision only where the archive's manifest shows the export validated it.

No GPU here: the decision (`device.placement`) is tested with CUDA present or absent as inputs,
the runners' autocast path runs on the CPU, and the handler is initialised in-process with a
`gpu_id` as TorchServe would hand it on a GPU server."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from handler import device, torchserve_entry
from handler.device import CPU_PROVIDER, CUDA_PROVIDER, Placement
from handler.runner import backend_of, load_runner
from handler.settings import ConfigError
from scripts.packaging import precision
from tests.support.context import make_context, unpack

VALIDATED = {"reduced_precision": {"dtype": "bfloat16", "passed": True}}
FAILED = {"reduced_precision": {"dtype": "bfloat16", "passed": False}}


@pytest.mark.parametrize("gpu_id", [None, ""])
@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_no_gpu_assigned_runs_fp32_on_the_cpu(gpu_id, backend):
    placed = device.placement(gpu_id, backend, "auto", VALIDATED, cuda_available=True,
                           ort_providers=[CUDA_PROVIDER, CPU_PROVIDER])
    assert (placed.device, placed.dtype, placed.on_gpu) == ("cpu", "float32", False)
    assert "no GPU assigned" in placed.reason


def test_torchscript_on_the_assigned_gpu_in_the_validated_precision():
    placed = device.placement(1, "torchscript", "auto", VALIDATED, cuda_available=True)
    assert (placed.device, placed.dtype) == ("cuda:1", "bfloat16")
    assert "validated at export" in placed.describe()


@pytest.mark.parametrize("validation", [None, {}, FAILED])
def test_unvalidated_precision_stays_fp32_on_the_gpu(validation):
    placed = device.placement(0, "torchscript", "auto", validation, cuda_available=True)
    assert (placed.device, placed.dtype) == ("cuda:0", "float32")


def test_float32_setting_forces_full_precision_on_the_gpu():
    assert device.placement(0, "torchscript", "float32", VALIDATED, cuda_available=True).dtype == "float32"


@pytest.mark.parametrize("precision,validation", [("float16", VALIDATED), ("bfloat16", FAILED),
                                                  ("bfloat16", None)])
def test_a_precision_the_export_did_not_validate_is_refused(precision, validation):
    with pytest.raises(ConfigError, match="not validated at export"):
        device.placement(0, "torchscript", precision, validation, cuda_available=True)


def test_unknown_precision_names_the_choices():
    with pytest.raises(ConfigError, match="auto, float32, bfloat16, float16"):
        device.placement(None, "onnx", "fp8")


def test_gpu_assigned_without_cuda_falls_back_to_the_cpu_with_a_reason():
    placed = device.placement(0, "torchscript", "auto", VALIDATED, cuda_available=False)
    assert (placed.device, placed.dtype) == ("cpu", "float32")
    assert "assigned GPU 0" in placed.reason and "no usable CUDA" in placed.reason


def test_onnx_on_the_gpu_through_the_cuda_provider_in_fp32():
    placed = device.placement(2, "onnx", "auto", VALIDATED, ort_providers=[CUDA_PROVIDER, CPU_PROVIDER])
    assert (placed.device, placed.dtype) == ("cuda:2", "float32")
    assert placed.providers[0] == (CUDA_PROVIDER, {"device_id": 2})
    assert placed.providers[-1] == CPU_PROVIDER  # ops the CUDA provider lacks still run


def test_onnx_without_the_cuda_provider_says_what_to_install():
    placed = device.placement(0, "onnx", "auto", None, ort_providers=[CPU_PROVIDER])
    assert placed.device == "cpu" and "onnxruntime-gpu" in placed.reason


def test_place_probes_only_when_a_gpu_is_assigned():
    def boom() -> bool:
        raise AssertionError("probed CUDA without a GPU assigned")

    assert device.place({"gpu_id": None}, "torchscript", cuda_available=boom).device == "cpu"
    assert device.place({"gpu_id": 0}, "torchscript", validation=VALIDATED,
                        cuda_available=lambda: True).device == "cuda:0"
    # This machine's real probes: ONNX Runtime's CPU build has no CUDA provider.
    assert device.place({"gpu_id": 0}, "onnx").device == "cpu"


def test_backend_follows_the_artifact_name():
    assert backend_of("model.onnx") == "onnx" and backend_of("m.pt") == "torchscript"
    with pytest.raises(ValueError, match="Unknown model artifact"):
        backend_of("model.bin")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    path = tmp_path_factory.mktemp("scripted") / "model.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(model.eval())), str(path))
    return model.eval(), path


def test_reduced_precision_runner_returns_fp32_logits_close_to_fp32(scripted):
    """The autocast path (what a GPU worker runs) exercised on the CPU."""
    _, path = scripted
    x = torch.randn(4, 3, 32, 32)
    full = load_runner(path, placement=Placement())(x)
    reduced = load_runner(path, placement=Placement("cpu", "bfloat16", "test"))(x)
    assert full.dtype == reduced.dtype == torch.float32
    assert not torch.equal(full, reduced)  # really computed in bfloat16
    torch.testing.assert_close(reduced, full, atol=0.05, rtol=0.05)


def test_precision_check_passes_for_a_faithful_model_and_fails_past_its_threshold(scripted):
    model, _ = scripted
    report = precision.check(model, torch.randn(6, 3, 32, 32))
    assert report["dtype"] == "bfloat16" and report["images"] == 6
    assert report["passed"] == (report["top1_agreement"] == 1.0
                                and report["max_abs_prob_diff"] <= precision.MAX_ABS_PROB_DIFF)
    # Two classes 0.01 apart on outputs near 1000: FP32 resolves them, bfloat16 (8-bit
    # mantissa: steps of 4 there) rounds them together and the top-1 changes.
    close = torch.nn.Linear(8, 2)
    with torch.no_grad():
        close.weight.fill_(1.0)
        close.bias.copy_(torch.tensor([0.0, 0.01]))
    report = precision.check(close, 125 + torch.rand(16, 8))
    assert report["top1_agreement"] < 1.0 and report["passed"] is False


@pytest.fixture(scope="module")
def torchscript_model_dir(tmp_path_factory):
    from scripts.packaging import package
    from scripts.packaging.plan import PackagingInputs

    store = tmp_path_factory.mktemp("device_store")
    mar = package.package(PackagingInputs(model_name="lite0_device", fmt="torchscript", export_dir=store))
    return unpack(mar, tmp_path_factory.mktemp("device_model"))


def test_torchscript_archive_records_its_reduced_precision_check(torchscript_model_dir):
    manifest = json.loads((torchscript_model_dir / "provenance.json").read_text())
    reduced = manifest["validation"]["reduced_precision"]
    assert set(reduced["candidates"]) == set(precision.CANDIDATES)
    # EfficientNet-Lite0: float16 well inside the thresholds (bfloat16 moves a probability ~2.5 points)
    assert reduced["dtype"] == "float16" and reduced["passed"] is True, reduced
    assert reduced["images"] >= 6 and reduced["max_abs_prob_diff"] <= precision.MAX_ABS_PROB_DIFF


def test_select_falls_back_to_fp32_when_no_candidate_passes():
    close = torch.nn.Linear(8, 2)
    with torch.no_grad():
        close.weight.fill_(1.0)
        close.bias.copy_(torch.tensor([0.0, 0.01]))
    chosen = precision.select(close, 125 + torch.rand(16, 8), candidates=("bfloat16",))
    assert chosen["dtype"] is None and chosen["passed"] is False
    assert device.placement(0, "torchscript", "auto", {"reduced_precision": chosen},
                         cuda_available=True).dtype == "float32"


def test_handler_given_a_gpu_id_without_cuda_serves_on_the_cpu_and_says_why(torchscript_model_dir, caplog):
    h = torchserve_entry.ImageClassifierHandler()
    with caplog.at_level(logging.INFO, logger="handler.classifier"):
        h.initialize(make_context(torchscript_model_dir, gpu_id=0))
    assert h.placement.device == "cpu" and h.describe_handle()["device"] == "cpu"
    assert any("Running on cpu" in r.message and "assigned GPU 0" in r.message for r in caplog.records)


def test_handler_refuses_a_precision_its_manifest_did_not_validate(torchscript_model_dir):
    import yaml

    config = yaml.safe_load((torchscript_model_dir / "model-config.yaml").read_text())
    config["handler"]["precision"] = "bfloat16"  # the archive validated float16, not this
    with pytest.raises(ConfigError, match="bfloat16.*not validated"):
        torchserve_entry.ImageClassifierHandler().initialize(
            make_context(torchscript_model_dir, gpu_id=0, model_yaml=config))
