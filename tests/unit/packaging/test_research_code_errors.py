"""Research code that cannot travel fails at packaging, before anything is archived: exit 2 and
one line naming the module and the file (the cases run the CLI's `main` in this process; one,
the import the server cannot satisfy, runs the command itself). And preprocessing returning
tensors, v1 and v2 Compose, passes the checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from handler.model_code import PreprocessCodeError, Transform, to_tensor
from scripts import repo
from scripts.packaging import package
from tests.support import research

NAME = "research_errors_test"
MISSING = "not_installed_anywhere_lib"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("research_errors")
    research.write_repo(tmp / "repo")
    research.write_repo(tmp / "missing", {"research_lib/blocks.py": f"import {MISSING}\n"
                                          + research.FILES["research_lib/blocks.py"]})
    research.write_repo(tmp / "shadowing", {"code/__init__.py": ""})
    research.write_repo(tmp / "reserved", {"model.py": "X = 1\n"})
    (tmp / "pre.py").write_text(research.PREPROCESS)
    (tmp / "labels.json").write_text(json.dumps([f"c{i}" for i in range(5)]))
    yield tmp
    shutil.rmtree(repo.BUILD_DIR / NAME, ignore_errors=True)


def args(files, folder: str, *extra: str) -> list[str]:
    return ["--model-name", NAME, "--labels", str(files / "labels.json"), "--checkpoint", "none",
            "--export-path", str(files / "store"), "--code-dir", str(files / folder),
            "--model-class", research.MODEL_CLASS, "--preprocess-code", str(files / "pre.py"), *extra]


def error_line(files, capsys, argv: list[str]) -> str:
    code = package.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-1500:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("error: "), err
    assert not list((files / "store").glob("*.mar"))
    return lines[-1]


@pytest.mark.parametrize("folder, fragments", [
    ("shadowing", ["code/__init__.py", "standard library", "rename"]),
    ("reserved", ["model.py", "the archive itself uses"]),
    ("nowhere", ["--code-dir", "is not a folder"]),
], ids=["stdlib-name", "archive-name", "no-folder"])
def test_a_folder_that_cannot_travel_is_one_line(files, capsys, folder, fragments):
    message = error_line(files, capsys, args(files, folder))
    for fragment in fragments:
        assert fragment in message, message


def test_module_class_without_code_dir_is_one_line(files, capsys):
    argv = [a for a in args(files, "repo") if a not in ("--code-dir", str(files / "repo"))]
    assert "add --code-dir DIR" in error_line(files, capsys, argv)


def test_an_import_the_server_cannot_satisfy_exits_2_naming_module_and_file(files):
    proc = subprocess.run([sys.executable, "-m", "scripts.packaging.package", *args(files, "missing")],
                          capture_output=True, text=True, timeout=300, cwd=repo.ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("error: ") and MISSING in lines[-1], proc.stderr
    assert str(files / "missing" / "research_lib" / "blocks.py") in lines[-1], lines[-1]


def test_a_module_found_in_the_working_directory_is_refused(files, capsys, monkeypatch):
    """A helper beside where packaging runs imports there (`python -m` puts the working
    directory first on the path, as this test does) but not in the worker: refused, named."""
    cwd = files / "cwd"
    cwd.mkdir(exist_ok=True)
    (cwd / "stray_helper.py").write_text("SCALE = 1.0\n")
    (cwd / "net.py").write_text("import stray_helper\n" + research.FILES["research_lib/heads.py"]
                                .replace("class Head", "class Net"))
    monkeypatch.syspath_prepend(str(cwd))
    argv = args(files, "repo")
    argv[argv.index("--model-class"):argv.index("--model-class") + 2] = [
        "--model-file", str(cwd / "net.py"), "--model-kwargs", '{"width": 3, "classes": 5}']
    message = error_line(files, capsys, argv)
    assert "stray_helper" in message and "neither in --code-dir nor installed" in message, message


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8))


def test_a_transforms_v1_compose_returning_a_tensor_is_the_input():
    from torchvision import transforms

    compose = transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32), transforms.ToTensor(),
                                  transforms.Normalize((0.5,) * 3, (0.2,) * 3)])
    out = to_tensor(Transform(compose), _image())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, compose(_image()))


def test_a_transforms_v2_compose_returning_a_tv_tensor_is_the_input():
    from torchvision.transforms import v2

    compose = v2.Compose([v2.ToImage(), v2.Resize(40), v2.CenterCrop(32),
                          v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize((0.5,) * 3, (0.2,) * 3)])
    out = to_tensor(Transform(compose), _image())
    assert type(out) is torch.Tensor and out.shape == (3, 32, 32)
    assert torch.equal(out, compose(_image()).as_subclass(torch.Tensor))


def test_a_tensor_of_another_dtype_is_still_refused():
    with pytest.raises(PreprocessCodeError, match="dtype float64, not float32"):
        to_tensor(Transform(lambda img: torch.zeros(3, 8, 8, dtype=torch.float64)), _image())
