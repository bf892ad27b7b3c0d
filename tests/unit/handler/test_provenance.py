"""The deployed model is the validated one: the manifest check at load, on an unpacked archive,
and the inspector.

Each kind of tampering is named and always refuses the load, as does a missing or broken
manifest; bytecode beside a module is refused, and the worker's first check (the entry module
run as TorchServe imports it) refuses planted bytecode before the package is imported, and a
manifest the server did not check; handler code imported from elsewhere and library versions
other than the exported ones are named; the verifier is stdlib only. The inspector reports an
intact archive and names a tampered file. The operator's archive pins themselves:
tests/unit/ops/test_pins.py.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from handler import integrity, layout, provenance, settings
from handler.provenance import IntegrityError, find_mismatches, verify_model_dir
from scripts.ops import inspect_mar
from tests.support.archives import rewrite_mar, tampered_labels

MANIFEST = layout.MANIFEST


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
    (lambda d: (d / "MAR-INF" / "extra.json").write_text("{}"), "file MAR-INF/extra.json is in the"),
    (lambda d: (d / "handler" / "runner.pyc").write_bytes(b"\0" * 16), "bytecode handler/runner.pyc"),
])
def test_each_kind_of_tampering_is_named(model_dir, change, expected):
    change(model_dir)
    problems = find_mismatches(model_dir, manifest_of(model_dir))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_bytecode_beside_a_module_is_refused(model_dir):
    # Python would load it instead of the verified runner.py: the folder and the file are named.
    write_bytecode(model_dir / "handler")
    assert find_mismatches(model_dir, manifest_of(model_dir)) == [
        f"bytecode handler/__pycache__{tail} is in the model directory: Python would run it instead "
        "of the verified source" for tail in ("", "/runner.cpython-311.pyc")]


def run_entry(model_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """Import the archive's entry module as TorchServe's worker does: from the model directory,
    with it on PYTHONPATH (and its working directory)."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    return subprocess.run([sys.executable, "-c", "import torchserve_entry"], cwd=model_dir,
                          env={**base, "PYTHONPATH": str(model_dir), **env},
                          capture_output=True, text=True, timeout=120)


def test_worker_refuses_planted_bytecode_before_importing_the_package(model_dir):
    write_bytecode(model_dir / "handler")
    done = run_entry(model_dir, PYTHONDONTWRITEBYTECODE="1")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("archive_integrity.IntegrityError: Integrity check failed: bytecode "
                           "handler/__pycache__ is in the model directory"), done.stderr
    assert "handler/__pycache__/runner.cpython-311.pyc" in last
    assert "handler/classifier.py" not in done.stderr  # refused before the package was imported


def test_worker_refuses_a_manifest_the_server_did_not_check(model_dir):
    done = run_entry(model_dir, PYTHONDONTWRITEBYTECODE="1",
                     **{integrity.MANIFESTS_ENV: f"{'0' * 64}:{'0' * 64}"})
    assert done.returncode != 0 and "is not a manifest the server checked at start" in done.stderr


def test_worker_writing_bytecode_is_refused_where_pins_are_required(model_dir):
    done = run_entry(model_dir, **{integrity.REQUIRED_ENV: "1"})
    assert done.returncode != 0
    assert "start TorchServe with PYTHONDONTWRITEBYTECODE=1" in done.stderr.strip().splitlines()[-1]


def test_entry_bytecode_python_wrote_is_let_through_on_a_restart(model_dir):
    # Without PYTHONDONTWRITEBYTECODE (a development server) Python writes the entry's bytecode
    # before the entry runs; the next worker finds it. Only that exact file passes: not a planted one.
    entry = str(model_dir / layout.ENTRY_MODULE)
    import py_compile

    cached = Path(py_compile.compile(entry, doraise=True))
    assert integrity.verify_entry(entry, dont_write_bytecode=False, environ={})["files"]
    with pytest.raises(IntegrityError, match="bytecode __pycache__"):
        integrity.verify_entry(entry, dont_write_bytecode=True, environ={})
    cached.write_bytes(cached.read_bytes()[:4] + b"\1\0\0\0" + cached.read_bytes()[8:])  # unchecked hash
    with pytest.raises(IntegrityError, match="bytecode __pycache__"):
        integrity.verify_entry(entry, dont_write_bytecode=False, environ={})


def test_verifier_is_stdlib_only_and_names_the_layout():
    # torchserve_entry.py runs it before importing `handler`: it must not import it either.
    tree = ast.parse(Path(integrity.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    assert (integrity.MANIFEST, integrity.ARCHIVER_MANIFEST) == (layout.MANIFEST, layout.ARCHIVER_MANIFEST)


def test_an_archive_cannot_set_the_mismatch_policy():
    with pytest.raises(settings.ConfigError, match="unknown key 'on_integrity_mismatch'"):
        settings.model_config_blocks({"handler": {"on_integrity_mismatch": "warn"}})
    for config in ("efficientnet_lite0", "kserve"):
        doc = yaml.safe_load(Path(f"config/{config}/model-config.yaml").read_text())
        settings.model_config_blocks(doc)  # the shipped configs do not set it


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


def test_a_mismatch_always_refuses(model_dir, caplog):
    (model_dir / "index_to_name.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="handler.provenance"), \
            pytest.raises(IntegrityError, match="index_to_name.json"):
        verify_model_dir(model_dir, MANIFEST)
    assert "(the model is not loaded)" in caplog.text
    with pytest.raises(IntegrityError, match="the manifest is provenance.json, not 'other.json'"):
        verify_model_dir(model_dir, "other.json")


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
