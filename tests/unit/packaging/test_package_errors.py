"""Bad inputs to scripts.packaging.package and scripts.packaging.export are clean CLI errors: exit code 2, one
message naming the mismatch, no traceback, no archive written. The cases call the CLI's `main` in
this process (a new interpreter would import torch again for each); one runs the command itself."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from scripts import repo

NAME = "byo_errors_test"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("errors")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp / "resnet18_10.pth")
    for n in (5, 7, 10):
        (tmp / f"labels{n}.json").write_text(json.dumps([f"c{i}" for i in range(n)]))
    (tmp / "bad_preprocess.json").write_text(json.dumps({"input_size": 224, "resize_size": 200,
                                                         "mean": [0.5] * 3, "std": [0.5] * 3}))
    yield tmp
    shutil.rmtree(repo.BUILD_DIR / NAME, ignore_errors=True)


def run_cli(capsys: pytest.CaptureFixture, module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m scripts.packaging.MODULE ARGS` as its `main` in this process: its exit status
    (argparse's exit too) and what it printed. An exception that escapes `main` fails the test,
    as the traceback would in the command."""
    main = importlib.import_module(f"scripts.packaging.{module}").main
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess([module, *args], code, out.out, out.err)


def package_args(files, *args: str) -> list[str]:
    return ["--model-name", NAME, "--export-path", str(files / "store"), *args]


def package_cli(files, capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    return run_cli(capsys, "package", *package_args(files, *args))


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_checkpoint_of_another_architecture(files, capsys):
    proc = package_cli(files, capsys, "--arch", "resnet34", "--checkpoint", str(files / "resnet18_10.pth"),
                       "--labels", str(files / "labels10.json"))
    assert_clean_error(proc, "does not match the architecture", "missing keys",
                       "layer1.2.conv1.weight")
    assert not (files / "store" / f"{NAME}.mar").exists()


def test_checkpoint_with_other_head_shape(files, capsys):
    proc = package_cli(files, capsys, "--arch", "resnet18", "--checkpoint", str(files / "resnet18_10.pth"),
                       "--num-classes", "5", "--labels", str(files / "labels5.json"))
    assert_clean_error(proc, "shape mismatches", "fc.weight: checkpoint (10, 512) vs model (5, 512)")


def test_labels_count_differs_from_model_outputs(files, capsys):
    proc = package_cli(files, capsys, "--arch", "resnet18", "--checkpoint", str(files / "resnet18_10.pth"),
                       "--labels", str(files / "labels7.json"))
    assert_clean_error(proc, "labels7.json has 7 entries", "model has 10 outputs")
    assert not (files / "store").exists()


def test_unknown_architecture(files):
    """The command itself: its own interpreter, exit status and stderr."""
    proc = subprocess.run([sys.executable, "-m", "scripts.packaging.package",
                           *package_args(files, "--arch", "resnet19", "--checkpoint", "none",
                                         "--labels", str(files / "labels10.json"))],
                          capture_output=True, text=True, timeout=300, cwd=repo.ROOT)
    assert_clean_error(proc, "Unknown architecture 'resnet19'")


def test_invalid_preprocessing_config(files, capsys):
    proc = package_cli(files, capsys, "--arch", "resnet18", "--checkpoint", str(files / "resnet18_10.pth"),
                       "--labels", str(files / "labels10.json"),
                       "--preprocess", str(files / "bad_preprocess.json"))
    assert_clean_error(proc, "bad_preprocess.json", "resize_size must be >= input_size")


def test_export_cli_names_the_mismatch(files, capsys):
    proc = run_cli(capsys, "export", "--arch", "resnet18", "--checkpoint", str(files / "resnet18_10.pth"),
                   "--num-classes", "1000", "--out", str(files / "out" / "model.pt"))
    assert_clean_error(proc, "fc.weight: checkpoint (10, 512) vs model (1000, 512)")
    assert not (files / "out" / "model.pt").exists()


def test_export_path_that_is_the_archivers_scratch_folder(files, capsys):
    # torch-model-archiver stages into $TMPDIR/NAME: exporting there would zip the archive into itself.
    import tempfile

    proc = run_cli(capsys, "package", "--model-name", NAME, "--arch", "resnet18", "--checkpoint", "none",
                   "--labels", str(files / "labels10.json"),
                   "--export-path", str(Path(tempfile.gettempdir()) / NAME))
    assert_clean_error(proc, "scratch folder")
    assert not (Path(tempfile.gettempdir()) / NAME).exists()
