"""Shared fixtures: sample photos, the built default .mar, and a real TorchServe on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for sub in ("scripts", "handler"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

import paths  # noqa: E402
import serve  # noqa: E402
from sample_images import write_photos  # noqa: E402

MODEL = paths.DEFAULT_MODEL


free_ports = serve.free_ports


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """name.ext -> path of the real sample photos as JPEG and PNG."""
    out = tmp_path_factory.mktemp("photos")
    return {p.name: p for p in write_photos(out, ("jpg", "png"))}


@pytest.fixture(scope="session")
def default_mar() -> Path:
    mar = paths.MODEL_STORE / f"{MODEL}.mar"
    if not mar.is_file():
        import package

        package.package()
    return mar


def start_server(workdir: Path, models: str, model_store: Path, overrides: dict | None = None,
                 min_ready: int = 1, model: str = MODEL, timeout: float = 180.0) -> serve.Server:
    """Start TorchServe on free loopback ports and wait for READY workers; stops it on failure."""
    server = serve.start(workdir, models=models, ports=free_ports(), model_store=model_store,
                         overrides=overrides)
    try:
        serve.wait_ready(server, model, min_ready=min_ready, timeout=timeout, progress=False)
    except BaseException:
        serve.stop(workdir, grace=5)
        raise
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory, default_mar):
    """The default model served by a real TorchServe, shared by the end-to-end tests."""
    workdir = tmp_path_factory.mktemp("torchserve")
    srv = start_server(workdir, f"{MODEL}={MODEL}.mar", default_mar.parent, min_ready=2)
    yield srv
    serve.stop(workdir, grace=10)
