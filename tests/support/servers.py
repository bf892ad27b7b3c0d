"""Real TorchServe servers for the end-to-end tests, on free loopback ports."""

from __future__ import annotations

from pathlib import Path

from scripts import repo
from scripts.ops import serve

MODEL = repo.DEFAULT_MODEL
ROOT = repo.ROOT
free_ports = serve.free_ports


def start_server(workdir: Path, models: str, model_store: Path, overrides: dict | None = None,
                 min_ready: int = 1, model: str = MODEL, timeout: float = 180.0,
                 warm: bool = False) -> serve.Server:
    """Start TorchServe on free loopback ports and wait for READY workers; stops it on failure."""
    server = serve.start(workdir, models=models, ports=free_ports(), model_store=model_store,
                         overrides=overrides)
    try:
        serve.wait_ready(server, model, min_ready=min_ready, timeout=timeout, progress=False, warm=warm)
    except BaseException:
        serve.stop(workdir, grace=5)
        raise
    return server
