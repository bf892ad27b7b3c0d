"""Shared fixtures: sample photos, the built default .mar, the default archive unpacked for
in-process handler tests, and a real TorchServe on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import repo
from scripts.ops import serve
from scripts.packaging.sample_photos import write_photos
from tests.support.context import unpack
from tests.support.servers import MODEL, start_server


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """name.ext -> path of the real sample photos as JPEG and PNG."""
    out = tmp_path_factory.mktemp("photos")
    return {p.name: p for p in write_photos(out, ("jpg", "png"))}


@pytest.fixture(scope="session")
def default_mar() -> Path:
    mar = repo.MODEL_STORE / f"{MODEL}.mar"
    if not mar.is_file():
        from scripts.packaging import package

        package.package()
    return mar


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory, default_mar) -> Path:
    """The default archive unpacked as TorchServe unpacks it (read-only use: copy to change it)."""
    return unpack(default_mar, tmp_path_factory.mktemp("model_dir"))


@pytest.fixture(scope="session")
def server(tmp_path_factory, default_mar):
    """The default model served by a real TorchServe, shared by the end-to-end tests."""
    workdir = tmp_path_factory.mktemp("torchserve")
    srv = start_server(workdir, f"{MODEL}={MODEL}.mar", default_mar.parent, min_ready=2)
    yield srv
    serve.stop(workdir, grace=10)
