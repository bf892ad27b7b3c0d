"""The deployed model is the validated one: the manifest check at load, the inspector, tampering.

Unit tests run the check on an unpacked archive; the end-to-end test serves an untouched .mar,
one with a changed labels file (refused), and the same change with `on_integrity_mismatch: warn`.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import yaml

from handler import layout, provenance
from handler.provenance import IntegrityError, find_mismatches, verify_model_dir
from scripts.ops import inspect_mar, serve
from tests.support.servers import serving

MANIFEST = layout.MANIFEST
TAMPERED_INDEX = "282"  # tiger cat: in the cat photo's top 5
REFUSAL_WAIT_S = 120.0


def rewrite_mar(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy an archive, swapping (or adding) the given entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for entry in zin.infolist():
            if entry.filename not in replace:
                zout.writestr(entry, zin.read(entry))
        for name, data in replace.items():
            zout.writestr(name, data)
    return dst


def tampered_labels(mar: Path) -> bytes:
    with zipfile.ZipFile(mar) as zf:
        labels = json.loads(zf.read("index_to_name.json"))
    labels[TAMPERED_INDEX] = "tampered " + labels[TAMPERED_INDEX]
    return json.dumps(labels, indent=1, sort_keys=True).encode()


@pytest.fixture(scope="module")
def fresh_mar(tmp_path_factory) -> Path:
    """An archive built by the code under test (not a possibly older model_store/ build)."""
    from scripts.packaging import package

    return package.package(model_name="lite0_prov", export_dir=tmp_path_factory.mktemp("prov_store"))


@pytest.fixture
def model_dir(fresh_mar, tmp_path) -> Path:
    """The archive unpacked, as TorchServe unpacks it for a worker."""
    with zipfile.ZipFile(fresh_mar) as zf:
        zf.extractall(tmp_path / "model")
    return tmp_path / "model"


def flip_first_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def write_bytecode(package: Path) -> None:
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "runner.cpython-311.pyc").write_bytes(b"\0" * 16)


def manifest_of(model_dir: Path) -> dict:
    return json.loads((model_dir / MANIFEST).read_text())


def serialized_model(model_dir: Path) -> str:
    """model.onnx or model.pt, whichever format the archive was built in."""
    return layout.SERIALIZED_FILE[manifest_of(model_dir)["model"]["format"]]


def test_untouched_archive_has_no_mismatch(model_dir):
    manifest = manifest_of(model_dir)
    assert {serialized_model(model_dir), layout.ENTRY_MODULE, "handler/classifier.py",
            "handler/preprocessing.py", "preprocess.json", "index_to_name.json",
            "model-config.yaml"} <= set(manifest["files"])
    assert find_mismatches(model_dir, manifest) == []
    assert verify_model_dir(model_dir, MANIFEST) == manifest


@pytest.mark.parametrize("change, expected", [
    (lambda d: (d / "index_to_name.json").write_text('{"0": "x"}'), "file index_to_name.json sha256"),
    (lambda d: (d / "preprocess.json").unlink(), "file preprocess.json is listed in the manifest but"),
    (lambda d: flip_first_byte(d / serialized_model(d)), "file model."),
    (lambda d: (d / "torch.py").write_text("raise SystemExit"), "file torch.py is in the model directory"),
    (lambda d: (d / "handler" / "extra.py").write_text(""), "file handler/extra.py is in the model"),
    (lambda d: write_bytecode(d / "handler"), None),  # written by Python at import: not listed
])
def test_each_kind_of_tampering_is_named(model_dir, change, expected):
    change(model_dir)
    problems = find_mismatches(model_dir, manifest_of(model_dir))
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_handler_code_imported_from_elsewhere_is_named(model_dir):
    # The worker must run the archive's modules: an entry whose hash the imported module does not
    # match (as if an older copy of the package shadowed the archive's) is a mismatch.
    manifest = manifest_of(model_dir)
    manifest["files"]["handler/runner.py"]["sha256"] = "0" * 64
    problems = find_mismatches(model_dir, manifest)
    assert any(p.startswith("module handler/runner.py imported from") for p in problems), problems


def as_torchscript(manifest: dict) -> dict:
    manifest["model"]["format"] = "torchscript"
    return manifest


def test_other_torch_minor_version_is_named_for_torchscript(model_dir, monkeypatch):
    manifest = as_torchscript(manifest_of(model_dir))
    built = manifest["versions"]
    monkeypatch.setattr(provenance, "running_versions",
                        lambda: {"torch": "2.9.0", "torchvision": built["torchvision"]})
    assert find_mismatches(model_dir, manifest) == [
        f"torch 2.9.0 running, torchscript archive exported with {built['torch']}: a torchscript "
        "archive is served only by the torch major.minor it was exported with"]
    monkeypatch.setattr(provenance, "running_versions",  # a patch release is the same build
                        lambda: {"torch": built["torch"].split("+")[0] + "+cpu",
                                 "torchvision": built["torchvision"]})
    assert find_mismatches(model_dir, manifest) == []


def test_runtime_image_versions_serve_onnx_and_refuse_torchscript(model_dir, monkeypatch):
    # The runtime image: a CPU-only torch of another minor, no torchvision at all.
    monkeypatch.setattr(provenance, "running_versions", lambda: {"torch": "2.13.0+cpu"})
    assert find_mismatches(model_dir, manifest_of(model_dir)) == []  # the default archive is ONNX
    problems = find_mismatches(model_dir, as_torchscript(manifest_of(model_dir)))
    assert len(problems) == 1 and problems[0].startswith("torch 2.13.0+cpu running, torchscript archive"), \
        problems
    monkeypatch.setattr(provenance, "running_versions", dict)
    assert find_mismatches(model_dir, as_torchscript(manifest_of(model_dir)))[0].startswith(
        "torch not installed")


def test_running_versions_leave_out_what_is_not_installed(monkeypatch):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda lib: real("torch") if lib == "torch"
                        else (_ for _ in ()).throw(metadata.PackageNotFoundError(lib)))
    assert set(provenance.running_versions()) == {"torch"}


def test_refusal_message_says_torch_version(model_dir, monkeypatch):
    monkeypatch.setattr(provenance, "running_versions", lambda: {"torch": "2.13.0+cpu"})
    path = model_dir / MANIFEST
    path.write_text(json.dumps(as_torchscript(json.loads(path.read_text()))))
    with pytest.raises(IntegrityError, match="torch 2.13.0.cpu running, torchscript archive exported"):
        verify_model_dir(model_dir, MANIFEST)


def test_refuse_raises_and_warn_loads(model_dir, caplog):
    (model_dir / "index_to_name.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="handler.provenance"), \
            pytest.raises(IntegrityError, match="index_to_name.json"):
        verify_model_dir(model_dir, MANIFEST)
    assert "on_integrity_mismatch=refuse" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="handler.provenance"):
        assert verify_model_dir(model_dir, MANIFEST, "warn")["model"]["name"] == "lite0_prov"
    assert "index_to_name.json" in caplog.text and "loading anyway" in caplog.text
    with pytest.raises(ValueError, match="on_integrity_mismatch"):
        verify_model_dir(model_dir, MANIFEST, "ignore")


@pytest.mark.parametrize("content", [None, b"{not json", b"[]"])
def test_missing_or_broken_manifest_is_refused(model_dir, content):
    path = model_dir / MANIFEST
    path.unlink() if content is None else path.write_bytes(content)
    with pytest.raises(IntegrityError, match=MANIFEST):
        verify_model_dir(model_dir, MANIFEST)


def test_inspector_reports_an_intact_archive(fresh_mar, capsys):
    assert inspect_mar.main([str(fresh_mar)]) == 0
    text = capsys.readouterr().out
    assert "integrity      OK: all" in text and "labels         1000 (index_to_name.json)" in text
    assert inspect_mar.main([str(fresh_mar), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["name"] == "lite0_prov" and info["labels"]["count"] == 1000
    assert info["validation"]["passed"] and info["validation"]["max_abs_logit_diff"] <= 1e-4
    assert {f["status"] for f in info["files"]} == {"ok"}
    assert info["integrity"] == {"ok": True, "checked": len(info["files"]), "problems": []}


def test_inspector_names_a_tampered_file(fresh_mar, tmp_path, capsys):
    bad = rewrite_mar(fresh_mar, tmp_path / "bad.mar", {"index_to_name.json": tampered_labels(fresh_mar),
                                                         "extra.py": b"print('hi')\n"})
    assert inspect_mar.main([str(bad), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["integrity"]["problems"]
    assert sorted(problems) == ["extra.py: unlisted", "index_to_name.json: MISMATCH"]


def refusals(log: Path, model: str) -> list[str]:
    if not log.is_file():
        return []
    return [line for line in log.read_text(errors="replace").splitlines()
            if f"-{model}_" in line and "Integrity check failed" in line]


@pytest.mark.e2e
def test_tampered_archive_is_refused_untouched_loads(fresh_mar, photos, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "good.mar").write_bytes(fresh_mar.read_bytes())
    labels = tampered_labels(fresh_mar)
    rewrite_mar(fresh_mar, store / "tampered.mar", {"index_to_name.json": labels})
    with zipfile.ZipFile(fresh_mar) as zf:
        config = yaml.safe_load(zf.read("model-config.yaml"))
    config["handler"]["on_integrity_mismatch"] = "warn"
    rewrite_mar(fresh_mar, store / "warn.mar", {"index_to_name.json": labels,
                                                 "model-config.yaml": yaml.safe_dump(config).encode()})
    workdir = tmp_path / "ts"
    with serving(workdir, store, "good=good.mar,tampered=tampered.mar,warn=warn.mar", min_ready=2,
                 model="good") as server:
        log = workdir / "logs" / "model_log.log"
        deadline = time.monotonic() + REFUSAL_WAIT_S
        while not refusals(log, "tampered") and time.monotonic() < deadline:
            time.sleep(0.5)
        lines = refusals(log, "tampered")
        assert lines, f"no refusal logged for the tampered archive within {REFUSAL_WAIT_S:.0f} s"
        # Exactly the changed file is named, and nothing else.
        reason = lines[0].split("Integrity check failed: ", 1)[1]
        assert reason.startswith("file index_to_name.json sha256") and ";" not in reason, reason
        for _ in range(6):  # the crash-looping worker never turns READY
            assert server.client.ready_workers("tampered") == 0
            time.sleep(0.5)
        body = photos["cat.jpg"].read_bytes()
        # With no worker, TorchServe queues the request: an error or no answer, never a prediction.
        try:
            status = replace(server.client, timeout=5).predict("tampered", body).status_code
        except requests.Timeout:
            status = None
        assert status != 200
        good = server.client.predict("good", body)
        assert good.status_code == 200, good.text
        assert all(not p["label"].startswith("tampered") for p in good.json()["predictions"])
        # warn: the same tampering loads, says so in the log, and serves the changed labels.
        serve.wait_ready(server, "warn", min_ready=1, timeout=120, progress=False)
        assert refusals(log, "warn") and not refusals(log, "good")
        warned = server.client.predict("warn", body)
        assert warned.status_code == 200, warned.text
        assert any(p["label"].startswith("tampered") for p in warned.json()["predictions"])
    assert "Integrity check passed" in log.read_text()
