"""Real TorchServe servers for the end-to-end tests, on free loopback ports: `serving` starts one
and always stops it; `forbidden` makes starting one fail outside e2e tests (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import repo
from scripts.ops import serve

MODEL = repo.DEFAULT_MODEL
ROOT = repo.ROOT
free_ports = serve.free_ports
# Set to the running test's id while a test not marked e2e runs; inherited by its subprocesses,
# where start_server reads it (the in-process patch of serve.start does not reach them).
FORBIDDEN_ENV = "TESTS_TORCHSERVE_FORBIDDEN"


def refuse_outside_e2e() -> None:
    """Fail the running test if it is not marked e2e (FORBIDDEN_ENV is set)."""
    test = os.environ.get(FORBIDDEN_ENV)
    if test:
        # pytest.fail raises a BaseException: a test's `except Exception` cannot swallow it.
        pytest.fail(f"{test} starts a real TorchServe but is not marked e2e", pytrace=False)


def start_server(workdir: Path, models: str, model_store: Path, overrides: dict | None = None,
                 min_ready: int = 1, model: str = MODEL, timeout: float = 180.0,
                 warm: bool = False, env: dict | None = None) -> serve.Server:
    """Start TorchServe on free loopback ports (again on fresh ones where another process took
    one first: serve.start_ready) and wait until `model` has `min_ready` READY workers (0: until
    the frontend lists it); stops it on failure. Prefer `serving`."""
    refuse_outside_e2e()
    return serve.start_ready(workdir, models, model_store, model=model, min_ready=min_ready,
                             timeout=timeout, warm=warm, overrides=overrides, env=env)


@contextlib.contextmanager
def serving(workdir: Path, model_store: Path, models: str = f"{MODEL}={MODEL}.mar",
            overrides: dict | None = None, min_ready: int = 1, model: str = MODEL,
            timeout: float = 180.0, grace: float = 0.0,
            env: dict | None = None) -> Iterator[serve.Server]:
    """A TorchServe started by start_server, stopped when the block ends, whatever happened in
    it: drained, then given `grace` s to exit before its processes are killed. No grace by
    default: once drained, the frontend's own unloading of the workers only costs a test run
    time (3 s a server here); the graceful stop has tests of its own (test_recovery.py,
    test_deploy_manifests.py). Module fixtures yield from inside the block. `env`: added to the
    server's environment, which its workers inherit."""
    server = start_server(workdir, models, model_store, overrides=overrides, min_ready=min_ready,
                          model=model, timeout=timeout, env=env)
    try:
        yield server
    finally:
        serve.stop(workdir, grace=grace)


@contextlib.contextmanager
def forbidden(test: str) -> Iterator[None]:
    """While the block runs, starting TorchServe fails `test`: serve.start in this process, and
    start_server in any subprocess started meanwhile (through FORBIDDEN_ENV)."""
    real_start = serve.start

    def refusing_start(*args, **kwargs) -> serve.Server:
        refuse_outside_e2e()
        return real_start(*args, **kwargs)

    os.environ[FORBIDDEN_ENV] = test
    serve.start = refusing_start
    try:
        yield
    finally:
        serve.start = real_start
        os.environ.pop(FORBIDDEN_ENV, None)


def config_with(tmp_path: Path, extra: str, base: str = "config.properties") -> Path:
    """A copy of the repository's `base` properties file with `extra` lines appended."""
    path = tmp_path / "evil.properties"
    path.write_text((ROOT / base).read_text() + extra + "\n")
    return path
