"""Every configuration file is read strictly: an unknown or misspelt key is an error that names
the key and the file, never a silent default. Every config file in the repository passes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from handler import settings
from handler.preprocessing import LIMIT_CASTS, REQUIRED_KEYS, TRANSFORM_CASTS, PreprocessConfig
from handler.settings import ConfigError, check_keys, handler_settings, load_model_config, model_config_blocks
from scripts import repo
from scripts.ops import serve
from scripts.ops.server_config import read_properties
from scripts.packaging import package
from scripts.packaging.plan import export_settings


def test_every_config_file_in_the_repository_is_valid():
    for path in [repo.SERVER_CONFIG, *repo.CONFIG_DIR.rglob("config.properties")]:
        assert read_properties(path)["inference_address"], path
    model_configs = list(repo.CONFIG_DIR.rglob("model-config.yaml"))
    assert len(model_configs) >= 2
    for path in model_configs:
        load_model_config(path)
    for path in repo.CONFIG_DIR.rglob("preprocess.json"):
        PreprocessConfig.load(path)


def test_misspelt_preprocess_key_names_key_and_file(tmp_path):
    raw = json.loads((repo.CONFIG_DIR / repo.DEFAULT_MODEL / "preprocess.json").read_text())
    raw["interpolaton"] = raw.pop("interpolation")
    path = tmp_path / "preprocess.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        PreprocessConfig.load(path)
    message = str(info.value)
    assert str(path) in message and "'interpolaton'" in message and "did you mean 'interpolation'" in message


def test_missing_required_preprocess_key():
    with pytest.raises(ConfigError, match="missing key 'mean'"):
        PreprocessConfig.from_dict({"input_size": 224, "resize_size": 256, "std": [1, 1, 1]})


def test_every_preprocess_field_is_read_and_each_default_is_the_dataclass_one():
    """One source per default: a key preprocess.json leaves out takes the field's own default."""
    # `transform` (compare=False) is the loaded "code" module's function, not a key of the file.
    read = {f.name for f in dataclasses.fields(PreprocessConfig) if f.compare}
    assert set(TRANSFORM_CASTS) | set(LIMIT_CASTS) == read
    assert not set(TRANSFORM_CASTS) & set(LIMIT_CASTS)
    minimal = PreprocessConfig.from_dict({"input_size": 224, "resize_size": 256, "mean": [0, 0, 0],
                                          "std": [1, 1, 1]})
    for f in dataclasses.fields(PreprocessConfig):
        if f.name not in REQUIRED_KEYS and f.compare:
            assert getattr(minimal, f.name) == f.default, f.name


@pytest.mark.parametrize("doc, key", [
    ({"minWorker": 2}, "minWorker"),
    ({"handler": {"threds": 1}}, "threds"),
    ({"export": {"fromat": "onnx"}}, "fromat"),
    ({"handler": {"ort_spinning": False}}, "ort_spinning"),  # bench-only levers, removed
    ({"export": {"fuse_pads": False}}, "fuse_pads"),
])
def test_misspelt_model_config_key(doc, key):
    with pytest.raises(ConfigError, match=f"model-config.yaml.*unknown key '{key}'"):
        model_config_blocks(doc, "config/x/model-config.yaml")


def test_model_config_defaults_fill_what_is_not_given():
    blocks = model_config_blocks({"minWorkers": 1, "handler": {"top_k": 3}})
    assert blocks["handler"]["top_k"] == 3 and blocks["handler"]["threads"] == 1
    assert blocks["export"]["format"] == "torchscript"


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "two", None])
def test_a_bad_handler_value_names_file_and_key(value):
    with pytest.raises(ConfigError, match=r"config/x/model-config.yaml \(handler: threads\): expected a "
                                          "positive integer"):
        model_config_blocks({"handler": {"threads": value}}, "config/x/model-config.yaml")


def test_environment_overrides_go_through_the_same_checks():
    block = model_config_blocks({"handler": {"threads": 2}})["handler"]
    assert handler_settings(block, environ={})["threads"] == 2
    assert handler_settings(block, environ={"HANDLER_THREADS": " 3 "})["threads"] == 3
    assert block["threads"] == 2  # an override changes the settings returned, not the block read
    for bad in ("0", "two", "", "1.5"):
        with pytest.raises(ConfigError, match=f"environment variable HANDLER_THREADS .*got {bad!r}"):
            handler_settings(block, environ={"HANDLER_THREADS": bad})


def test_one_read_of_a_model_config_checks_each_key_set_once(monkeypatch):
    """load_model_config checks the document's keys and each block's; what its readers take
    (the handler settings, the export settings) is checked already, not checked again."""
    checked = []

    def counting(found, known, where):
        checked.append(where)
        return check_keys(found, known, where)

    monkeypatch.setattr(settings, "check_keys", counting)
    path = repo.CONFIG_DIR / repo.DEFAULT_MODEL / "model-config.yaml"
    once = [str(path), f"{path} (handler:)", f"{path} (export:)"]
    config = load_model_config(path)
    handler_settings(config.handler, environ={"HANDLER_THREADS": "2"})
    assert config.export["format"] == "onnx"
    assert checked == once
    checked.clear()
    assert export_settings(path)["format"] == "onnx"  # the packaging's read
    assert checked == once


def test_misspelt_server_config_key(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("# comment\ninference_address=http://127.0.0.1:8080\njob_queue_sise=100\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'job_queue_sise'.*'job_queue_size'"):
        read_properties(path)
    assert read_properties(path, strict=False)["job_queue_sise"] == "100"


def test_misspelt_server_config_override(tmp_path):
    with pytest.raises(ConfigError, match="overrides: unknown key 'token_expiry_min'"):
        serve.derive_config(tmp_path, (8080, 8081, 8082), "m=m.mar", overrides={"token_expiry_min": "1"})
    written = serve.derive_config(tmp_path, (8080, 8081, 8082), "m=m.mar",
                                  overrides={"token_expiration_min": "1"})
    assert read_properties(written)["token_expiration_min"] == "1"


def test_package_refuses_a_misspelt_model_config(tmp_path, capsys):
    """The packaging CLI's `main` in this process (tests/unit/packaging runs the command itself);
    an exception escaping it fails the test as a traceback would."""
    doc = yaml.safe_load((repo.CONFIG_DIR / repo.DEFAULT_MODEL / "model-config.yaml").read_text())
    doc["maxBatchDelya"] = doc.pop("maxBatchDelay")
    path = tmp_path / "model-config.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = package.main(["--model-name", "strict_test", "--model-config", str(path),
                         "--export-path", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "unknown key 'maxBatchDelya'" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()
