"""Bad inputs to packaging your own model: each is one clear line naming the file and the
problem, exit status 2, no traceback, and nothing archived. The cases run the CLI's `main` in
this process; one runs the command itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from scripts import repo
from scripts.packaging import package

NAME = "own_model_errors_test"
NET = '''
import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=4)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))
'''
PRE = '''
import time

import numpy as np


def preprocess(image):
    arr = np.asarray(image.resize((32, 32)), dtype=np.float32).transpose(2, 0, 1) / 255.0
    {body}
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own_errors")
    (tmp / "net.py").write_text(NET)
    (tmp / "broken_net.py").write_text("import torch\nfrom torch import nn\nraise RuntimeError('oops')\n")
    (tmp / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    namespace: dict = {}
    exec(NET, namespace)
    torch.save(namespace["SmallNet"](width=4).state_dict(), tmp / "net4.pth")
    torch.save(namespace["SmallNet"](width=6).state_dict(), tmp / "net6.pth")
    bodies = {"ok": "return arr", "raises": "raise KeyError('no such channel')",
              "shape": "return arr[0]", "dtype": "return arr.astype(np.float64)",
              "varying": "return arr[:, : image.width % 7 + 20]",
              "slow": "time.sleep(0.2)\n    return arr"}
    for name, body in bodies.items():
        (tmp / f"pre_{name}.py").write_text(PRE.format(body=body))
    yield tmp
    shutil.rmtree(repo.BUILD_DIR / NAME, ignore_errors=True)


def package_cli(files, capsys, *args: str) -> str:
    """Run the CLI's main in this process (torch is imported once for all cases); returns its one
    error line after checking the exit status, the traceback and the store."""
    store = files / "store"
    code = package.main(["--model-name", NAME, "--labels", str(files / "labels.json"),
                         "--export-path", str(store), *args])
    err = capsys.readouterr().err
    assert code == 2, err[-1500:]
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert not store.exists() or not list(store.glob("*.mar"))
    return lines[-1]


def own(files, net: str = "net.py", pre: str | None = "pre_ok.py", *args: str) -> list[str]:
    out = ["--model-file", str(files / net), "--checkpoint", str(files / "net4.pth"), *args]
    return out + (["--preprocess-code", str(files / pre)] if pre else [])


@pytest.mark.parametrize("args, fragments", [
    (lambda f: own(f, "broken_net.py"), ["broken_net.py failed to import", "RuntimeError: oops"]),
    (lambda f: own(f, "missing.py"), ["missing.py does not exist"]),
    (lambda f: own(f, "net.py", "pre_ok.py", "--model-class", "BigNet"),
     ["has no nn.Module class 'BigNet'", "SmallNet"]),
    (lambda f: own(f, "net.py", "pre_ok.py", "--model-kwargs", '{"depth": 3}'),
     ["SmallNet(depth=3) failed", "unexpected keyword argument 'depth'"]),
    (lambda f: own(f, "net.py", "pre_ok.py", "--model-kwargs", "[1, 2]"), ["must be a JSON object"]),
    (lambda f: own(f, "net.py", "pre_ok.py", "--model-kwargs", '{"width": 6}'),
     ["does not match the architecture", "shape mismatches"]),
    (lambda f: own(f, "net.py", "pre_raises.py"), ["pre_raises.py", "raised KeyError", "photo"]),
    (lambda f: own(f, "net.py", "pre_shape.py"), ["pre_shape.py", "not C x H x W"]),
    (lambda f: own(f, "net.py", "pre_dtype.py"), ["dtype float64, not float32"]),
    (lambda f: own(f, "net.py", "pre_varying.py"), ["the validated shape is"]),
    (lambda f: own(f, "net.py", "pre_slow.py"), ["ms per photo", "the budget is 50 ms"]),
    (lambda f: own(f, "net.py", "pre_missing.py"), ["--preprocess-code", "does not exist"]),
    (lambda f: ["--arch", "timm:resnet181x", "--checkpoint", "none"],
     ["timm has no architecture 'resnet181x'", "did you mean"]),
    (lambda f: ["--arch", "hf:" + str(f), "--checkpoint", "none"], ["not a save_pretrained folder"]),
    (lambda f: ["--arch", "timm:resnet18", "--checkpoint", "none", "--format", "eager"],
     ["--format eager needs an architecture file", "--format onnx or torch-export"]),
], ids=["import-fails", "no-file", "no-class", "bad-kwargs", "kwargs-not-object", "checkpoint-mismatch",
        "pre-raises", "pre-shape", "pre-dtype", "pre-varying-shape", "pre-slow", "pre-missing",
        "timm-unknown", "hf-not-a-folder", "eager-without-file"])
def test_bad_packaging_is_one_clear_line(files, capsys, args, fragments):
    message = package_cli(files, capsys, *args(files))
    for fragment in fragments:
        assert fragment in message, message


def test_the_command_line_exits_2_with_the_same_line(files):
    proc = subprocess.run([sys.executable, "-m", "scripts.packaging.package", "--model-name", NAME,
                           "--labels", str(files / "labels.json"), "--export-path", str(files / "store"),
                           *own(files, "broken_net.py")],
                          capture_output=True, text=True, timeout=300, cwd=repo.ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "broken_net.py failed to import: RuntimeError: oops" in proc.stderr
