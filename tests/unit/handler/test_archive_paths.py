"""Paths read from an archive stay inside its model directory: `handler: preprocess_config` and
`handler: labels` of model-config.yaml, and the `code` key of preprocess.json. A `..` out of it,
an absolute path or a symlink pointing out fails the load with one line naming the key and value,
before the file is read (or, for code, imported)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from handler import layout, settings, torchserve_entry
from handler.preprocessing import PreprocessConfig
from handler.settings import ConfigError
from tests.support.context import make_context

ESCAPES = ["dotdot", "absolute", "symlink"]


def escaping(kind: str, folder: Path, outside: Path, name: str) -> str:
    """A value for a key of `folder`'s config that reaches the file `outside` by `kind`."""
    if kind == "dotdot":
        return str(Path("..") / outside.parent.name / outside.name)
    if kind == "absolute":
        return str(outside)
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(outside)
    return name


@pytest.fixture
def outside(tmp_path) -> Path:
    (tmp_path / "outside").mkdir()
    return tmp_path / "outside"


@pytest.mark.parametrize("kind", ESCAPES)
def test_inside_refuses_every_way_out(tmp_path, outside, kind):
    (tmp_path / "model").mkdir()
    (outside / "secret.json").write_text("[]")
    value = escaping(kind, tmp_path / "model", outside / "secret.json", "labels.json")
    with pytest.raises(ConfigError, match=r"^where: .* leads outside the model directory"):
        settings.inside(tmp_path / "model", value, "where")


def test_inside_keeps_paths_within_the_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text("[]")
    (tmp_path / "link.json").symlink_to(tmp_path / "sub" / "a.json")
    assert settings.inside(tmp_path, "sub/../sub/a.json", "where") == (tmp_path / "sub" / "a.json").resolve()
    assert settings.inside(tmp_path, "link.json", "where") == (tmp_path / "sub" / "a.json").resolve()


@pytest.mark.parametrize("kind", ESCAPES)
def test_preprocess_code_outside_the_folder_is_refused_before_it_is_imported(tmp_path, outside, kind):
    marker = tmp_path / "imported"
    (outside / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                     "def preprocess(image):\n    return image\n")
    (tmp_path / "model").mkdir()
    value = escaping(kind, tmp_path / "model", outside / "evil.py", "pre.py")
    (tmp_path / "model" / "preprocess.json").write_text(json.dumps({"code": value}))
    with pytest.raises(ConfigError, match=rf"\(code\): '{value}' leads outside the model directory"):
        PreprocessConfig.load(tmp_path / "model" / "preprocess.json")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ESCAPES)
@pytest.mark.parametrize("key, name", [("labels", layout.LABELS),
                                       ("preprocess_config", layout.PREPROCESS_CONFIG)])
def test_a_handler_path_outside_the_model_directory_fails_initialize(default_model_dir, tmp_path,
                                                                     kind, key, name):
    model_dir = shutil.copytree(default_model_dir, tmp_path / "model")
    (tmp_path / "outside").mkdir()
    # The same bytes outside: the manifest's check passes, only the path is wrong.
    outside = Path(shutil.copy2(model_dir / name, tmp_path / "outside" / name))
    value = escaping(kind, model_dir, outside, name)
    ctx = make_context(model_dir)
    ctx.model_yaml_config = {**ctx.model_yaml_config,
                             "handler": {**ctx.model_yaml_config.get("handler", {}), key: value}}
    with pytest.raises(ConfigError, match=rf"\(handler: {key}\): '{value}' leads outside the model"):
        torchserve_entry.ImageClassifierHandler().initialize(ctx)
