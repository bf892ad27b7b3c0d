"""A packaging run reads each input once and writes each file once: the checkpoint is loaded
once, the model config read once, the classifier head probed once, and no staged file is
written twice (the eager format's architecture.json and model.py included)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from handler import layout
from scripts import repo
from scripts.packaging import package
from scripts.packaging.export import PROBE_CLASSES, default_checkpoint
from scripts.packaging.plan import PackagingInputs
from scripts.packaging.sources.efficientnet_lite0 import EfficientNetLite0Source

NAME = "lite0_reads_once"


@pytest.fixture(scope="module")
def counted(tmp_path_factory) -> dict:
    """One packaging run of the default model (eager: the quickest format to export, and the one
    that needs architecture.json and model.py beside the artifact), with every checkpoint load,
    file read, file write and model build counted."""
    stage = (repo.BUILD_DIR / NAME).resolve()
    loads, reads, writes, builds = Counter(), Counter(), Counter(), []
    mp = pytest.MonkeyPatch()

    def counting(original, counter, key):
        def wrapper(*args, **kwargs):
            counter[key(*args, **kwargs)] += 1
            return original(*args, **kwargs)
        return wrapper

    def written(path) -> Path | str:
        return Path(path).resolve() if isinstance(path, str | Path) else type(path).__name__

    mp.setattr(torch, "load", counting(torch.load, loads, lambda f, *a, **k: written(f)))
    mp.setattr(Path, "read_text", counting(Path.read_text, reads, lambda self, *a, **k: written(self)))
    for name in ("write_text", "write_bytes"):
        mp.setattr(Path, name, counting(getattr(Path, name), writes, lambda self, *a, **k: written(self)))
    mp.setattr(shutil, "copy2", counting(shutil.copy2, writes, lambda src, dst, **k: written(dst)))
    mp.setattr(torch, "save", counting(torch.save, writes, lambda obj, f, *a, **k: written(f)))
    build = EfficientNetLite0Source.build

    def counted_build(self, num_classes):
        builds.append(num_classes)
        return build(self, num_classes)

    mp.setattr(EfficientNetLite0Source, "build", counted_build)
    try:
        mar = package.package(PackagingInputs(model_name=NAME, fmt="eager",
                                              export_dir=tmp_path_factory.mktemp("reads_once_store")))
    finally:
        mp.undo()
    yield {"mar": mar, "stage": stage, "loads": loads, "reads": reads, "writes": writes,
           "builds": builds}
    shutil.rmtree(stage, ignore_errors=True)


def test_the_run_packages(counted):
    assert counted["mar"].is_file()


def test_checkpoint_read_once(counted):
    checkpoint = default_checkpoint().resolve()
    assert counted["loads"][checkpoint] == 1, dict(counted["loads"])


def test_model_config_read_once(counted):
    config = (repo.CONFIG_DIR / repo.DEFAULT_MODEL / layout.MODEL_CONFIG).resolve()
    assert counted["reads"][config] == 1, {str(p): n for p, n in counted["reads"].items() if n > 1}


def test_head_probed_once_and_model_built_once(counted):
    assert counted["builds"] == [PROBE_CLASSES, 1000]


def test_each_staged_file_written_once(counted):
    stage = counted["stage"]
    staged = {p: n for p, n in counted["writes"].items()
              if isinstance(p, Path) and p.is_relative_to(stage)}
    assert staged[stage / layout.ARCHITECTURE] == 1
    assert staged[stage / layout.MODEL_FILE] == 1
    assert {str(p.relative_to(stage)): n for p, n in staged.items() if n > 1} == {}
