"""Shared fixtures: sample photos, the built default .mar, the default archive unpacked for
in-process handler tests, and a real TorchServe on loopback. Only tests marked e2e may start
TorchServe: any other test that does fails (pytest_runtest_protocol below)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import repo
from scripts.packaging.sample_photos import write_photos
from tests.support.context import unpack
from tests.support.servers import MODEL, forbidden, serving


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Around a test not marked e2e (its fixtures' setup included), starting TorchServe fails it,
    so `pytest -m "not e2e"` never boots a server."""
    if item.get_closest_marker("e2e"):
        return (yield)
    with forbidden(item.nodeid):
        return (yield)


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
    with serving(tmp_path_factory.mktemp("torchserve"), default_mar.parent, min_ready=2) as srv:
        yield srv
