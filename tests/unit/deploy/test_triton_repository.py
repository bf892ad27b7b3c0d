"""The archive as a Triton model repository (scripts/deploy/triton_repo.py), written without a
Triton server: config.pbtxt carries the archive's batching (or the overrides) and the checked
manifest, an archive failing its pin writes nothing, and the CLI names an existing folder in one
line."""

from __future__ import annotations

import pytest

from scripts.deploy import triton_repo
from scripts.ops import pins
from tests.support.servers import MODEL


def test_the_config_carries_the_archives_batching_and_the_checked_manifest(tmp_path, default_mar):
    model_dir = triton_repo.write_repository(default_mar, tmp_path, environ={})
    text = (model_dir / "config.pbtxt").read_text()
    assert model_dir.name == MODEL and (model_dir / "1" / "model.py").is_file()
    # config/efficientnet_lite0/model-config.yaml: minWorkers 2, batchSize 4, maxBatchDelay 1 ms
    for line in ('backend: "python"', "max_batch_size: 4", "count: 2, kind: KIND_CPU",
                 "max_queue_delay_microseconds: 1000", 'name: "image", data_type: TYPE_STRING',
                 'name: "indices", data_type: TYPE_INT64, dims: [ 5 ]'):
        assert line in text, (line, text)
    pair = pins.check_pins(default_mar.parent, f"{MODEL}={default_mar.name}", {})["ARCHIVE_MANIFESTS"]
    assert f'string_value: "{pair}"' in text


def test_an_archive_failing_its_pin_writes_nothing(tmp_path, default_mar):
    with pytest.raises(pins.PinError, match="not the pinned"):
        triton_repo.write_repository(default_mar, tmp_path, environ={pins.PIN_ENV: "0" * 64})
    assert list(tmp_path.iterdir()) == []


def test_the_cli_names_an_existing_folder_in_one_line(tmp_path, default_mar, capsys):
    (tmp_path / MODEL).mkdir()
    assert triton_repo.main([str(default_mar), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exists: remove it" in err


def test_overrides_replace_the_archives_batching():
    got = triton_repo.batching_of({"batchSize": 4, "maxBatchDelay": 1, "minWorkers": 2}, max_batch=8,
                                  delay_us=None)
    assert got == triton_repo.Batching(instances=2, max_batch=8, delay_us=1000)
    assert triton_repo.batching_of({}) == triton_repo.Batching(1, 1, 100_000)  # TorchServe's defaults
